"""Metrics against hand-computed rankings."""

import math

import numpy as np
import pytest

from dpr.evaluate import (
    evaluate_popularity,
    evaluate_scorer,
    mask_items,
    popularity_scores,
    ranking_metrics,
    target_ranks,
)

NEG = -np.inf


def test_target_ranks_by_hand():
    # column 0 is padding and never competes, even with a huge score
    scores = np.array([[9.0, 0.1, 0.5, 0.3, 0.9],
                       [9.0, 0.4, 0.3, 0.2, 0.1]])
    assert target_ranks(scores, np.array([3, 1])).tolist() == [2, 0]


def test_ties_count_against_the_target_and_nan_is_lowest():
    scores = np.array([[0.0, 1.0, 1.0, 1.0], [0.0, np.nan, 0.2, 0.1]])
    assert target_ranks(scores, np.array([1, 3])).tolist() == [2, 1]


def test_ranking_metrics_by_hand():
    ranks = np.array([0, 1, 9, 10, 50])
    m = ranking_metrics(ranks, k=10)
    ndcg = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert m["ndcg@10"] == pytest.approx(ndcg)
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)


def test_ranking_metrics_rejects_bad_input():
    with pytest.raises(ValueError):
        ranking_metrics(np.array([1]), k=0)
    with pytest.raises(ValueError):
        ranking_metrics(np.array([], dtype=np.int64))


def test_mask_items_keeps_the_target():
    scores = np.zeros((1, 5))
    mask_items(scores, [np.array([1, 2, 4])], keep=np.array([2]))
    assert scores.tolist() == [[0.0, NEG, 0.0, 0.0, NEG]]


def test_evaluate_scorer_masks_history_by_default():
    # items 1..4; the user's history (item 4) has the best score, target is item 2
    def scorer(batch):
        return np.tile(np.array([0.0, 0.1, 0.5, 0.2, 0.9]), (len(batch), 1))

    histories, targets = [np.array([4])], np.array([2])
    masked = evaluate_scorer(scorer, histories, targets)
    unmasked = evaluate_scorer(scorer, histories, targets, mask_history=False)
    assert masked["ndcg@10"] == pytest.approx(1.0)
    assert masked["history_masked"] is True
    assert unmasked["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert unmasked["history_masked"] is False


def test_popularity_baseline_by_hand():
    train = [np.array([1, 2, 2]), np.array([2, 3])]
    counts = popularity_scores(train, num_items=4)
    assert counts.tolist() == [0.0, 1.0, 3.0, 1.0, 0.0]
    # user 0 (history 1,2,2) wants item 3: items 1 and 2 masked, item 3 ties with nothing -> rank 0
    # user 1 (history 2,3) wants item 4 (count 0): item 1 beats it -> rank 1
    m = evaluate_popularity(train, 4, [np.array([1, 2, 2]), np.array([2, 3])], np.array([3, 4]))
    assert m["recall@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
