"""Padded tensors from item sequences: training windows and evaluation histories."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dpr.data.dataset import PADDING


def right_pad(sequences: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) int64 tensor, right-padded with 0 to the longest sequence, and the (B,) lengths."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(sequences) == 0 or lengths.min() == 0:
        raise ValueError("every sequence must hold at least one item")
    padded = np.full((len(sequences), int(lengths.max())), PADDING, dtype=np.int64)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
    return torch.from_numpy(padded), torch.from_numpy(lengths)


def next_item_batch(sequences: Sequence[np.ndarray], max_len: int,
                    rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets over a window of `max_len + 1` items of each sequence.

    The window is the most recent items, or, with `rng`, a uniformly drawn window of a sequence
    longer than that, so training over several epochs sees all of a long sequence.
    Both are (B, T) and right-padded with 0; a target of 0 marks a position without a label.
    """
    size = max_len + 1
    windows = []
    for s in sequences:
        end = len(s)
        if rng is not None and end > size:
            end = int(rng.integers(size, end + 1))
        windows.append(np.asarray(s[max(end - size, 0):end], dtype=np.int64))
    inputs, _ = right_pad([w[:-1] for w in windows])
    targets, _ = right_pad([w[1:] for w in windows])
    return inputs, targets


def history_batch(histories: Sequence[np.ndarray], max_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each history's most recent `max_len` items, right-padded, with their lengths."""
    return right_pad([np.asarray(h[-max_len:], dtype=np.int64) for h in histories])


def bucketed_batches(users: np.ndarray, lengths: np.ndarray, batch_size: int,
                     rng: np.random.Generator, chunk_batches: int = 8) -> list[np.ndarray]:
    """Shuffled user batches of similar sequence length, so little of a batch is padding.

    Users are shuffled, cut into chunks of `chunk_batches` batches, sorted by length within a
    chunk, batched, and the batches shuffled again.
    """
    order = rng.permutation(users)
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
