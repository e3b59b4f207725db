"""dpr._core.HnswIndex: recall against numpy's exact top-k, filters, exact scores, bad input,
thread safety, save/load, and (printed only) a comparison with hnswlib."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dpr import _core

N, D, Q, K = 20_000, 32, 200, 10


def catalogue(n, d, seed):
    """Gaussian directions with log-normal norms (about 0.3x to 3x): inner product, not cosine."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, d), dtype=np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    items *= np.exp(0.5 * rng.standard_normal((n, 1))).astype(np.float32)
    return items


def exact(items, query, k, mask=None):
    scores = items.astype(np.float64) @ query.astype(np.float64)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
        k = min(k, int(mask.sum()))
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k]


def recall(found, truth):
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / max(1, sum(len(t) for t in truth))


@pytest.fixture(scope="module")
def data():
    items = catalogue(N, D, seed=1)
    queries = np.random.default_rng(2).standard_normal((Q, D), dtype=np.float32)
    return items, queries


@pytest.fixture(scope="module")
def index(data):
    return _core.HnswIndex(data[0])


def test_shape_and_defaults(index):
    assert len(index) == N
    assert index.dim == D
    assert index.first_row == 0
    assert index.expansion_search == 128
    assert "HnswIndex" in repr(index)


def test_recall_at_10_default_params(data, index):
    items, queries = data
    found = [index.search(q, K)[0] for q in queries]
    truth = [exact(items, q, K) for q in queries]
    r = recall(found, truth)
    print(f"\nrecall@10 at default params (M=16, ef_add=128, ef=128): {r:.4f}")
    assert r >= 0.98


def test_calibrate_sets_the_smallest_breadth_reaching_the_target(data, tmp_path):
    """`calibrate` measures recall on the caller's queries and keeps the first breadth that
    reaches the target; fresh queries of the same kind get about that recall by default, and
    a save keeps the breadth."""
    items, queries = data
    index = _core.HnswIndex(items)
    ef, measured = index.calibrate(queries[:100], k=K, target=0.95)
    assert index.expansion_search == ef and measured >= 0.95
    assert ef < 1024
    fresh = queries[100:]
    truth = [exact(items, q, K) for q in fresh]
    assert recall([index.search(q, K)[0] for q in fresh], truth) >= 0.93
    path = tmp_path / "index.hnsw"
    index.save(str(path))
    assert _core.HnswIndex.load(str(path), items).expansion_search == ef
    before = index.expansion_search
    for bad in [dict(queries=queries[:0]), dict(queries=queries[:5, :4]), dict(k=0),
                dict(target=0.0), dict(target=1.5), dict(target=float("nan"))]:
        args = {"queries": queries[:5], "k": K, "target": 0.9, **bad}
        with pytest.raises(ValueError):
            index.calibrate(**args)
    with_nan = queries[:5].copy()
    with_nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.calibrate(with_nan)
    assert index.expansion_search == before


def test_scores_are_exact_inner_products_sorted(data, index):
    items, queries = data
    for q in queries[:20]:
        ids, scores = index.search(q, K)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        assert len(ids) == K and len(set(ids.tolist())) == K
        np.testing.assert_allclose(scores, items[ids].astype(np.float64) @ q, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(scores) <= 0)
        # Bit-identical to the exact scan's scores for the rows both return.
        ex_ids, ex_scores = _core.top_k(items, q, K)
        same = dict(zip(ex_ids.tolist(), ex_scores.tolist(), strict=True))
        for i, s in zip(ids.tolist(), scores.tolist(), strict=True):
            if i in same:
                assert s == same[i]


