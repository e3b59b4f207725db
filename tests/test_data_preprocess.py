"""build_dataset, k-core, chronological order, id maps and the leave-one-out split."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pytest

from dpr.data import (
    PADDING,
    Interactions,
    ItemMetadata,
    build_dataset,
    k_core_mask,
)

NAN = float("nan")


def events(rows: Sequence[tuple[Hashable, Hashable, float, float]]) -> Interactions:
    """Interactions from (user, item, rating, timestamp) rows."""
    users, items, ratings, times = zip(*rows, strict=True)
    return Interactions(_ids(users), _ids(items), np.asarray(ratings, dtype=np.float64),
                        np.asarray(times, dtype=np.float64), source="test")


def _ids(values: Sequence[Hashable]) -> np.ndarray:
    if any(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=object)
    return np.asarray(values, dtype=np.int64)


def catalogue(ids: Sequence[Hashable]) -> ItemMetadata:
    return ItemMetadata(list(ids), [f"Title {i}" for i in ids],
                        {"genre": [("Drama",) if n % 2 else ("Comedy", "Drama")
                                   for n in range(len(ids))]})


def test_rows_without_timestamp_are_dropped_and_counted() -> None:
    data = events([(1, 10, 5, 1), (1, 20, 3, NAN), (1, 30, 4, 2), (2, 10, 3, NAN)])
    dataset = build_dataset(data, catalogue([10, 20, 30]), name="t", k_core=1)
    assert dataset.report["rows_read"] == 4
    assert dataset.report["dropped_no_timestamp"] == 2
    assert dataset.users == [1]
    assert [dataset.items.external_id(int(i)) for i in dataset.sequences[0]] == [10, 30]


def test_min_rating_keeps_ratings_at_or_above() -> None:
    data = events([(1, 10, 5, 1), (1, 20, 3, 2), (1, 30, 4, 3), (1, 40, 3.5, 4)])
    dataset = build_dataset(data, catalogue([10, 20, 30, 40]), name="t", min_rating=4,
                            k_core=1)
    assert dataset.report["dropped_below_min_rating"] == 2
    assert dataset.report["min_rating"] == 4.0
    assert dataset.items.ids == [10, 30]


def test_min_rating_needs_ratings() -> None:
    data = events([(1, 10, NAN, 1)])
    with pytest.raises(ValueError, match="min_rating"):
        build_dataset(data, catalogue([10]), name="t", min_rating=4, k_core=1)


def test_items_without_metadata_are_dropped_and_counted() -> None:
    data = events([(1, 10, 5, 1), (1, 99, 5, 2)])
    dataset = build_dataset(data, catalogue([10]), name="t", k_core=1)
    assert dataset.report["dropped_unknown_item"] == 1
    assert dataset.items.ids == [10]


def test_k_core_cascades() -> None:
    # k = 2. D has one row, so D goes; then item 3 has only C, so it goes; then C has one
    # row left and goes too. A and B (items 1 and 2, twice each) survive.
    rows = [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("C", 2), ("C", 3), ("D", 3)]
    users = np.asarray([u for u, _ in rows], dtype=object)
    items = np.asarray([i for _, i in rows])
    assert k_core_mask(users, items, 2).tolist() == [True] * 4 + [False] * 3
    assert k_core_mask(users, items, 1).all()
    assert not k_core_mask(users, items, 3).any()

    dataset = build_dataset(events([(u, i, 5, n) for n, (u, i) in enumerate(rows)]),
                            catalogue([1, 2, 3]), name="t", k_core=2)
    assert dataset.users == ["A", "B"]
    assert dataset.report["dropped_by_k_core"] == 3
    assert dataset.report["interactions"] == 4


def test_k_core_counts_repeated_interactions() -> None:
    # A user who watched the same item 5 times has 5 interactions under a 5-core.
    data = events([(1, 10, 5, t) for t in range(5)] + [(2, 20, 5, 0)])
    dataset = build_dataset(data, catalogue([10, 20]), name="t", k_core=5)
    assert dataset.users == [1]
    assert dataset.sequences[0].tolist() == [1] * 5


def test_chronological_order_ties_keep_file_order() -> None:
    data = events([(1, 10, 5, 5), (1, 20, 5, 3), (2, 10, 5, 1), (1, 30, 5, 5), (1, 40, 5, 3)])
    dataset = build_dataset(data, catalogue([10, 20, 30, 40]), name="t", k_core=1)
    first = dataset.sequences[dataset.users.index(1)]
    assert [dataset.items.external_id(int(i)) for i in first] == [20, 40, 10, 30]
    assert dataset.sequences[dataset.users.index(2)].tolist() == [dataset.items.internal_id(10)]


def test_id_maps_round_trip_and_padding() -> None:
    ids = [300, 7, 42]
    data = events([(9, i, 5, n) for n, i in enumerate(ids)])
    meta = catalogue(ids)
    dataset = build_dataset(data, meta, name="t", k_core=1)
    items = dataset.items
    assert items.ids == [7, 42, 300]  # internal ids 1..N follow the sorted external ids
    assert [items.internal_id(i) for i in (7, 42, 300)] == [1, 2, 3]
    for internal in range(1, items.num_items + 1):
        external = items.external_id(internal)
        assert items.internal_id(external) == internal
        assert items.title(internal) == meta.titles[meta.ids.index(external)]
        assert items.values_of("genre", internal) == \
            meta.attributes["genre"][meta.ids.index(external)]
    assert PADDING == 0
    with pytest.raises(KeyError):
        items.external_id(PADDING)
    with pytest.raises(KeyError):
        items.internal_id(12345)
    assert all(s.dtype == np.int64 and s.min() >= 1 for s in dataset.sequences)
    matrix, values = items.attribute_matrix("genre")
    assert not matrix[PADDING].any() and matrix.shape == (4, len(values))


def test_string_ids() -> None:
    data = events([("u2", "b", 5, 1), ("u1", "a", 5, 2), ("u1", "b", 5, 3)])
    dataset = build_dataset(data, catalogue(["a", "b"]), name="t", k_core=1)
    assert dataset.users == ["u1", "u2"]
    assert dataset.items.ids == ["a", "b"]
    assert dataset.sequences[0].tolist() == [1, 2]


def test_leave_one_out_split() -> None:
    rows = [(1, i, 5, t) for t, i in enumerate([10, 20, 30, 40, 50])]
    rows += [(2, 10, 5, 0), (2, 20, 5, 1)]
    rows += [(3, 30, 5, 0), (3, 10, 5, 1), (3, 20, 5, 2)]
    dataset = build_dataset(events(rows), catalogue([10, 20, 30, 40, 50]), name="t", k_core=1)
    split = dataset.split()
    internal = dataset.items.internal_id
    assert split.num_users == 3
    assert split.train[0].tolist() == [internal(10), internal(20), internal(30)]
    assert split.valid_targets[0] == internal(40) and split.test_targets[0] == internal(50)
    assert split.train[1].tolist() == [internal(10), internal(20)]  # < 3 items: train only
    assert split.valid_targets[1] == PADDING and split.test_targets[1] == PADDING
    assert split.train[2].tolist() == [internal(30)]

    histories, targets = split.evaluation_cases("valid")
    assert [h.tolist() for h in histories] == [split.train[0].tolist(), [internal(30)]]
    assert targets.tolist() == [internal(40), internal(10)]
    histories, targets = split.evaluation_cases("test")
    assert histories[0].tolist() == [internal(i) for i in (10, 20, 30, 40)]
    assert histories[1].tolist() == [internal(30), internal(10)]
    assert targets.tolist() == [internal(50), internal(20)]
    with pytest.raises(ValueError):
        split.evaluation_cases("train")


def test_report_counts_add_up() -> None:
    data = events([(1, 10, 5, 1), (1, 20, 2, 2), (1, 30, 5, NAN), (1, 99, 5, 4), (2, 10, 5, 1)])
    dataset = build_dataset(data, catalogue([10, 20, 30]), name="t", min_rating=4, k_core=2)
    r = dataset.report
    dropped = (r["dropped_no_timestamp"] + r["dropped_below_min_rating"]
               + r["dropped_unknown_item"] + r["dropped_by_k_core"])
    assert r["rows_read"] - dropped == r["interactions"] == dataset.num_interactions
