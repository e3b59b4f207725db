"""The benchmarks' own arithmetic: FLOP counts, recall, matched-recall picks, data shapes."""

from __future__ import annotations

import numpy as np

from latency import query_flops
from retrieval import _matched, catalogue, recall


def test_query_flops_matches_a_hand_count() -> None:
    config = {"dim": 4, "num_items": 7,
              "backbone": {"kind": "sasrec", "max_len": 10, "num_blocks": 2, "ffn_dim": 4,
                           "num_heads": 1},
              "steer": {"attribute_dim": 2, "positive_experts": 1, "negative_experts": 1,
                        "expert_hidden": 8, "router_hidden": 5}}
    # n = 3, d = 4. Full block: Q,K,V,O 4·3·16·2 = 384, attention (1+2+3)·4·4 = 96,
    # FFN 2·3·4·4·2 = 192. Last block, from the last row only: q, W_kᵀq, W_v(Σ w_j x_j) and
    # the output layer, four d×d products 4·16·2 = 128; scores and weighted sum over the 3
    # rows, one head, 2·3·4·2 = 48; FFN one row 2·4·4·2 = 64.
    # Steering: router 5·(4+2)·2 = 60, experts 2·(8·8·2 + 6·8·2) = 448. Scoring 7·6·2 = 84.
    flops = query_flops(config, history=3)
    assert flops == {"backbone": 672 + 240, "steering": 508, "scoring": 84, "total": 1504}
    assert query_flops(config, history=50)["backbone"] == query_flops(config, 10)["backbone"]


def test_recall_counts_shared_ids_per_query() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [6, 5, 4]])
    assert recall(found, truth) == 5 / 6


def test_matched_picks_the_fastest_point_reaching_each_target() -> None:
    curve = [{"ef": 10, "recall": 0.91, "qps": 900.0}, {"ef": 20, "recall": 0.96, "qps": 500.0},
             {"ef": 40, "recall": 0.985, "qps": 300.0}]
    picks = _matched(curve)
    assert picks["0.90"] is not None and picks["0.90"]["ef"] == 10
    assert picks["0.95"] is not None and picks["0.95"]["ef"] == 20
    assert picks["0.99"] is None


def test_catalogue_is_seeded_with_spread_norms() -> None:
    a, b = catalogue(1000, 16, seed=3), catalogue(1000, 16, seed=3)
    assert a.shape == (1000, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    norms = np.linalg.norm(a, axis=1)
    assert norms.max() / norms.min() > 2.0