def test_ef_raises_recall(data, index):
    items, queries = data
    truth = [exact(items, q, K) for q in queries[:50]]
    low = recall([index.search(q, K, ef=10)[0] for q in queries[:50]], truth)
    high = recall([index.search(q, K, ef=256)[0] for q in queries[:50]], truth)
    print(f"\nrecall@10 ef=10: {low:.4f}  ef=256: {high:.4f}")
    assert high >= low
    assert high >= 0.99
    # A breadth beyond the catalogue is clamped, not allocated.
    assert len(index.search(queries[0], K, ef=10**12)[0]) == K


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5])
def test_filtered_search_keeps_its_promise(data, index, fraction):
    items, queries = data
    rng = np.random.default_rng(int(fraction * 1e4))
    mask = rng.random(N) < fraction
    allowed = int(mask.sum())
    found, truth = [], []
    for k in (1, K, 50):
        for q in queries[:30]:
            ids, scores = index.search(q, k, allowed=mask)
            assert mask[ids].all(), "a disallowed row was returned"
            assert len(ids) == min(k, allowed)
            assert len(set(ids.tolist())) == len(ids)
            np.testing.assert_allclose(
                scores, items[ids].astype(np.float64) @ q, rtol=1e-5, atol=1e-5
            )
            if k == K:
                found.append(ids)
                truth.append(exact(items, q, k, mask))
    r = recall(found, truth)
    print(f"\nfilter {fraction:.1%} ({allowed} rows): recall@10 {r:.4f}")
    assert r >= 0.95


@pytest.mark.parametrize("fraction", [0.002, 0.05, 0.5])
@pytest.mark.parametrize("how", ["scan", "walk", "two_hop"])
def test_every_plan_keeps_the_promise(data, index, fraction, how):
    """Whatever the planner picks: never a disallowed row, exactly min(k, allowed) rows, exact
    scores; the scan is the exact filtered top-k (ties to the lower row)."""
    items, queries = data
    mask = np.random.default_rng(int(fraction * 1e4) + 1).random(N) < fraction
    allowed = int(mask.sum())
    for k in (1, K, 50):
        for q in queries[:10]:
            ids, scores = index._search_as(q, k, mask, how, 32)
            assert mask[ids].all(), "a disallowed row was returned"
            assert len(ids) == min(k, allowed) == len(set(ids.tolist()))
            np.testing.assert_allclose(
                scores, items[ids].astype(np.float64) @ q, rtol=1e-5, atol=1e-5
            )
            if how == "scan":
                np.testing.assert_array_equal(ids, index.search(q, k, allowed=mask)[0])
                want, want_scores = _core.top_k(items, q, k, exclude=np.flatnonzero(~mask))
                np.testing.assert_array_equal(ids, want)
                np.testing.assert_array_equal(scores, want_scores)
    with pytest.raises(ValueError, match="how must be"):
        index._search_as(queries[0], K, mask, "guess", 32)


def test_filter_edge_cases(data, index):
    _, queries = data
    q = queries[0]
    none = np.zeros(N, dtype=bool)
    ids, scores = index.search(q, K, allowed=none)
    assert len(ids) == 0 and len(scores) == 0
    three = none.copy()
    three[[5, 17, 19_999]] = True
    ids, _ = index.search(q, K, allowed=three)
    assert sorted(ids.tolist()) == [5, 17, 19_999]
    every = np.ones(N, dtype=bool)
    np.testing.assert_array_equal(index.search(q, K, allowed=every)[0], index.search(q, K)[0])
    # A strided view and a list are accepted as masks too.
    wide = np.zeros(2 * N, dtype=bool)
    wide[::2] = three
    assert sorted(index.search(q, K, allowed=wide[::2])[0].tolist()) == [5, 17, 19_999]


def test_k_edge_cases(data):
    items = catalogue(50, 8, seed=3)
    idx = _core.HnswIndex(items)
    q = np.ones(8, dtype=np.float32)
    assert len(idx.search(q, 0)[0]) == 0
    ids, _ = idx.search(q, 500)
    np.testing.assert_array_equal(ids, exact(items, q, 50))
    b_ids, b_scores = idx.search_batch(np.stack([q, -q]), 500)
    assert b_ids.shape == (2, 50) and b_scores.shape == (2, 50)
    np.testing.assert_array_equal(b_ids[0], ids)
    # A non-finite query still gets a well-defined answer (the exact scan's).
    nan_q = q.copy()
    nan_q[0] = np.nan
    assert len(idx.search(nan_q, 5)[0]) == 5


