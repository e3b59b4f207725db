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
                               targets: torch.Tensor,
                               excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
                               smoothing: float = 0.0) -> torch.Tensor:
    """Mean of `-log softmax(hidden @ items.T)[target]` over the rows of `hidden`.

    hidden: (P, d) sequence representations; items: (N, d) item vectors; targets: (P,) indices
    into `items`. Equal to `F.cross_entropy(hidden @ items.T, targets)`, gradients included.
    `excluded` = (rows, columns), rows sorted ascending: logits left out of the softmax
    (the items a position has already seen), as if set to -inf. A target may not be excluded.
    `smoothing` = ε: the label is `1 - ε` on the target plus `ε` spread evenly over the items
    left in the softmax (`label_smoothing` of `F.cross_entropy` when nothing is excluded).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    if hidden.dim() != 2 or items.dim() != 2 or hidden.shape[1] != items.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and items {tuple(items.shape)} must be "
                         "(P, d) and (N, d)")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets {tuple(targets.shape)} must be ({hidden.shape[0]},)")
    if hidden.shape[0] == 0:
        raise ValueError("no labelled positions")
    if targets.min() < 0 or targets.max() >= items.shape[0]:
        raise ValueError(f"targets must lie in [0, {items.shape[0]})")
    if excluded is None:
        rows = columns = targets.new_empty(0)
    else:
        rows, columns = excluded
        if rows.shape != columns.shape or rows.dim() != 1:
            raise ValueError("excluded must be two 1-d tensors of the same length")
        if len(rows) and (rows.min() < 0 or rows.max() >= hidden.shape[0]
                          or columns.min() < 0 or columns.max() >= items.shape[0]):
            raise ValueError("excluded rows or columns out of range")
        if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):
            raise ValueError("excluded rows must be sorted ascending")
        if bool((columns == targets[rows]).any()):
            raise ValueError("a target is among the excluded items")
    return _ChunkedCrossEntropy.apply(hidden, items, targets, rows, columns, smoothing)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, items: torch.Tensor,  # type: ignore[override]
                targets: torch.Tensor, excluded_rows: torch.Tensor,
                excluded_columns: torch.Tensor, smoothing: float) -> torch.Tensor:
        need_grad = any(ctx.needs_input_grad[:2])
        positions, num_items = hidden.shape[0], items.shape[0]
        rows = max(1, min(positions, CHUNK_ELEMENTS // num_items))
        buffer = hidden.new_empty(rows, num_items)
        total = hidden.new_zeros(())
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_items = torch.zeros_like(items) if need_grad else None
        bounds = torch.searchsorted(excluded_rows, torch.arange(0, positions + rows, rows,
                                                             device=excluded_rows.device))
        for chunk, start in enumerate(range(0, positions, rows)):
            stop = min(start + rows, positions)
            chunk_hidden, chunk_targets = hidden[start:stop], targets[start:stop, None]
            logits = buffer[:stop - start]
            torch.mm(chunk_hidden, items.T, out=logits)
            lo, hi = int(bounds[chunk]), int(bounds[chunk + 1])
            chunk_rows, chunk_columns = excluded_rows[lo:hi] - start, excluded_columns[lo:hi]
            if smoothing:
                # Sum and count of each row's logits left in the softmax, for the uniform part.
                kept_sums = logits.sum(dim=1).index_add_(0, chunk_rows,
                                                         -logits[chunk_rows, chunk_columns])
                kept_counts = (num_items - torch.bincount(chunk_rows, minlength=stop - start)
                               ).to(logits.dtype)
            logits[chunk_rows, chunk_columns] = -torch.inf
            maxes = logits.amax(dim=1, keepdim=True)
            logits.sub_(maxes)
            target_logits = logits.gather(1, chunk_targets)
            logits.exp_()
            sums = logits.sum(dim=1, keepdim=True)
            log_sums = sums.log()
            row_losses = log_sums - target_logits
            if smoothing:
                uniform = log_sums.squeeze(1) + maxes.squeeze(1) - kept_sums / kept_counts
                row_losses = (1.0 - smoothing) * row_losses.squeeze(1) + smoothing * uniform
            total += row_losses.sum()
            if need_grad:
                logits.div_(sums)
                logits.scatter_add_(1, chunk_targets,
                                    logits.new_full(chunk_targets.shape, smoothing - 1.0))
                if smoothing:
                    logits.sub_((smoothing / kept_counts).unsqueeze(1))
                    logits[chunk_rows, chunk_columns] = 0.0
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
        return grad_hidden * scale, grad_items * scale, None, None, None, None
