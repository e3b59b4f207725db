"""Retrieval at scale: exact scan vs dpr's HNSW index vs hnswlib, at matched recall@10.

Synthetic item catalogues (clustered vectors with varied norms, like learned item embeddings)
of several sizes; recall@10 against the exact inner-product top-10; queries/s on all cores in
batch calls for every method; build time and the resident memory each index adds; and
filtered retrieval (items holding an attribute value that covers 1%, 10% or 50% of them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, publish, rss_mib, table

EFS = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512]
FILTER_EFS = [32, 64, 96, 128, 192, 256, 384, 512]
HNSWLIB_FILTER_EFS = [64, 128, 256, 512]
SHARES = [0.001, 0.01, 0.10, 0.50]
TARGETS = [0.90, 0.95, 0.99]
K = 10


def catalogue(n: int, dim: int, seed: int, clusters: int = 512) -> np.ndarray:
    """`n` vectors around `clusters` centres, with norms spread over about 0.5x..2x."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, clusters, m)] + 0.7 * rng.standard_normal((m, dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block *= rng.lognormal(0.0, 0.35, size=(m, 1))
        out[start:start + m] = block
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def _qps(call: Any, queries: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return queries / best


def _matched(curve: list[dict[str, float]]) -> dict[str, dict[str, float] | None]:
    """For each target recall, the fastest point of the curve that reaches it."""
    out: dict[str, dict[str, float] | None] = {}
    for target in TARGETS:
        points = [p for p in curve if p["recall"] >= target]
        out[f"{target:.2f}"] = max(points, key=lambda p: p["qps"]) if points else None
    return out


def _cache_stem(cache: Path, n: int, dim: int, m: int, ef_construction: int, seed: int) -> Path:
    return cache / f"retrieval-n{n}-d{dim}-m{m}-efc{ef_construction}-s{seed}"


def _dpr_index(items: np.ndarray, m: int, ef_construction: int, stem: Path | None
               ) -> tuple[Any, float | None, float | None]:
    """dpr's graph over `items`, loaded from `stem` when saved there before (else built and
    saved there); returns it with its build seconds and RSS growth (None when loaded)."""
    from dpr._core import HnswIndex

    path = stem.with_suffix(".hnsw") if stem else None
    if path is not None and path.is_file():
        return HnswIndex.load(path, items), None, None
    before = rss_mib()
    start = time.perf_counter()
    index = HnswIndex(items, m, ef_construction, 64)
    seconds = time.perf_counter() - start
    if path is not None:
        index.save(path)
    return index, seconds, rss_mib() - before


def _hnswlib_index(items: np.ndarray, m: int, ef_construction: int, threads: int, seed: int,
                   stem: Path | None) -> tuple[Any, float | None, float | None]:
    """hnswlib's graph over `items`, cached at `stem` like [`_dpr_index`]."""
    import hnswlib

    n, dim = items.shape
    path = stem.with_suffix(".hnswlib") if stem else None
    other = hnswlib.Index(space="ip", dim=dim)
    if path is not None and path.is_file():
        other.load_index(str(path), max_elements=n)
        return other, None, None
    before = rss_mib()
    start = time.perf_counter()
    other.init_index(max_elements=n, ef_construction=ef_construction, M=m, random_seed=seed)
    other.add_items(items, np.arange(n), num_threads=threads)
    seconds = time.perf_counter() - start
    if path is not None:
        other.save_index(str(path))
    return other, seconds, rss_mib() - before


def _builds(stem: Path | None, measured: dict[str, float | None]) -> dict[str, float | None]:
    """Build figures: the ones measured now, else the ones recorded when the cache was made."""
    record = stem.with_suffix(".json") if stem else None
    saved = json.loads(record.read_text()) if record is not None and record.is_file() else {}
    out = {key: value if value is not None else saved.get(key) for key, value in measured.items()}
    if record is not None:
        record.write_text(json.dumps(out) + "\n")
    return out


def one_size(n: int, dim: int, queries: int, filtered_queries: int, m: int, ef_construction: int,
             threads: int, seed: int, cache: Path | None, shares: list[float],
             hnswlib_queries: int) -> dict[str, Any]:
    from dpr._core import top_k_batch

    items = catalogue(n, dim, seed)
    qs = catalogue(queries, dim, seed + 1)
    result: dict[str, Any] = {"items": n, "dim": dim, "queries": queries}
    truth, _ = top_k_batch(items, qs, K)
    result["exact_qps"] = _qps(lambda: top_k_batch(items, qs, K), queries, repeats=2)
    stem = _cache_stem(cache, n, dim, m, ef_construction, seed) if cache else None
    index, dpr_s, dpr_mib = _dpr_index(items, m, ef_construction, stem)
    curve = []
    for ef in EFS:
        found, _ = index.search_batch(qs, K, ef=ef)
        curve.append({"ef": ef, "recall": recall(found, truth),
                      "qps": _qps(lambda ef=ef: index.search_batch(qs, K, ef=ef), queries)})
    result["dpr_curve"] = curve

    other, other_s, other_mib = _hnswlib_index(items, m, ef_construction, threads, seed, stem)
    curve = []
    for ef in EFS:
        other.set_ef(max(ef, K))
        found, _ = other.knn_query(qs, k=K, num_threads=threads)
        curve.append({"ef": ef, "recall": recall(found, truth),
                      "qps": _qps(lambda: other.knn_query(qs, k=K, num_threads=threads), queries)})
    result["hnswlib_curve"] = curve
    result.update(_builds(stem, {"dpr_build_s": dpr_s, "dpr_memory_mib": dpr_mib,
                                 "hnswlib_build_s": other_s, "hnswlib_memory_mib": other_mib}))
    result["dpr_matched"] = _matched(result["dpr_curve"])
    result["hnswlib_matched"] = _matched(result["hnswlib_curve"])
    fq = qs[:filtered_queries]
    result["unfiltered_1thread"] = _one_by_one(
        fq, truth[:filtered_queries], {f"ef {ef}": lambda q, ef=ef: index.search(q, K, ef=ef)[0]
                                       for ef in EFS})
    result["filtered"] = [_filtered(items, fq, index, other, share, seed, hnswlib_queries)
                          for share in shares]
    return result


def _one_by_one(qs: np.ndarray, truth: list[np.ndarray] | np.ndarray,
                methods: dict[str, Any], allowed: np.ndarray | None = None, rounds: int = 3
                ) -> list[dict[str, Any]]:
    """Each method (query → row ids) over the queries one at a time on this thread: recall@10
    against `truth`, queries/s, queries short of `min(K, allowed rows)`, disallowed rows.

    Queries/s counts the CPU time of this thread (the searches run on it, the GIL released),
    not the wall clock, which on a shared machine mostly measures the other processes. The
    methods take turns, `rounds` times (a method slower than 20 ms a query runs once); the
    median round counts."""
    wanted = K if allowed is None else min(K, int(allowed.sum()))
    found: dict[str, list[Any]] = {}
    seconds: dict[str, list[float]] = {label: [] for label in methods}
    for round_ in range(rounds):
        for label, method in methods.items():
            if round_ and seconds[label][0] > 0.02 * len(qs):
                continue
            out = []
            start = time.thread_time()
            for q in qs:
                out.append(method(q))
            seconds[label].append(time.thread_time() - start)
            found[label] = out
    rows = []
    for label, out in found.items():
        hits = sum(len(set(f.tolist()) & set(t.tolist()))
                   for f, t in zip(out, truth, strict=True))
        rows.append({"method": label, "recall": hits / max(1, sum(len(t) for t in truth)),
                     "qps": len(qs) / statistics.median(seconds[label]),
                     "short": sum(len(f) < wanted for f in out),
                     "disallowed": 0 if allowed is None else
                     sum(int((~allowed[np.asarray(f, dtype=np.int64)]).sum()) for f in out)})
    return rows


def _hnswlib_filtered(other: Any, allowed: np.ndarray, ef: int) -> Any:
    """hnswlib's own filtered search (a Python predicate per visited node), one thread; a
    query it cannot fill with K rows comes back short."""
    keep = allowed.tolist()

    def search(q: np.ndarray) -> np.ndarray:
        other.set_ef(max(ef, K))
        try:
            ids, _ = other.knn_query(q, k=K, num_threads=1, filter=keep.__getitem__)
        except RuntimeError:  # "Cannot return the results in a contiguous 2D array"
            return np.empty(0, dtype=np.int64)
        return ids[0].astype(np.int64)
    return search


def _filtered(items: np.ndarray, qs: np.ndarray, index: Any, other: Any, share: float,
              seed: int, hnswlib_queries: int) -> dict[str, Any]:
    """A random filter keeping `share` of the items: dpr's planner (default ef, then wider),
    each plan forced (the scan, the hnswlib-style walk, the two-hop walk), and hnswlib's own
    filtered search, all against the exact filtered top-10."""
    rng = np.random.default_rng(seed + 2 + int(share * 1e6))
    allowed = rng.random(len(items)) < share
    rows = np.flatnonzero(allowed)
    truth = []
    for q in qs:
        scores = items[rows] @ q
        top = np.argpartition(-scores, K)[:K] if len(rows) > K else np.arange(len(rows))
        truth.append(rows[top])
    methods: dict[str, Any] = {"planner": lambda q: index.search(q, K, allowed=allowed)[0]}
    methods |= {f"planner ef {ef}": lambda q, ef=ef: index.search(q, K, ef=ef, allowed=allowed)[0]
                for ef in FILTER_EFS}
    methods["scan"] = lambda q: index._search_as(q, K, allowed, "scan", 1)[0]
    for how in ("walk", "two_hop"):
        methods |= {f"{how} ef {ef}": lambda q, how=how, ef=ef:
                    index._search_as(q, K, allowed, how, ef)[0] for ef in FILTER_EFS}
    # hnswlib calls a Python predicate per visited node: at low shares that is most of the
    # graph, so it answers the first `hnswlib_queries` queries only (its recall is over those).
    theirs = {f"hnswlib ef {ef}": _hnswlib_filtered(other, allowed, ef)
              for ef in HNSWLIB_FILTER_EFS}
    few = slice(0, hnswlib_queries)
    points = (_one_by_one(qs, truth, methods, allowed)
              + _one_by_one(qs[few], truth[few], theirs, allowed, rounds=1))
    # The filter's rows as an attribute value with its own graph (what the engine builds for
    # values held by 5,000+ items and at most half of them): the planner walks it.
    before, start = rss_mib(), time.perf_counter()
    index.add_subgraph(rows)
    graph_s, graph_mib = time.perf_counter() - start, rss_mib() - before
    with_graph = {"value graph": lambda q: index.search(q, K, allowed=allowed)[0]}
    # The unfiltered graph's grid, so that the two meet the target recall at like breadths.
    with_graph |= {f"value graph ef {ef}": lambda q, ef=ef:
                   index.search(q, K, ef=ef, allowed=allowed)[0] for ef in EFS}
    points += _one_by_one(qs, truth, with_graph, allowed)
    return {"share": share, "allowed_items": len(rows), "hnswlib_queries": len(qs[few]),
            "value_graph_build_s": graph_s, "value_graph_mib": graph_mib, "points": points}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        for key, label in (("dpr_curve", "dpr HNSW"), ("hnswlib_curve", "hnswlib")):
            ax.plot([p["recall"] for p in r[key]], [p["qps"] for p in r[key]], marker="o",
                    label=label)
        ax.axhline(r["exact_qps"], color="grey", linestyle="--", label="dpr exact scan")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries/s")
        ax.set_title(f"{r['items']:,} items, d = {r['dim']}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _point(points: list[dict[str, Any]], label: str) -> dict[str, Any]:
    return next(p for p in points if p["method"] == label)


def _best(points: list[dict[str, Any]], prefix: str, target: float = 0.95
          ) -> dict[str, Any] | None:
    """The fastest point whose method starts with `prefix` at recall ≥ `target`."""
    ok = [p for p in points if p["method"].startswith(prefix) and p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def _filtered_row(r: dict[str, Any], f: dict[str, Any]) -> list[Any]:
    def cell(p: dict[str, Any] | None) -> str:
        if p is None:
            return "not reached"
        method = p["method"]
        ef = method.rsplit(" ", 1)[-1] if " ef " in f" {method} " else "default"
        return f"{p['qps']:,.0f} (ef {ef}, {p['recall']:.3f})"

    def ratio(p: dict[str, Any] | None) -> str:
        return f"{p['qps'] / plain['qps']:.2f}×" if p and plain else "–"

    points = f["points"]
    planner = _point(points, "planner")
    dpr = _best(points, "planner")
    graph = _best(points, "value graph")
    plain = _best(r["unfiltered_1thread"], "ef")
    dpr_points = [p for p in points if not p["method"].startswith("hnswlib")]
    return [f"{r['items']:,}", f"{f['share']:.1%}", f"{f['allowed_items']:,}",
            f"{planner['recall']:.3f}, {planner['qps']:,.0f}", cell(dpr),
            cell(_best(points, "hnswlib")), cell(plain), ratio(dpr), cell(graph), ratio(graph),
            f"{f['value_graph_build_s']:.1f}",
            sum(p["short"] for p in dpr_points), sum(p["disallowed"] for p in dpr_points)]


def _plans_row(r: dict[str, Any], f: dict[str, Any]) -> list[Any]:
    points = f["points"]

    def cell(label: str) -> str:
        p = _point(points, label)
        return f"{p['recall']:.3f}, {p['qps']:,.0f}"

    scan = _point(points, "scan")
    return [f"{r['items']:,}", f"{f['share']:.1%}", f"{scan['qps']:,.0f}",
            *[cell(f"walk ef {ef}") for ef in FILTER_EFS],
            *[cell(f"two_hop ef {ef}") for ef in FILTER_EFS]]


def to_markdown(results: list[dict[str, Any]], meta: dict[str, Any], command: str) -> str:
    def cell(p: dict[str, float] | None) -> str:
        return f"{p['qps']:,.0f} (ef {p['ef']}, {p['recall']:.3f})" if p else "not reached"

    rows = []
    for r in results:
        for target in (f"{t:.2f}" for t in TARGETS):
            a, b = r["dpr_matched"][target], r["hnswlib_matched"][target]
            ratio = f"{a['qps'] / b['qps']:.2f}×" if a and b else "–"
            rows.append([f"{r['items']:,}", target, cell(a), cell(b), ratio,
                         f"{r['exact_qps']:,.0f}"])
    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    builds = [[f"{r['items']:,}", num(r["dpr_build_s"], ".1f"), num(r["hnswlib_build_s"], ".1f"),
               num(r["dpr_memory_mib"], ".0f"), num(r["hnswlib_memory_mib"], ".0f")]
              for r in results]
    filtered = [_filtered_row(r, f) for r in results for f in r["filtered"]]
    plans = [_plans_row(r, f) for r in results for f in r["filtered"]]
    return (
        "# Retrieval at scale: exact scan vs dpr HNSW vs hnswlib (recall@10 against exact)\n\n"
        + table(["items", "target recall", "dpr HNSW q/s (ef, recall)",
                 "hnswlib q/s (ef, recall)", "dpr / hnswlib", "exact scan q/s"], rows)
        + "\n## Build and memory\n\n"
        + table(["items", "dpr build s", "hnswlib build s", "dpr index MiB (RSS growth)",
                 "hnswlib index MiB (RSS growth)"], builds)
        + "\n## Filtered search (one thread, single queries, recall@10 against the exact "
          "filtered top-10)\n\n"
          "Queries/s here are per CPU-second of the querying thread (see `_one_by_one`): the "
          "machine is shared, so wall-clock rates would mostly measure the other processes. "
          "dpr's planner at the default ef; the fastest point at recall@10 ≥ 0.95 of dpr's "
          "planner (ef raised), of hnswlib's own filtered search (`knn_query(filter=...)`) and "
          "of dpr's unfiltered graph on the same queries (its recall against the unfiltered "
          "top-10); hnswlib's filtered search answers the first `--hnswlib-filtered-queries` "
          "queries only (a Python predicate call per visited node); short: queries with "
          "fewer than min(10, allowed) hits; leaked: disallowed "
          "rows returned, over every dpr method. Value graph: the same planner once the "
          "filter's rows have their own graph (`add_subgraph`, `rust/src/index/subgraph.rs`: "
          "the engine builds one per attribute value held by 5,000+ items and at most half of "
          "them), its build seconds on 2 threads beside it.\n\n"
        + table(["items", "filter keeps", "allowed", "dpr planner: recall, q/s",
                 "dpr ≥ 0.95: q/s (ef, recall)", "hnswlib filtered ≥ 0.95: q/s (ef, recall)",
                 "dpr unfiltered ≥ 0.95: q/s (ef, recall)", "dpr / unfiltered",
                 "value graph ≥ 0.95: q/s (ef, recall)", "value graph / unfiltered",
                 "value graph build s", "short", "leaked"], filtered)
        + "\n## The plans, forced (what `rust/src/index/policy.rs` `plan` chooses between)\n\n"
          "Recall@10 and q/s (one thread) of the gather-scan of the allowed rows and of the two "
          "filtered walks at each ef: hnswlib-style (every neighbour scored, allowed ones "
          "kept) and two-hop (ACORN-1: disallowed neighbours skipped, their allowed neighbours "
          "scored).\n\n"
        + table(["items", "filter keeps", "scan q/s",
                 *[f"walk ef {ef}" for ef in FILTER_EFS],
                 *[f"two-hop ef {ef}" for ef in FILTER_EFS]], plans)
        + f"\nBoth graphs: M = {meta['m']}, ef_construction = {meta['ef_construction']}, built "
          f"and searched on {meta['threads']} threads (batch calls). dpr's graph is built by "
          "dpr's builder (`rust/src/index/build.rs`) and walked by dpr's own search "
          "(`rust/src/index/graph.rs`) on int8 codes of the vectors, its results rescored with "
          "the exact scan's dot product. Build times: both builders side by side in one run "
          "unless `--cache` supplied the graphs. Clustered synthetic vectors "
          f"(512 centres, norms 0.5x–2x), {meta['queries']} queries from the same distribution."
          f"\n\n"
          + footer(meta, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--filtered-queries", type=int, default=200)
    parser.add_argument("--hnswlib-filtered-queries", type=int, default=30,
                        help="queries for hnswlib's filtered search (a Python call per node)")
    parser.add_argument("--shares", default=",".join(str(x) for x in SHARES),
                        help="filter shares for the filtered tables")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep built graphs here and load them in later runs")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="retrieval")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    import os
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"{n:,} items ...", flush=True)
        results.append(one_size(n, args.dim, args.queries, args.filtered_queries, args.m,
                                args.ef_construction, args.threads, args.seed, args.cache,
                                [float(x) for x in args.shares.split(",")],
                                args.hnswlib_filtered_queries))
    meta = {"m": args.m, "ef_construction": args.ef_construction, "threads": args.threads,
            "queries": args.queries, **machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / f"{args.name}.png")
    return publish("retrieval", argv, {"sizes": results, **meta},
                   lambda c: to_markdown(results, meta, c), args.name, args.out)


if __name__ == "__main__":
    sys.exit(main())