def test_skip_first_row():
    items = catalogue(2_000, 16, seed=4)
    items[0] = 100.0  # padding row that would win every query
    idx = _core.HnswIndex(items, skip_first_row=True)
    assert len(idx) == 1_999 and idx.first_row == 1
    q = np.ones(16, dtype=np.float32)
    ids, _ = idx.search(q, K)
    assert 0 not in ids.tolist()
    mask = np.ones(2_000, dtype=bool)  # the mask still covers every item row
    assert 0 not in idx.search(q, K, allowed=mask)[0].tolist()
    b_ids, _ = idx.search_batch(np.stack([q, q]), K)
    assert (b_ids != 0).all()


def test_search_batch_matches_search(data, index):
    _, queries = data
    ids, scores = index.search_batch(queries[:64], K, ef=64)
    assert ids.shape == (64, K) and ids.dtype == np.int64 and scores.dtype == np.float32
    for i, q in enumerate(queries[:64]):
        one_ids, one_scores = index.search(q, K, ef=64)
        np.testing.assert_array_equal(ids[i], one_ids)
        np.testing.assert_array_equal(scores[i], one_scores)
    empty_ids, _ = index.search_batch(np.zeros((0, D), dtype=np.float32), K)
    assert empty_ids.shape == (0, K)


def test_inputs_are_converted(data, index):
    _, queries = data
    q = queries[3]
    ref = index.search(q, K)[0]
    np.testing.assert_array_equal(index.search(q.astype(np.float64), K)[0], ref)
    np.testing.assert_array_equal(index.search(q.tolist(), K)[0], ref)


def test_bad_inputs(data, index):
    items, queries = data
    q = queries[0]
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros(D + 1, dtype=np.float32), K)
    with pytest.raises(ValueError, match="k must be"):
        index.search(q, -1)
    with pytest.raises(ValueError, match="ef"):
        index.search(q, K, ef=0)
    with pytest.raises(ValueError, match="1-D"):
        index.search(queries[:2], K)
    with pytest.raises(TypeError):
        index.search(np.array(["a"] * D), K)
    with pytest.raises(ValueError, match="length"):
        index.search(q, K, allowed=np.ones(N - 1, dtype=bool))
    with pytest.raises(TypeError, match="bool"):
        index.search(q, K, allowed=np.ones(N, dtype=np.int64))
    with pytest.raises(ValueError, match="dimension"):
        index.search_batch(np.zeros((2, D - 1), dtype=np.float32), K)
    with pytest.raises(ValueError, match="k must be"):
        index.search_batch(queries[:2], -5)
    with pytest.raises(ValueError, match="2-D"):
        _core.HnswIndex(items[0])
    with pytest.raises(TypeError):
        _core.HnswIndex(items > 0)
    with pytest.raises(ValueError, match="connectivity"):
        _core.HnswIndex(items[:10], connectivity=1)
    with pytest.raises(ValueError, match="connectivity"):
        _core.HnswIndex(items[:10], connectivity=-3)
    with pytest.raises(ValueError, match="expansion_add"):
        _core.HnswIndex(items[:10], expansion_add=0)
    with pytest.raises(ValueError, match="dimension 0"):
        _core.HnswIndex(np.zeros((4, 0), dtype=np.float32))
    bad = items[:10].copy()
    bad[7, 3] = np.inf
    with pytest.raises(ValueError, match="row 7"):
        _core.HnswIndex(bad)
    with pytest.raises(ValueError, match="skip_first_row"):
        _core.HnswIndex(np.zeros((0, 4), dtype=np.float32), skip_first_row=True)


def test_empty_index():
    idx = _core.HnswIndex(np.zeros((1, 4), dtype=np.float32), skip_first_row=True)
    assert len(idx) == 0
    assert len(idx.search(np.ones(4, dtype=np.float32), 3)[0]) == 0
    ids, _ = idx.search_batch(np.ones((2, 4), dtype=np.float32), 3)
    assert ids.shape == (2, 0)


