"""The DPR steering model and stages 2-3: exactness without a prompt, and that training steers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpr.data import synthetic_dataset
from dpr.models import DPR, DPRSteering, load_dpr
from dpr.prompts import Grammar
from dpr.train import BackboneTrainConfig
from dpr.train.pipeline import (
    evaluate_dpr,
    fit_backbone,
    fit_prompt_tower,
    fit_steering,
    grammar_renderer,
    steering_cases,
)
from dpr.train.steering import SteeringTrainConfig
from dpr.train.tower import TowerTrainConfig


def test_empty_prompt_returns_the_backbone_vector_exactly():
    torch.manual_seed(0)
    steering = DPRSteering(16, attribute_dim=5, prompt_dim=8)
    user = torch.randn(4, 16)
    prompts = torch.randn(4, 8)
    prompts[1] = 0.0
    out = steering(user, prompts)
    assert torch.equal(out.steered[1], steering.extend(user)[1])
    assert torch.equal(out.steered[1, :16], user[1])
    assert not torch.allclose(out.steered[0], steering.extend(user)[0])


def test_strength_scales_the_shift():
    torch.manual_seed(0)
    steering = DPRSteering(16, attribute_dim=3, prompt_dim=8)
    user, prompt = torch.randn(2, 16), torch.randn(2, 8)
    base = steering.extend(user)
    full = steering(user, prompt, 1.0).steered
    half = steering(user, prompt, 0.5).steered
    torch.testing.assert_close(half - base, 0.5 * (full - base))
    assert torch.equal(steering(user, prompt, 0.0).steered, base)


def test_gates_are_a_distribution_over_both_groups():
    steering = DPRSteering(8, prompt_dim=4, positive_experts=3, negative_experts=2)
    out = steering(torch.randn(5, 8), torch.randn(5, 4))
    assert out.gates.shape == (5, 5)
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(5))
    positive, negative = steering.group_mass(out.gates)
    torch.testing.assert_close(positive + negative, torch.ones(5))


def test_at_least_one_expert():
    with pytest.raises(ValueError):
        DPRSteering(8, positive_experts=0, negative_experts=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpr")
    dataset = synthetic_dataset(num_users=400, num_items=150, seed=5, min_length=15,
                                max_length=40)
    backbone, _ = fit_backbone(dataset, "sasrec", BackboneTrainConfig(lr=3e-3, max_epochs=10),
                               out, progress=False, dim=32, max_len=40)
    # The frozen encoder with its read-out: on a fixture this small a tuned encoder needs more
    # steps than a test can spend (tests/test_tower.py covers the tuning itself).
    inputs, tower = fit_prompt_tower(dataset, TowerTrainConfig(tune_layers=0, steps=300,
                                                               batch_size=32), out,
                                     progress=False)
    config = SteeringTrainConfig(epochs=6, positions_per_user=None, prompts_per_genre=12,
                                 prompts_per_pair=1, align_steps=100)
    model, info = fit_steering(dataset, backbone, inputs, config, progress=False,
                               refuse_threshold=tower["calibration"]["refuse_threshold"])
    return dataset, model, inputs, info, out


def test_training_steers_towards_and_away_from_a_genre(trained):
    dataset, model, inputs, info, _ = trained
    results = evaluate_dpr({"dpr": (model, inputs)}, dataset,
                           render=grammar_renderer(Grammar.load(), "train"),
                           protocols=("standard", "positive", "negative"))["protocols"]
    positive, negative = results["positive"]["methods"], results["negative"]["methods"]
    assert positive["dpr soft"]["genre_share@10"] > positive["backbone"]["genre_share@10"] + 0.15
    assert negative["dpr soft"]["genre_share@10"] < 0.5 * negative["backbone"]["genre_share@10"]
    # auto mode hard-excludes what the read-out refuses: never more forbidden than soft
    assert negative["dpr auto"]["genre_share@10"] <= negative["dpr soft"]["genre_share@10"]
    standard = results["standard"]["methods"]
    assert standard["dpr"] == standard["backbone"]
    assert {"encode_prompts", "stage2", "stage3"} <= set(info["seconds"])


def test_the_tower_is_saved_beside_the_run(trained):
    _, model, original, _, out = trained
    from dpr.train.pipeline import load_prompt_tower

    inputs, report = load_prompt_tower(out, model.columns)
    assert "prompt_encoder" not in report  # frozen: the bundle ships the original encoder
    prompts = ["no horror please", "something funny"]
    np.testing.assert_allclose(inputs(prompts), original(prompts), atol=1e-6)
    with pytest.raises(ValueError, match="other values"):
        load_prompt_tower(out, model.columns[:-1])


def test_dpr_round_trips_through_its_checkpoint(trained, tmp_path):
    dataset, model, *_ = trained
    model.save(tmp_path / "dpr.pt", {"note": "x"})
    loaded, extra = load_dpr(tmp_path / "dpr.pt")
    assert extra == {"note": "x"}
    assert loaded.columns == model.columns
    cases = steering_cases(model, dataset)
    h = torch.from_numpy(cases.user_vectors[:8, : model.backbone.dim])
    prompt = torch.randn(8, model.steering.prompt_dim)
    assert loaded.intent is not None and loaded.refuse_threshold == model.refuse_threshold
    torch.testing.assert_close(loaded.steering(h, prompt).steered,
                               model.steering(h, prompt).steered)


def test_dpr_scores_against_attribute_extended_items(trained):
    dataset, model, *_ = trained
    matrix, _ = dataset.items.steered_matrix(model.families)
    items = model.item_vectors(torch.from_numpy(matrix[1:]))
    assert items.shape == (dataset.num_items, model.backbone.dim + len(model.columns))
    with pytest.raises(ValueError, match="attributes"):
        model.item_vectors()


def test_skipping_both_stages_leaves_the_head_untrained(trained):
    dataset, model, inputs, *_ = trained
    config = SteeringTrainConfig(stage2=False, stage3=False, prompts_per_genre=1,
                                 prompts_per_pair=1)
    torch.manual_seed(0)
    untouched = DPRSteering(model.backbone.dim, attribute_dim=len(model.columns),
                            prompt_dim=model.steering.prompt_dim)
    torch.manual_seed(0)
    skipped, info = fit_steering(dataset, model.backbone, inputs, config, progress=False,
                                 refuse_threshold=0.9)
    for name, value in untouched.state_dict().items():
        assert torch.equal(skipped.steering.state_dict()[name], value)
    assert "stage2" not in info["seconds"] and "stage3" not in info["seconds"]
    assert isinstance(skipped, DPR)


def test_episodes_never_use_held_out_items(trained):
    from dpr.prompts import steering_episodes

    dataset = trained[0]
    split = dataset.split()
    episodes = steering_episodes(split, dataset.items, rng=np.random.default_rng(0))
    lengths = np.array([len(t) for t in split.train])
    assert (episodes.position < lengths[episodes.user]).all()


def test_prompt_noise_keeps_unit_norm_and_empty_prompts_empty():
    from dpr.train.steering import _jitter

    torch.manual_seed(0)
    prompts = F.normalize(torch.randn(6, 384), dim=-1)
    prompts[2] = 0.0
    moved = _jitter(prompts, 0.3)
    assert torch.equal(moved[2], prompts[2])
    others = [0, 1, 3, 4, 5]
    torch.testing.assert_close(moved[others].norm(dim=-1), torch.ones(5))
    cosine = (moved[others] * prompts[others]).sum(-1)
    assert bool(((cosine > 0.9) & (cosine < 0.999)).all())
    assert torch.equal(_jitter(prompts, 0.0), prompts)


def test_prompt_noise_leaves_the_intent_reading_alone():
    from dpr.train.steering import _jitter

    torch.manual_seed(0)
    e = F.normalize(torch.randn(4, 384), dim=-1)
    reading = torch.rand(4, 10)
    prompts = torch.cat([e, reading], dim=1)
    moved = _jitter(prompts, 0.3, 384)
    assert torch.equal(moved[:, 384:], reading)
    torch.testing.assert_close(moved[:, :384].norm(dim=-1), torch.ones(4))
    assert not torch.allclose(moved[:, :384], e)
