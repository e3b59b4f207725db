"""The synthetic catalogue: determinism, shape of the data, and learnable sequences."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dpr.data import GENRES, SequenceDataset, generate_catalogue, synthetic_dataset
from dpr.data.synthetic import FIRST_ITEM_ID


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return generate_catalogue(num_users=50, num_items=40, seed=3)


def test_same_seed_same_data() -> None:
    a_events, a_items = generate_catalogue(num_users=60, num_items=50, seed=11)
    b_events, b_items = generate_catalogue(num_users=60, num_items=50, seed=11)
    for column in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(a_events, column), getattr(b_events, column))
    assert a_items.ids == b_items.ids
    assert a_items.titles == b_items.titles
    assert a_items.attributes == b_items.attributes


def test_different_seed_different_data() -> None:
    a_events, a_items = generate_catalogue(num_users=60, num_items=50, seed=1)
    b_events, b_items = generate_catalogue(num_users=60, num_items=50, seed=2)
    assert not np.array_equal(a_events.items, b_events.items) or \
        len(a_events) != len(b_events)
    assert a_items.titles != b_items.titles


def test_tiny_catalogue_shape(tiny: tuple) -> None:
    events, items = tiny
    assert items.ids == list(range(FIRST_ITEM_ID, FIRST_ITEM_ID + 40))
    assert set(events.users.tolist()) == set(range(1, 51))
    assert set(events.items.tolist()) <= set(items.ids)
    assert events.timestamps.dtype == np.int64
    assert set(np.unique(events.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    for user in range(1, 51):
        rows = events.users == user
        assert (np.diff(events.timestamps[rows]) > 0).all()  # strictly increasing
        assert len(np.unique(events.items[rows])) == rows.sum()  # no repeats
        assert 5 <= rows.sum() <= 20  # capped at half the catalogue


def test_titles_and_genres_look_real(tiny: tuple) -> None:
    _, items = tiny
    assert all(re.fullmatch(r"[A-Z][\w' ]+(: [\w ]+)?( [IVX]+| \d+)? \(\d{4}\)", t)
               for t in items.titles), items.titles
    assert len(set(items.titles)) == len(items.titles)
    for values in items.attributes["genre"]:
        assert 1 <= len(values) <= 3
        assert len(set(values)) == len(values)
        assert set(values) <= set(GENRES)
    assert "Children's" in GENRES and "Sci-Fi" in GENRES and len(GENRES) == 16


def test_popularity_is_skewed() -> None:
    events, _ = generate_catalogue(num_users=300, num_items=150, seed=0)
    counts = np.sort(np.bincount(events.items - FIRST_ITEM_ID))[::-1]
    top_tenth = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_tenth > 0.2  # the most popular 10% of items get far more than 10% of views


def test_synthetic_dataset_keeps_almost_everything() -> None:
    dataset = synthetic_dataset(num_users=200, num_items=120, seed=5)
    report = dataset.report
    assert report["dropped_by_k_core"] <= 0.01 * report["rows_read"]
    assert dataset.num_items >= 118 and len(dataset.users) == 200
    tiny = synthetic_dataset(num_users=50, num_items=40, seed=0)
    assert tiny.report["dropped_by_k_core"] <= 0.01 * tiny.report["rows_read"]


def _hits_at_10(dataset: SequenceDataset) -> tuple[float, float]:
    """Test-set HR@10 of most-popular and of a first-order transition count model."""
    split = dataset.split()
    n = dataset.num_items + 1
    popularity = np.zeros(n)
    transitions = np.zeros((n, n))
    for sequence in split.train:
        np.add.at(popularity, sequence, 1)
        np.add.at(transitions, (sequence[:-1], sequence[1:]), 1)
    histories, targets = split.evaluation_cases("test")
    hits = np.zeros(2)
    for history, target in zip(histories, targets, strict=True):
        following = transitions[history[-1]] + 1e-3 * popularity
        for k, scores in enumerate((popularity.copy(), following)):
            scores[0] = -np.inf
            hits[k] += (scores > scores[target]).sum() < 10
    return hits[0] / len(targets), hits[1] / len(targets)


def test_next_item_is_predictable_from_the_last_one() -> None:
    popular, sequential = _hits_at_10(synthetic_dataset(num_users=300, num_items=150, seed=0))
    assert sequential > 2 * popular and sequential > 0.3


@pytest.mark.parametrize("kwargs", [dict(num_users=0), dict(num_items=1),
                                    dict(min_length=10, max_length=5), dict(min_length=0)])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_catalogue(**kwargs)
