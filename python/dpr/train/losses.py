"""Full-softmax cross-entropy over the catalogue, computed in row chunks with its gradient.

`F.cross_entropy(hidden @ items.T, targets)` materialises a (positions × items) logits tensor,
then a log-softmax of the same size, then a zero-filled gradient of the same size: on the CPU
each of those is a fresh allocation of 100+ MB that the allocator hands back to the kernel,
so every step pays page faults on all of them. Here the logits live in one reused chunk buffer
small enough to stay in cache, and the gradient with respect to `hidden` and `items` is
accumulated during the forward pass (training always differentiates this loss).
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 21
"""Logits per chunk (8 MiB in float32): below glibc's mmap threshold, so the buffer is reused."""


def full_softmax_cross_entropy(hidden: torch.Tensor, items: torch.Tensor,
                               targets: torch.Tensor) -> torch.Tensor:
    """Mean of `-log softmax(hidden @ items.T)[target]` over the rows of `hidden`.

    hidden: (P, d) sequence representations; items: (N, d) item vectors; targets: (P,) indices
    into `items`. Equal to `F.cross_entropy(hidden @ items.T, targets)`, gradients included.
    """
    if hidden.dim() != 2 or items.dim() != 2 or hidden.shape[1] != items.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and items {tuple(items.shape)} must be "
                         "(P, d) and (N, d)")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets {tuple(targets.shape)} must be ({hidden.shape[0]},)")
    if hidden.shape[0] == 0:
        raise ValueError("no labelled positions")
    if targets.min() < 0 or targets.max() >= items.shape[0]:
        raise ValueError(f"targets must lie in [0, {items.shape[0]})")
    return _ChunkedCrossEntropy.apply(hidden, items, targets)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, items: torch.Tensor,  # type: ignore[override]
                targets: torch.Tensor) -> torch.Tensor:
        need_grad = any(ctx.needs_input_grad[:2])
        positions, num_items = hidden.shape[0], items.shape[0]
        rows = max(1, min(positions, CHUNK_ELEMENTS // num_items))
        buffer = hidden.new_empty(rows, num_items)
        total = hidden.new_zeros(())
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_items = torch.zeros_like(items) if need_grad else None
        for start in range(0, positions, rows):
            stop = min(start + rows, positions)
            chunk_hidden, chunk_targets = hidden[start:stop], targets[start:stop, None]
            logits = buffer[:stop - start]
            torch.mm(chunk_hidden, items.T, out=logits)
            logits.sub_(logits.amax(dim=1, keepdim=True))
            target_logits = logits.gather(1, chunk_targets)
            logits.exp_()
            sums = logits.sum(dim=1, keepdim=True)
            total += (sums.log() - target_logits).sum()
            if need_grad:
                logits.div_(sums)
                logits.scatter_add_(1, chunk_targets, logits.new_full(chunk_targets.shape, -1.0))
                torch.mm(logits, items, out=grad_hidden[start:stop])
                grad_items.addmm_(logits.T, chunk_hidden)
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_items)
        ctx.positions = positions
        return total / positions

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad_hidden, grad_items = ctx.saved_tensors
        scale = grad_output / ctx.positions
        return grad_hidden * scale, grad_items * scale, None
