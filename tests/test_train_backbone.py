"""Stage-1 training: learns, is deterministic, resumes exactly, and the CLI writes its outputs."""

import json

import numpy as np
import pytest
import torch

from dpr.cli import main
from dpr.data import synthetic_dataset
from dpr.evaluate import evaluate_popularity, evaluate_scorer
from dpr.models import make_backbone
from dpr.train import BackboneTrainConfig, backbone_scorer, load_backbone, train_backbone
from dpr.train.backbone import seen_items
from dpr.train.experiment import run_backbone_experiment


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(num_users=300, num_items=120, seed=3, min_length=10, max_length=30)


def _train(dataset, kind, out=None, epochs=6, **config):
    torch.manual_seed(0)
    backbone = make_backbone(kind, dataset.num_items, dim=32, max_len=30, dropout=0.1)
    cfg = BackboneTrainConfig(lr=3e-3, max_epochs=epochs, patience=epochs, batch_size=64,
                              **config)
    return train_backbone(backbone, dataset.split(), cfg, out, progress=False)


@pytest.mark.parametrize("kind, exclude_seen", [("sasrec", False), ("gru4rec", False),
                                                ("sasrec", True)])
def test_training_beats_most_popular(dataset, kind, exclude_seen):
    result = _train(dataset, kind, epochs=12, exclude_seen=exclude_seen)
    split = dataset.split()
    histories, targets = split.evaluation_cases("test")
    model = evaluate_scorer(backbone_scorer(result.backbone), histories, targets)
    popular = evaluate_popularity(split.train, dataset.num_items, histories, targets)
    assert model["ndcg@10"] > 1.5 * popular["ndcg@10"]
    assert result.history[-1].loss < result.history[0].loss


def test_random_windows_and_label_smoothing_train(dataset):
    split = dataset.split()
    histories, targets = split.evaluation_cases("test")
    popular = evaluate_popularity(split.train, dataset.num_items, histories, targets)
    result = _train(dataset, "sasrec", epochs=12, windows="random", label_smoothing=0.1)
    model = evaluate_scorer(backbone_scorer(result.backbone), histories, targets)
    assert model["ndcg@10"] > 1.5 * popular["ndcg@10"]


def test_bad_window_or_smoothing_settings_are_value_errors():
    with pytest.raises(ValueError, match="windows"):
        BackboneTrainConfig(windows="middle")
    with pytest.raises(ValueError, match="label_smoothing"):
        BackboneTrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="weight_average"):
        BackboneTrainConfig(weight_average=1.0)


def test_weight_average_is_what_validation_scores_and_training_keeps(dataset):
    raw = _train(dataset, "sasrec", epochs=2)
    # A decay of ~0 makes the average the raw weights: same model as without averaging.
    instant = _train(dataset, "sasrec", epochs=2, weight_average=1e-12)
    for name, value in raw.backbone.state_dict().items():
        torch.testing.assert_close(instant.backbone.state_dict()[name], value)

    averaged = _train(dataset, "sasrec", epochs=2, weight_average=0.9)
    kept = averaged.backbone.item_embedding.weight
    assert not torch.allclose(kept, raw.backbone.item_embedding.weight, atol=1e-4)
    assert torch.all(kept[0] == 0)
    histories, targets = dataset.split().evaluation_cases("valid")
    rescored = evaluate_scorer(backbone_scorer(averaged.backbone), histories, targets)
    assert rescored["ndcg@10"] == pytest.approx(averaged.best_valid["ndcg@10"], abs=1e-6)


def test_seen_items_are_each_positions_earlier_inputs():
    inputs = torch.tensor([[5, 7, 9, 0], [3, 4, 3, 8]])
    targets = torch.tensor([[7, 9, 2, 0], [4, 3, 8, 6]])
    rows, items = seen_items(inputs, targets)
    # Labelled rows: user 0 positions 0-2 (rows 0-2), user 1 positions 0-3 (rows 3-6). User 1
    # sees item 3 again at position 1 (its target): that repeat stays in the softmax.
    want = [(0, 5), (1, 5), (1, 7), (2, 5), (2, 7), (2, 9),
            (3, 3), (4, 4), (5, 3), (5, 4), (5, 3), (6, 3), (6, 4), (6, 3), (6, 8)]
    assert list(zip(rows.tolist(), (items + 1).tolist(), strict=True)) == want


