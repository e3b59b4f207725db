"""The prompt tower: intent labels and loss, the read-out, threshold choice, saving the tuned
encoder, and the budgeted fine-tuning loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpr.encoder import PromptEncoder, encoder_dir
from dpr.models.intent import ASKED, NONE, REFUSED, IntentHead
from dpr.models.tower import PromptTower
from dpr.prompts import Grammar, Rendering
from dpr.train.tower import (
    TowerTrainConfig,
    WeightAverage,
    _lr_factor,
    calibrate,
    intent_loss,
    interpret_accuracy,
    label_matrix,
    train_tower,
)

VALUES = [("genre", "Comedy"), ("genre", "Horror"), ("genre", "Romance")]


def test_labels_mark_each_named_value_with_its_polarity():
    renderings = [Rendering("x", "f", (("genre", "Horror", "refused"),)),
                  Rendering("y", "g", (("genre", "Comedy", "asked"),
                                       ("genre", "Romance", "refused"))),
                  Rendering("z", "h", ())]
    labels = label_matrix(renderings, VALUES)
    assert labels.tolist() == [[NONE, REFUSED, NONE], [ASKED, NONE, REFUSED],
                               [NONE, NONE, NONE]]


def test_intent_loss_sums_over_values_and_averages_over_prompts():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3)
    labels = torch.tensor([[0, 2, 0], [1, 0, 2]])
    manual = sum(F.cross_entropy(logits[i], labels[i], reduction="sum") for i in range(2)) / 2
    torch.testing.assert_close(intent_loss(logits, labels), manual)


def test_the_reading_is_zero_for_a_blank_prompt_and_a_distribution_otherwise():
    head = IntentHead(VALUES, embedding_dim=8, hidden=4)
    e = torch.randn(3, 8)
    e[1] = 0.0
    probs = head.probabilities(e)
    assert torch.equal(probs[1], torch.zeros(3, 3))
    torch.testing.assert_close(probs[[0, 2]].sum(-1), torch.ones(2, 3))
    prompt = head.prompt_input(e)
    assert prompt.shape == (3, 8 + 6)
    assert torch.equal(prompt[1], torch.zeros(14))
    torch.testing.assert_close(prompt[0, 8:11], probs[0, :, ASKED])
    torch.testing.assert_close(prompt[0, 11:], probs[0, :, REFUSED])


def test_interpret_accuracy_needs_every_value_right():
    probs = np.zeros((3, 2, 3))
    probs[..., NONE] = 1.0
    probs[0, 1] = [0.1, 0.2, 0.7]  # refuses value 1: right
    probs[1, 0] = [0.2, 0.6, 0.2]  # asks value 0, but value 1 should be refused: wrong
    labels = np.array([[NONE, REFUSED], [ASKED, REFUSED], [NONE, NONE]])
    assert interpret_accuracy(probs, labels) == pytest.approx(2 / 3)


class _FakeInputs:
    """Reads every refusal of the prompts `calibrate` draws with probability 0.8, and also
    refuses each prompt's first unmentioned value with probability `false_alarm`."""

    def __init__(self, false_alarm: float, drawn: dict) -> None:
        self.false_alarm, self.drawn = false_alarm, drawn

    def readings(self, prompts):
        labels = label_matrix(self.drawn["renderings"], VALUES).numpy()
        assert len(labels) == len(prompts)
        probs = np.zeros((*labels.shape, 3))
        probs[..., NONE] = 1.0
        probs[labels == REFUSED] = [0.2, 0.0, 0.8]
        probs[labels == ASKED] = [0.0, 1.0, 0.0]
        for row in range(len(labels)):
            free = np.flatnonzero(labels[row] == NONE)
            if len(free):
                probs[row, free[0]] = [1 - self.false_alarm, 0.0, self.false_alarm]
        return probs


