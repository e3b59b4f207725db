"""Ranking metrics over a full catalogue: ranks of held-out items, NDCG, Recall and MRR at k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpr.data.dataset import PADDING


def mask_items(scores: np.ndarray, items: Sequence[np.ndarray], keep: np.ndarray | None = None
               ) -> np.ndarray:
    """Set each row's listed items to -inf in place (except that row's `keep` item); returns scores.

    Used to remove a user's history from the ranking; the held-out item itself is never removed.
    """
    for row, row_items in enumerate(items):
        row_items = np.asarray(row_items, dtype=np.int64)
        if keep is not None:
            row_items = row_items[row_items != keep[row]]
        scores[row, row_items] = -np.inf
    return scores


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among all columns; column 0 (padding) never competes.

    Ties count against the target (a constant scorer ranks it last), NaN scores count as -inf.
    """
    scores = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64, copy=False))
    scores[:, PADDING] = -np.inf
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    at_least = (scores >= target_scores).sum(axis=1)
    return (at_least - 1).astype(np.int64)


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean NDCG@k, Recall@k and MRR@k of 0-based target ranks (one held-out item per case)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to score")
    hit = ranks < k
    return {
        f"ndcg@{k}": float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0))),
        f"recall@{k}": float(np.mean(hit)),
        f"mrr@{k}": float(np.mean(np.where(hit, 1.0 / (ranks + 1.0), 0.0))),
    }
