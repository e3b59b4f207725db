"""The S3-Rec bench's arithmetic: its negatives and both protocols' ranks, on a hand-made case."""

from __future__ import annotations

import numpy as np
import pytest

from dpr.data.dataset import ItemCatalogue, SequenceDataset
from s3rec import NEGATIVES, draw_negatives, rankings, sampled_ranks


class Served:
    """The part of `Recommender` the rankings read: the item vectors of rows 1..N."""

    def __init__(self, items: np.ndarray) -> None:
        self.items = items

    def item_vectors(self) -> np.ndarray:
        return self.items


def dataset(num_items: int, sequences: list[list[int]]) -> SequenceDataset:
    catalogue = ItemCatalogue(list(range(num_items)), [str(i) for i in range(num_items)])
    return SequenceDataset("toy", catalogue, list(range(len(sequences))),
                           [np.asarray(s, dtype=np.int64) for s in sequences])


def test_negatives_are_distinct_items_the_user_never_had() -> None:
    toy = dataset(150, [list(range(1, 40)), [5, 6, 7], [100, 101, 102, 103]])
    negatives = draw_negatives(toy, np.random.default_rng(0))
    assert negatives.shape == (3, NEGATIVES)
    for case, sequence in enumerate(toy.sequences):
        assert len(set(negatives[case].tolist())) == NEGATIVES
        assert not set(negatives[case].tolist()) & set(sequence.tolist())
        assert negatives[case].min() >= 1 and negatives[case].max() <= 150


def test_ranks_of_both_protocols() -> None:
    # Item r scores r (one-dimensional vectors), so higher rows rank first.
    n = 120
    served = Served(np.arange(1, n + 1, dtype=np.float32)[:, None])
    vectors = np.ones((2, 1), dtype=np.float32)
    targets = np.array([100, 110])
    # User 0 has seen 110..120 (masked): its target 100 is beaten by 101..109, rank 9; user 1's
    # target 110 is beaten by 111..120, rank 10.
    histories = [np.arange(110, 121), np.array([1, 2])]
    negatives = np.stack([np.arange(1, 100), np.r_[111:114, 1:97]])
    full, sampled = rankings(served, vectors, targets, histories, negatives)
    assert full["recall@10"] == 0.5 and full["cases"] == 2
    assert full["ndcg@10"] == pytest.approx(0.5 / np.log2(11))
    assert full["mrr@10"] == pytest.approx(0.5 / 10)
    # Sampled ranks: 0 (every negative below 100) and 3 (111, 112, 113 above 110).
    assert sampled["hr@1"] == 0.5 and sampled["hr@5"] == 1.0 and sampled["hr@10"] == 1.0
    assert sampled["ndcg@5"] == pytest.approx((1 + 1 / np.log2(5)) / 2)
    assert sampled["mrr"] == pytest.approx((1 + 1 / 4) / 2)
    # One ranking shared by every case (the most-popular baseline): row r scores r again.
    shared = np.arange(n + 1, dtype=np.float64)
    assert sampled_ranks(shared, targets, negatives).tolist() == [0, 3]
    assert sampled_ranks(np.zeros(n + 1), targets, negatives).tolist() == [99, 99]  # ties lose