def test_calibration_takes_the_lowest_threshold_with_few_false_exclusions(monkeypatch):
    import dpr.train.tower as tower

    drawn: dict = {}
    real = tower.render_batch

    def remember(*args, **kwargs):
        drawn["renderings"] = real(*args, **kwargs)
        return drawn["renderings"]

    monkeypatch.setattr(tower, "render_batch", remember)
    for false_alarm, expected in ((0.62, 0.65), (0.3, 0.5), (0.99, 0.95)):
        result = calibrate(_FakeInputs(false_alarm, drawn), Grammar.load(), VALUES, n=200)
        assert result["refuse_threshold"] == expected, false_alarm
        row = next(r for r in result["table"] if r["threshold"] == 0.8)
        assert row["refusals_caught"] == 1.0


def test_the_learning_rate_warms_up_holds_and_decays():
    assert _lr_factor(0, 0.0) == pytest.approx(1 / 20)
    assert _lr_factor(100, 0.5) == 1.0
    assert _lr_factor(100, 1.0) == pytest.approx(0.1)
    assert 0.1 < _lr_factor(100, 0.85) < 1.0


def test_the_weight_average_is_the_mean_of_the_steps_after_its_start():
    weight = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([weight], start=0.5)
    for step, value in enumerate([10.0, 20.0, 1.0, 2.0, 6.0]):
        weight.data.fill_(value)
        average.update(done=step / 4)  # the last three steps are past the start
    assert average.count == 3
    average.swap()
    torch.testing.assert_close(weight.data, torch.full((2,), 3.0))
    average.swap()
    torch.testing.assert_close(weight.data, torch.full((2,), 6.0))
    with pytest.raises(ValueError, match="start"):
        WeightAverage([weight], start=1.0)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return PromptTower(encoder_dir(), IntentHead(VALUES), tune_layers=1)


def test_only_the_top_layers_train(tower):
    trainable = {n for n, p in tower.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.5.") for n in trainable)
    frozen = PromptTower(encoder_dir(), IntentHead(VALUES), tune_layers=0)
    assert not frozen.encoder_parameters()
    with pytest.raises(ValueError, match="tune_layers"):
        PromptTower(encoder_dir(), IntentHead(VALUES), tune_layers=7)


def test_training_moves_the_tuned_layer_and_the_saved_folder_serves_it(tower, tmp_path):
    before = tower.encoder.encoder.layer[5].output.dense.weight.detach().clone()
    bottom = tower.encoder.encoder.layer[0].output.dense.weight.detach().clone()
    report = train_tower(tower, Grammar.load(), TowerTrainConfig(tune_layers=1, steps=4,
                                                                 batch_size=8),
                         progress=False)
    assert report["steps"] == 4
    assert not torch.equal(tower.encoder.encoder.layer[5].output.dense.weight, before)
    assert torch.equal(tower.encoder.encoder.layer[0].output.dense.weight, bottom)
    folder = tower.save_encoder(tmp_path / "enc")
    prompts = ["no horror please", "something funny", ""]
    with torch.no_grad():
        mine = tower.embed(prompts).numpy()
    served = PromptEncoder(folder).encode(prompts)
    assert np.abs(served[2]).sum() == 0 and np.abs(mine[2]).sum() == 0
    cosine = (mine[:2] * served[:2]).sum(1)
    assert (cosine > 0.9999).all()
    original = PromptEncoder().encode(prompts[:2])
    assert ((original * served[:2]).sum(1) < 0.99999).any()  # the weights did change


def test_an_averaged_run_ends_on_the_mean_of_its_last_steps(tower):
    trained = tower.trained_parameters()
    watched = WeightAverage(trained, start=0.5)
    report = train_tower(tower, Grammar.load(),
                         TowerTrainConfig(tune_layers=1, steps=6, batch_size=4,
                                          average_from=0.5), progress=False,
                         averages=[watched])
    assert report["averaged_steps"] == watched.count == 3
    for p, mean in zip(trained, watched.mean, strict=True):
        torch.testing.assert_close(p.detach(), mean)  # the tower kept the same mean


def test_a_time_budget_stops_the_tower(tower):
    report = train_tower(tower, Grammar.load(),
                         TowerTrainConfig(tune_layers=1, steps=10_000, batch_size=4,
                                          max_minutes=1e-4), progress=False)
    assert report["steps"] < 10_000
