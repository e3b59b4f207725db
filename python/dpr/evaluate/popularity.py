"""The most-popular baseline: every user gets the same ranking by training-set frequency."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def popularity_scores(train_sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """(N+1,) interaction counts of each internal id in the training sequences (padding is 0)."""
    counts = np.zeros(num_items + 1, dtype=np.float64)
    for seq in train_sequences:
        np.add.at(counts, seq, 1.0)
    counts[0] = 0.0
    return counts