def test_training_is_deterministic(dataset):
    a = _train(dataset, "sasrec", epochs=2).backbone.state_dict()
    b = _train(dataset, "sasrec", epochs=2).backbone.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_experiment_is_seeded_whatever_the_global_rng_state(dataset, tmp_path):
    """`run_backbone_experiment` (behind `dpr train` and `dpr build-demo`) seeds the initial
    weights itself: two runs from different global RNG states end with the same model."""
    config = BackboneTrainConfig(lr=3e-3, max_epochs=1, patience=1, batch_size=64, seed=5)
    weights = []
    for state in (1, 2):
        torch.manual_seed(state)
        run_backbone_experiment(dataset, "sasrec", config, tmp_path / str(state), progress=False,
                                dim=32, max_len=30)
        weights.append(load_backbone(tmp_path / str(state) / "backbone.pt").state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0)


def test_interrupted_training_resumes_to_the_same_weights(dataset, tmp_path):
    straight = _train(dataset, "gru4rec", epochs=4)
    _train(dataset, "gru4rec", out=tmp_path, epochs=2)  # "killed" after 2 epochs
    resumed = _train(dataset, "gru4rec", out=tmp_path, epochs=4)
    assert [r.epoch for r in resumed.history] == [0, 1, 2, 3]
    assert resumed.best_epoch == straight.best_epoch
    for name, value in straight.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[name], value)
    reloaded = load_backbone(tmp_path / "backbone.pt")
    torch.testing.assert_close(reloaded.item_embedding.weight,
                               resumed.backbone.item_embedding.weight)


def test_interrupted_training_resumes_its_weight_average(dataset, tmp_path):
    straight = _train(dataset, "sasrec", epochs=3, weight_average=0.95)
    _train(dataset, "sasrec", out=tmp_path, epochs=1, weight_average=0.95)
    resumed = _train(dataset, "sasrec", out=tmp_path, epochs=3, weight_average=0.95)
    assert resumed.best_epoch == straight.best_epoch
    for name, value in straight.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[name], value)
    with pytest.raises(ValueError, match="without a weight average"):
        _train(dataset, "sasrec", out=tmp_path / "raw", epochs=1)
        _train(dataset, "sasrec", out=tmp_path / "raw", epochs=2, weight_average=0.9)


def test_resume_refuses_a_different_model(dataset, tmp_path):
    _train(dataset, "gru4rec", out=tmp_path, epochs=1)
    backbone = make_backbone("gru4rec", dataset.num_items, dim=16, max_len=30)
    with pytest.raises(ValueError, match="checkpoint was trained with"):
        train_backbone(backbone, dataset.split(), BackboneTrainConfig(max_epochs=2), tmp_path,
                       progress=False)


def test_cli_train_on_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    rows = ["user,item,rating,timestamp"]
    for user in range(40):
        for t, item in enumerate(rng.choice(30, size=12, replace=False)):
            rows.append(f"u{user},{item},5,{t}")
    (data / "interactions.csv").write_text("\n".join(rows) + "\n")
    items = ["item,title,genre"] + [f"{i},Film {i},Comedy|Drama" for i in range(30)]
    (data / "items.csv").write_text("\n".join(items) + "\n")

    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--format", "csv", "--backbone", "gru4rec",
                 "--out", str(out), "--max-epochs", "2", "--dim", "16", "--max-len", "20",
                 "--backbone-only"])  # the later stages: tests/test_cli_dpr.py
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["training"]["epochs"] == 2
    assert 0.0 <= report["test"]["ndcg@10"] <= 1.0
    assert report["test"]["history_masked"] is True
    assert (out / "backbone.pt").is_file()
    assert (out / "training_curve.png").stat().st_size > 1000
    assert "most popular" in capsys.readouterr().out