def test_threads_get_the_serial_results(data, index):
    _, queries = data
    rng = np.random.default_rng(5)
    mask = rng.random(N) < 0.3
    serial = [index.search(q, K, allowed=mask if i % 2 else None)[0] for i, q in enumerate(queries)]
    results: dict[int, list] = {}
    errors = []

    def worker(t):
        try:
            order = np.random.default_rng(t).permutation(Q)
            got = {}
            for i in order:
                got[i] = index.search(queries[i], K, allowed=mask if i % 2 else None)[0]
            results[t] = [got[i] for i in range(Q)]
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for t in range(8):
        for i in range(Q):
            np.testing.assert_array_equal(results[t][i], serial[i])


def test_save_and_load(tmp_path, data):
    items = catalogue(3_000, 16, seed=6)
    idx = _core.HnswIndex(items, skip_first_row=True, connectivity=8)
    path = tmp_path / "index.hnsw"
    idx.save(path)
    back = _core.HnswIndex.load(path, items)
    assert len(back) == len(idx) and back.dim == 16 and back.first_row == 1
    qs = np.random.default_rng(7).standard_normal((20, 16), dtype=np.float32)
    for q in qs:
        a, b = idx.search(q, K), back.search(q, K)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = items.copy()
    other[1:] *= 2
    with pytest.raises(OSError, match="another catalogue"):
        _core.HnswIndex.load(path, other)
    with pytest.raises(OSError, match="dimension"):
        _core.HnswIndex.load(path, items[:, :8])
    with pytest.raises(OSError, match="missing"):
        _core.HnswIndex.load(tmp_path / "missing.hnsw", items)
    junk = tmp_path / "junk.hnsw"
    junk.write_bytes(b"not an index" * 10)
    with pytest.raises(OSError, match="junk"):
        _core.HnswIndex.load(junk, items)



def test_a_value_graph_answers_filters_inside_it(data, tmp_path):
    """Rows of one attribute value get their own graph; a filter inside it (the value minus
    a user's history, or a narrower one) is walked there: allowed rows only, exact scores,
    recall against the exact filtered top-10; the graph survives save and load."""
    items, queries = data
    index = _core.HnswIndex(items, expansion_search=64)
    value = np.flatnonzero(np.arange(N) % 3 == 0)
    assert index.add_subgraph(value[::-1]) == 1
    assert [len(rows) for rows in index.subgraphs] == [len(value)]
    assert index.subgraphs[0] == value.tolist()
    minus_history = np.zeros(N, dtype=bool)
    minus_history[value] = True
    minus_history[value[[3, 50, 700]]] = False
    narrower = minus_history & (np.arange(N) % 2 == 0)
    for mask in (minus_history, narrower):
        found = [index.search(q, K, allowed=mask) for q in queries[:100]]
        for (ids, scores), q in zip(found, queries[:100], strict=True):
            assert len(ids) == K and mask[ids].all()
            np.testing.assert_allclose(scores, items[ids] @ q, rtol=1e-5, atol=1e-5)
        truth = [exact(items, q, K, mask) for q in queries[:100]]
        assert recall([ids for ids, _ in found], truth) >= 0.95
    path = tmp_path / "index.hnsw"
    index.save(path)
    back = _core.HnswIndex.load(path, items)
    assert back.subgraphs == index.subgraphs
    for q in queries[:20]:
        a, b = back.search(q, K, allowed=narrower), index.search(q, K, allowed=narrower)
        np.testing.assert_array_equal(a[0], b[0])


def test_value_graph_bad_rows(data):
    items, _ = data
    index = _core.HnswIndex(items[:500])
    with pytest.raises(ValueError, match="not one of the indexed rows"):
        index.add_subgraph([1, 2, 500])
    with pytest.raises(ValueError, match="not an item row"):
        index.add_subgraph([-1, 2])
    with pytest.raises(ValueError, match="at least one row"):
        index.add_subgraph([])
    with pytest.raises(TypeError, match="integer item rows"):
        index.add_subgraph([1.5, 2.0])
    with pytest.raises(TypeError, match="integer item rows"):
        index.add_subgraph(np.ones(500, dtype=bool))
    assert index.subgraphs == []
