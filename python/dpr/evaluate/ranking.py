"""Score held-out items with any scorer (a model, a baseline) under the full-ranking protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dpr.evaluate.metrics import mask_items, ranking_metrics, target_ranks
from dpr.evaluate.popularity import popularity_scores

Scorer = Callable[[Sequence[np.ndarray]], np.ndarray]
"""Maps a batch of histories (internal ids) to a (B, N+1) score matrix; column 0 is padding."""


def evaluate_scorer(scorer: Scorer, histories: Sequence[np.ndarray], targets: np.ndarray, *,
                    k: int = 10, mask_history: bool = True, batch_size: int = 512
                    ) -> dict[str, float | int | bool]:
    """NDCG@k, Recall@k, MRR@k of `targets` ranked among all items by `scorer`.

    With `mask_history` (the default) a user's own history items are removed from the ranking.
    """
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories but {len(targets)} targets")
    ranks = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), batch_size):
        stop = min(start + batch_size, len(targets))
        batch = histories[start:stop]
        scores = np.array(scorer(batch), dtype=np.float64)
        if mask_history:
            mask_items(scores, batch, keep=targets[start:stop])
        ranks[start:stop] = target_ranks(scores, targets[start:stop])
    return {**ranking_metrics(ranks, k), "cases": len(targets),
            "history_masked": mask_history}


def evaluate_popularity(train_sequences: Sequence[np.ndarray], num_items: int,
                        histories: Sequence[np.ndarray], targets: np.ndarray, *, k: int = 10,
                        mask_history: bool = True) -> dict[str, float | int | bool]:
    """The most-popular baseline under the same protocol as a model."""
    counts = popularity_scores(train_sequences, num_items)

    def scorer(batch: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(counts, (len(batch), len(counts)))

    return evaluate_scorer(scorer, histories, targets, k=k, mask_history=mask_history)