def test_cli_reports_bad_data_cleanly(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing"), "--format", "movielens-1m",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_cosine_schedule_anneals_to_the_floor():
    constant = BackboneTrainConfig(lr=1e-3)
    assert constant.lr_at(0.0) == constant.lr_at(0.7) == 1e-3
    cosine = BackboneTrainConfig(lr=1e-3, lr_schedule="cosine", min_lr_ratio=0.1)
    assert cosine.lr_at(0.0) == pytest.approx(1e-3)
    assert cosine.lr_at(0.5) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert cosine.lr_at(1.0) == pytest.approx(1e-4)
    assert cosine.lr_at(3.0) == pytest.approx(1e-4)  # epochs past max_epochs stay at the floor
    with pytest.raises(ValueError, match="lr_schedule"):
        BackboneTrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="min_lr_ratio"):
        BackboneTrainConfig(min_lr_ratio=2.0)


def test_schedule_progress_is_the_larger_of_epochs_and_minutes():
    budget = BackboneTrainConfig(max_epochs=50, max_minutes=30.0)
    assert budget.schedule_progress(10, 60.0) == pytest.approx(0.2)  # epochs ahead of the clock
    assert budget.schedule_progress(10, 15 * 60.0) == pytest.approx(0.5)  # a slow machine
    assert budget.schedule_progress(25, 30 * 60.0) == pytest.approx(1.0)  # annealed at the budget
    assert BackboneTrainConfig(max_epochs=50).schedule_progress(10, 1e6) == pytest.approx(0.2)
    cosine = BackboneTrainConfig(lr=1e-3, lr_schedule="cosine", max_epochs=50, max_minutes=30.0)
    assert cosine.lr_at(cosine.schedule_progress(20, 30 * 60.0)) == pytest.approx(
        cosine.min_lr_ratio * cosine.lr)


def test_recipes_are_the_cli_defaults_and_take_overrides():
    from dpr.cli import _backbone_args, _parser, _recipe_overrides
    from dpr.train import RECIPES, recipe

    params, config = recipe("sasrec")
    assert params["ffn_dim"] == 256 and config.batch_size == 16
    assert config.label_smoothing == 0.2 and config.lr_schedule == "cosine"
    assert (config.max_epochs, config.max_minutes) == (50, 30.0)
    _, gru = recipe("gru4rec", max_minutes=0)
    assert gru.max_minutes is None and gru.max_epochs == RECIPES["gru4rec"]["max_epochs"]
    with pytest.raises(ValueError, match="unknown settings"):
        recipe("gru4rec", ffn_dim=256)
    args = _parser().parse_args(["train", "--data", "d", "--format", "movielens-1m",
                                 "--backbone", "sasrec", "--out", "o"])
    assert _backbone_args(args) == params
    assert recipe("sasrec", **_recipe_overrides(args))[1] == config


def test_fit_stops_after_stage_1_and_reuses_it(dataset, tmp_path):
    from dpr.train import fit

    seen = []
    first = fit(dataset, tmp_path, backbone="gru4rec", steer=False, export=False,
                progress=False, on_backbone=seen.append, dim=16, max_len=30, max_epochs=2,
                batch_size=64)
    assert first.steering is None and first.bundle is None and first.model_path is None
    assert first.backbone_report is not None and seen == [first.backbone_report]
    assert (tmp_path / "backbone.pt").is_file() and (tmp_path / "metrics.json").is_file()
    assert first.backbone_report["training"]["max_minutes"] == 30.0  # the recipe's budget
    again = fit(dataset, tmp_path, backbone="gru4rec", steer=False, progress=False)
    assert again.backbone_report == first.backbone_report  # the finished stage 1 is reused
    with pytest.raises(ValueError, match="already trained"):
        fit(dataset, tmp_path, backbone=first.backbone, max_minutes=1)
