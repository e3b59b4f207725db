"""The chunked full-softmax cross-entropy equals PyTorch's, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dpr.train import losses
from dpr.train.losses import full_softmax_cross_entropy


def _case(positions: int = 37, items: int = 23, dim: int = 8, dtype=torch.float64):
    torch.manual_seed(0)
    hidden = torch.randn(positions, dim, dtype=dtype, requires_grad=True)
    table = torch.randn(items, dim, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, items, (positions,))
    return hidden, table, targets


@pytest.mark.parametrize("chunk_elements", [23, 5 * 23, 10 ** 6], ids=["row", "five", "one"])
def test_matches_pytorch_cross_entropy(monkeypatch: pytest.MonkeyPatch, chunk_elements: int):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    hidden, table, targets = _case()
    want = F.cross_entropy(hidden @ table.T, targets)
    want_grads = torch.autograd.grad(2.5 * want, (hidden, table))
    got = full_softmax_cross_entropy(hidden, table, targets)
    got_grads = torch.autograd.grad(2.5 * got, (hidden, table))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_large_logits_do_not_overflow():
    hidden, table, targets = _case(dtype=torch.float32)
    with torch.no_grad():
        hidden *= 200
    want = F.cross_entropy(hidden @ table.T, targets)
    got = full_softmax_cross_entropy(hidden, table, targets)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


def test_without_gradients_only_the_value_is_computed():
    hidden, table, targets = _case()
    with torch.no_grad():
        got = full_softmax_cross_entropy(hidden, table, targets)
        want = F.cross_entropy(hidden @ table.T, targets)
    assert not got.requires_grad
    torch.testing.assert_close(got, want)


def test_bad_input_is_a_value_error():
    hidden, table, targets = _case()
    with pytest.raises(ValueError, match="must lie in"):
        full_softmax_cross_entropy(hidden, table, targets + 23)
    with pytest.raises(ValueError, match="targets"):
        full_softmax_cross_entropy(hidden, table, targets[:-1])
    with pytest.raises(ValueError, match=r"\(P, d\)"):
        full_softmax_cross_entropy(hidden, table[:, :4], targets)
    with pytest.raises(ValueError, match="no labelled"):
        full_softmax_cross_entropy(hidden[:0], table, targets[:0])


@pytest.mark.parametrize("chunk_elements", [23, 5 * 23, 10 ** 6], ids=["row", "five", "one"])
def test_excluded_items_leave_the_softmax(monkeypatch: pytest.MonkeyPatch, chunk_elements: int):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    hidden, table, targets = _case()
    rows = torch.tensor([0, 0, 3, 3, 3, 20, 36])
    columns = (targets[rows] + torch.tensor([1, 2, 1, 5, 7, 3, 1])) % table.shape[0]
    logits = (hidden @ table.T).index_put((rows, columns), torch.tensor(-torch.inf,
                                                                         dtype=hidden.dtype))
    want = F.cross_entropy(logits, targets)
    want_grads = torch.autograd.grad(want, (hidden, table))
    got = full_softmax_cross_entropy(hidden, table, targets, (rows, columns))
    got_grads = torch.autograd.grad(got, (hidden, table))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert got < full_softmax_cross_entropy(hidden, table, targets)


def test_bad_exclusions_are_value_errors():
    hidden, table, targets = _case()
    with pytest.raises(ValueError, match="target is among"):
        full_softmax_cross_entropy(hidden, table, targets, (torch.tensor([2]), targets[2:3]))
    with pytest.raises(ValueError, match="sorted"):
        full_softmax_cross_entropy(hidden, table, targets,
                                   (torch.tensor([3, 1]), (targets[[3, 1]] + 1) % 23))
    with pytest.raises(ValueError, match="out of range"):
        full_softmax_cross_entropy(hidden, table, targets, (torch.tensor([37]), torch.tensor([0])))
    with pytest.raises(ValueError, match="same length"):
        full_softmax_cross_entropy(hidden, table, targets, (torch.tensor([1]), torch.tensor([])))


@pytest.mark.parametrize("chunk_elements", [23, 5 * 23, 10 ** 6], ids=["row", "five", "one"])
def test_label_smoothing_matches_pytorch(monkeypatch: pytest.MonkeyPatch, chunk_elements: int):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    hidden, table, targets = _case()
    want = F.cross_entropy(hidden @ table.T, targets, label_smoothing=0.1)
    want_grads = torch.autograd.grad(want, (hidden, table))
    got = full_softmax_cross_entropy(hidden, table, targets, smoothing=0.1)
    got_grads = torch.autograd.grad(got, (hidden, table))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_elements", [23, 5 * 23, 10 ** 6], ids=["row", "five", "one"])
def test_label_smoothing_spreads_only_over_items_left_in(monkeypatch: pytest.MonkeyPatch,
                                                          chunk_elements: int):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    hidden, table, targets = _case()
    rows = torch.tensor([0, 0, 3, 3, 3, 20, 36])
    columns = (targets[rows] + torch.tensor([1, 2, 1, 5, 7, 3, 1])) % table.shape[0]
    kept = torch.ones(hidden.shape[0], table.shape[0], dtype=torch.bool)
    kept[rows, columns] = False
    log_p = torch.log_softmax((hidden @ table.T).masked_fill(~kept, -torch.inf), dim=1)
    label = kept.to(hidden.dtype) / kept.sum(dim=1, keepdim=True) * 0.2
    label[torch.arange(len(targets)), targets] += 0.8
    want = -(label * log_p.masked_fill(~kept, 0.0)).sum(dim=1).mean()
    want_grads = torch.autograd.grad(want, (hidden, table))
    got = full_softmax_cross_entropy(hidden, table, targets, (rows, columns), smoothing=0.2)
    got_grads = torch.autograd.grad(got, (hidden, table))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_bad_smoothing_is_a_value_error():
    hidden, table, targets = _case()
    for smoothing in (-0.1, 1.0):
        with pytest.raises(ValueError, match="smoothing"):
            full_softmax_cross_entropy(hidden, table, targets, smoothing=smoothing)
