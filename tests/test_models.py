"""Backbone properties the serving path relies on: padding and causality invariance."""

import pytest
import torch

from dpr.models import GRU4Rec, SASRec, build_backbone, last_positions, user_vectors
from dpr.train.batches import next_item_batch, right_pad


def _models():
    torch.manual_seed(0)
    return [SASRec(30, dim=16, max_len=12, num_blocks=2, num_heads=2, dropout=0.0).eval(),
            GRU4Rec(30, dim=16, max_len=12, dropout=0.0).eval(),
            SASRec(30, dim=16, max_len=12, num_blocks=2, num_heads=2, dropout=0.0,
                   positions="from_start").eval()]


IDS = ["sasrec", "gru4rec", "sasrec-from-start"]


@pytest.mark.parametrize("model", _models(), ids=IDS)
def test_outputs_do_not_depend_on_padding(model):
    seq = torch.tensor([[5, 9, 2, 7]])
    padded = torch.tensor([[5, 9, 2, 7, 0, 0, 0]])
    with torch.no_grad():
        a = model.hidden_states(seq)
        b = model.hidden_states(padded)[:, :4]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model", _models(), ids=IDS)
def test_outputs_are_causal(model):
    with torch.no_grad():
        a = model.hidden_states(torch.tensor([[5, 9, 2, 7]]))
        b = model.hidden_states(torch.tensor([[5, 9, 2, 11]]))
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a[:, 3], b[:, 3])


@pytest.mark.parametrize("model", _models(), ids=IDS)
def test_user_vector_is_state_after_last_item(model):
    items, lengths = right_pad([torch.tensor([3, 4, 5]).numpy(), torch.tensor([8]).numpy()])
    with torch.no_grad():
        users = user_vectors(model, items, lengths)
        alone = model.hidden_states(torch.tensor([[8]]))[0, 0]
    torch.testing.assert_close(users[1], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model", _models(), ids=IDS)
def test_rebuild_from_hyper_parameters(model):
    clone = build_backbone(model.hyper_parameters())
    clone.load_state_dict(model.state_dict())
    clone.eval()
    seq = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(clone.hidden_states(seq), model.hidden_states(seq))


def test_positions_count_back_from_the_most_recent_item():
    from_end, _, from_start = _models()
    from_start.load_state_dict(from_end.state_dict())
    seq = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        from_start.position_embedding.weight[:4] = from_end.position_embedding.weight[[3, 2, 1, 0]]
        torch.testing.assert_close(from_start.hidden_states(seq), from_end.hidden_states(seq))


def test_positions_of_older_checkpoints_count_from_the_start():
    saved = {k: v for k, v in _models()[0].hyper_parameters().items() if k != "positions"}
    assert build_backbone(saved).positions == "from_start"
    with pytest.raises(ValueError, match="positions"):
        SASRec(30, positions="sideways")


def test_too_long_sequence_is_an_error():
    with pytest.raises(ValueError, match="max_len"):
        _models()[0].hidden_states(torch.ones((1, 13), dtype=torch.long))


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone({"kind": "bert4rec", "num_items": 3})


def test_next_item_batch_keeps_the_most_recent_window():
    import numpy as np

    inputs, targets = next_item_batch([np.arange(1, 8), np.array([4, 5])], max_len=3)
    assert inputs.tolist() == [[4, 5, 6], [4, 0, 0]]
    assert targets.tolist() == [[5, 6, 7], [5, 0, 0]]


def test_random_windows_cover_a_long_sequence_and_leave_short_ones_whole():
    import numpy as np

    rng = np.random.default_rng(0)
    long, short = np.arange(1, 11), np.array([4, 5])
    seen_targets = set()
    for _ in range(50):
        inputs, targets = next_item_batch([long, short], max_len=3, rng=rng)
        first = inputs[0, 0].item()
        assert inputs[0].tolist() == list(range(first, first + 3))
        assert targets[0].tolist() == list(range(first + 1, first + 4))
        assert (inputs[1].tolist(), targets[1].tolist()) == ([4, 0, 0], [5, 0, 0])
        seen_targets.update(targets[0].tolist())
    assert seen_targets == set(range(2, 11))


def test_last_positions_gathers_by_length():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    assert last_positions(hidden, torch.tensor([2, 3])).view(-1).tolist() == [1.0, 5.0]
