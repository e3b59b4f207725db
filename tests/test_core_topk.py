"""dpr._core.top_k / top_k_batch against a numpy reference."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dpr import _core


def reference(items, query, k, exclude=()):
    """Documented order: score desc, then row asc; NaN last. Scores in float64."""
    scores = np.asarray(items, dtype=np.float64) @ np.asarray(query, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))  # lexsort puts NaN last
    banned = np.zeros(len(scores), dtype=bool)
    banned[np.asarray(list(exclude), dtype=np.int64)] = True
    order = order[~banned[order]]
    return order[:k], scores[order[:k]]


def small_ints(rng, shape):
    """Small integers as float32: every inner product is exact, so ties are real ties."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


SIZES = [(1, 1), (5, 3), (64, 8), (257, 13), (1000, 32), (3000, 64)]


@pytest.mark.parametrize(("n", "d"), SIZES)
def test_top_k_matches_numpy_exactly_with_ties(n, d):
    rng = np.random.default_rng(n * 100 + d)
    items = small_ints(rng, (n, d))
    for k in sorted({0, 1, 5, n // 2, n, n + 7}):
        query = small_ints(rng, d)
        exclude = rng.integers(0, n, size=n // 5)
        ids, scores = _core.top_k(items, query, k, exclude)
        ref_ids, ref_scores = reference(items, query, k, exclude)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@pytest.mark.parametrize(("n", "d"), SIZES)
def test_top_k_matches_numpy_on_gaussian_data(n, d):
    rng = np.random.default_rng(7 + n + d)
    items = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal(d, dtype=np.float32)
    k = min(10, n)
    ids, scores = _core.top_k(items, query, k)
    ref_ids, ref_scores = reference(items, query, k)
    full = items.astype(np.float64) @ query.astype(np.float64)
    # Summation order differs from numpy's, so compare scores, not near-tied ids.
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, full[ids], rtol=1e-5, atol=1e-5)
    assert len(set(ids.tolist())) == len(ids)
    assert np.all(np.diff(scores) <= 0)
    # Well-separated ranks must agree exactly.
    assert ids[0] == ref_ids[0] or abs(full[ids[0]] - full[ref_ids[0]]) < 1e-5


def test_output_types_and_shapes():
    items = np.eye(4, dtype=np.float32)
    ids, scores = _core.top_k(items, np.array([0, 3, 1, 2], dtype=np.float32), 2)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.shape == scores.shape == (2,)
    assert ids.tolist() == [1, 3] and scores.tolist() == [3.0, 2.0]
    ids, scores = _core.top_k_batch(items, np.eye(4, dtype=np.float32)[:3], 2)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.shape == scores.shape == (3, 2)
    assert ids.flags.c_contiguous and scores.flags.c_contiguous


def test_ties_go_to_lower_row():
    items = np.array([[1], [2], [1], [2], [1]], dtype=np.float32)
    ids, scores = _core.top_k(items, np.array([1.0], dtype=np.float32), 5)
    assert ids.tolist() == [1, 3, 0, 2, 4]
    assert scores.tolist() == [2, 2, 1, 1, 1]
    ids, _ = _core.top_k(items, np.array([-1.0], dtype=np.float32), 3)
    assert ids.tolist() == [0, 2, 4]
    # 0.0 and -0.0 tie.
    zeros = np.array([[0.0], [-0.0], [0.0]], dtype=np.float32)
    ids, _ = _core.top_k(zeros, np.array([1.0], dtype=np.float32), 3)
    assert ids.tolist() == [0, 1, 2]


def test_nan_ranks_last_and_infinities():
    items = np.array([[np.nan], [-np.inf], [1.0], [np.nan], [np.inf], [-2.0]], dtype=np.float32)
    ids, scores = _core.top_k(items, np.array([1.0], dtype=np.float32), 6)
    assert ids.tolist() == [4, 2, 5, 1, 0, 3]
    assert np.isnan(scores[-2:]).all()
    ids, scores = _core.top_k(items, np.array([np.nan], dtype=np.float32), 2)
    assert ids.tolist() == [0, 1] and np.isnan(scores).all()


def test_k_zero_k_beyond_n_and_empty_inputs():
    items = np.arange(6, dtype=np.float32).reshape(3, 2)
    query = np.ones(2, dtype=np.float32)
    ids, scores = _core.top_k(items, query, 0)
    assert ids.shape == scores.shape == (0,)
    ids, _ = _core.top_k(items, query, 10**12)
    assert ids.tolist() == [2, 1, 0]
    ids, _ = _core.top_k(items, query, 10, exclude=[1])
    assert ids.tolist() == [2, 0]
    ids, _ = _core.top_k(np.zeros((0, 2), np.float32), query, 5)
    assert ids.shape == (0,)
    # d = 0: every score is 0, ties by row.
    ids, scores = _core.top_k(np.zeros((3, 0), np.float32), np.zeros(0, np.float32), 2)
    assert ids.tolist() == [0, 1] and scores.tolist() == [0.0, 0.0]
    ids, scores = _core.top_k_batch(items, np.zeros((0, 2), np.float32), 2)
    assert ids.shape == scores.shape == (0, 2)
    ids, scores = _core.top_k_batch(items, query[None], 0)
    assert ids.shape == scores.shape == (1, 0)


@pytest.mark.parametrize(
    "exclude",
    [
        [0, 2],
        (2, 0, 0),
        {0, 2},
        range(0, 3, 2),
        np.array([2, 0], dtype=np.int32),
        np.array([0, 2], dtype=np.uint64),
        np.array([[0, 2]])[0],
        np.array([0, 1, 2, 3])[::2],
    ],
)
def test_exclude_forms(exclude):
    items = np.array([[5], [4], [3], [2]], dtype=np.float32)
    ids, _ = _core.top_k(items, np.array([1.0], dtype=np.float32), 4, exclude=exclude)
    assert ids.tolist() == [1, 3]


@pytest.mark.parametrize("exclude", [None, [], np.array([]), np.array([], dtype=np.int64)])
def test_exclude_nothing(exclude):
    items = np.array([[1], [2]], dtype=np.float32)
    ids, _ = _core.top_k(items, np.array([1.0], dtype=np.float32), 2, exclude=exclude)
    assert ids.tolist() == [1, 0]


def test_exclude_everything():
    items = np.ones((3, 2), np.float32)
    ids, scores = _core.top_k(items, np.ones(2, np.float32), 3, exclude=[0, 1, 2])
    assert ids.shape == scores.shape == (0,)


@pytest.mark.parametrize(
    ("b", "n", "d"), [(1, 50, 4), (7, 300, 16), (40, 1000, 24), (3, 20000, 32)]
)
def test_batch_matches_single_queries(b, n, d):
    rng = np.random.default_rng(b + n + d)
    items = small_ints(rng, (n, d))
    queries = small_ints(rng, (b, d))
    excludes = [rng.integers(0, n, size=rng.integers(0, 20)) for _ in range(b)]
    for k in (1, 10, n):
        ids, scores = _core.top_k_batch(items, queries, k, excludes)
        assert ids.shape == scores.shape == (b, min(k, n))
        for q in range(b):
            ref_ids, ref_scores = reference(items, queries[q], k, excludes[q])
            m = len(ref_ids)
            np.testing.assert_array_equal(ids[q, :m], ref_ids)
            np.testing.assert_array_equal(scores[q, :m], ref_scores.astype(np.float32))
            assert (ids[q, m:] == -1).all() and (scores[q, m:] == -np.inf).all()


def test_batch_padding_and_per_query_none():
    items = np.arange(4, dtype=np.float32).reshape(4, 1)
    queries = np.ones((3, 1), np.float32)
    ids, scores = _core.top_k_batch(items, queries, 3, exclude=[[3, 2], None, np.array([])])
    assert ids.tolist() == [[1, 0, -1], [3, 2, 1], [3, 2, 1]]
    assert scores[0].tolist() == [1.0, 0.0, -np.inf]
    # Two queries, everything excluded for the first.
    ids, _ = _core.top_k_batch(items, queries[:2], 2, exclude=[range(4), []])
    assert ids.tolist() == [[-1, -1], [3, 2]]
    # A 2-D integer array works as one row per query.
    ids, _ = _core.top_k_batch(items, queries[:2], 1, exclude=np.array([[3], [0]]))
    assert ids.tolist() == [[2], [3]]


def test_float_inputs_are_converted():
    rng = np.random.default_rng(0)
    items32 = small_ints(rng, (50, 6))
    query32 = small_ints(rng, 6)
    expected = _core.top_k(items32, query32, 7)
    variants = [
        (items32.astype(np.float64), query32.astype(np.float64)),
        (items32.astype(np.int64), query32.astype(np.int32)),
        (items32.astype(np.float16), query32.astype(np.float16)),
        (np.asfortranarray(items32), query32),
        (np.repeat(items32, 2, axis=1)[:, ::2], np.repeat(query32, 2)[::2]),
        (items32.astype(">f4"), query32.astype(">f4")),
        (items32.tolist(), query32.tolist()),
    ]
    for items, query in variants:
        ids, scores = _core.top_k(items, query, 7)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(scores, expected[1])
        assert scores.dtype == np.float32
    ids, _ = _core.top_k_batch(np.asfortranarray(items32), query32[None].astype(np.float64), 7)
    np.testing.assert_array_equal(ids[0], expected[0])


def test_inputs_untouched_and_still_writeable():
    items = np.ones((5, 3), np.float32)
    query = np.ones(3, np.float32)
    before = items.copy()
    _core.top_k(items, query, 2)
    _core.top_k_batch(items, query[None], 2)
    assert items.flags.writeable and query.flags.writeable
    np.testing.assert_array_equal(items, before)
    items[0, 0] = 2.0  # the read-only borrow was released


def test_same_array_as_items_and_queries():
    items = np.eye(3, dtype=np.float32)
    ids, _ = _core.top_k_batch(items, items, 1)
    assert ids[:, 0].tolist() == [0, 1, 2]


I23 = np.ones((2, 3), np.float32)
Q3 = np.ones(3, np.float32)


@pytest.mark.parametrize(
    ("items", "query", "k", "exclude", "error", "match"),
    [
        (Q3, Q3, 1, None, ValueError, "2-D"),
        (I23, Q3[None], 1, None, ValueError, "1-D"),
        (I23, np.ones(4, np.float32), 1, None, ValueError, "dimension"),
        (I23, Q3, -1, None, ValueError, "k must be"),
        (I23, Q3, 1, [2], ValueError, "out of range"),
        (I23, Q3, 1, [-1], ValueError, "out of range"),
        (I23, Q3, 1, np.array([[0]]), ValueError, "1-D"),
        (I23.astype(bool), Q3, 1, None, TypeError, "real numbers"),
        (I23.astype(complex), Q3, 1, None, TypeError, "real numbers"),
        (I23.astype(object), Q3, 1, None, TypeError, "real numbers"),
        (I23, np.array(["a", "b", "c"]), 1, None, TypeError, "real numbers"),
        (I23, Q3, 1.5, None, TypeError, None),
        (I23, Q3, 1, [[0]], TypeError, None),
        (I23, Q3, 1, [0.5], TypeError, None),
        (I23, Q3, 1, [True], TypeError, "bool"),
        (I23, Q3, 1, np.array([1.0]), TypeError, "integer"),
        (I23, Q3, 1, np.array([True]), TypeError, "mask"),
    ],
)
def test_top_k_errors(items, query, k, exclude, error, match):
    with pytest.raises(error, match=match):
        _core.top_k(items, query, k, exclude)


def test_batch_errors():
    items = np.ones((4, 3), np.float32)
    queries = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="dimension"):
        _core.top_k_batch(items, np.ones((2, 4), np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        _core.top_k_batch(items, np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="one id list per query"):
        _core.top_k_batch(items, queries, 1, exclude=[[0]])
    with pytest.raises(ValueError, match=r"exclude\[1\].*out of range"):
        _core.top_k_batch(items, queries, 1, exclude=[[0], [4]])
    with pytest.raises(ValueError, match="k must be"):
        _core.top_k_batch(items, queries, -2)
    with pytest.raises(TypeError):
        _core.top_k_batch(items, queries, 1, exclude="ab")
    with pytest.raises(TypeError, match=r"exclude\[0\] must be .* iterable of ints"):
        _core.top_k_batch(items, queries, 1, exclude=np.array([1, 2]))  # not one list per query


def test_concurrent_batches_from_two_threads():
    rng = np.random.default_rng(1)
    items = small_ints(rng, (20000, 32))
    query_sets = [small_ints(rng, (64, 32)) for _ in range(2)]
    expected = [_core.top_k_batch(items, q, 10) for q in query_sets]
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(i):
        try:
            for _ in range(5):
                results[i].append(_core.top_k_batch(items, query_sets[i], 10))
        except BaseException as e:  # surface failures in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        assert len(results[i]) == 5
        for ids, scores in results[i]:
            np.testing.assert_array_equal(ids, expected[i][0])
            np.testing.assert_array_equal(scores, expected[i][1])


def test_gil_is_released_during_compute():
    """Every compute entry point runs under one wrapper. While a call waits inside it, another
    Python thread must be able to run Python code (and call back in); with the GIL held it
    could not, and the wait would end unsignalled."""
    done = threading.Event()

    def signal() -> None:
        while not done.is_set():
            _core._gil_probe_signal()

    thread = threading.Thread(target=signal)
    thread.start()
    try:
        assert _core._gil_probe_wait(30.0) is True
    finally:
        done.set()
        thread.join()
