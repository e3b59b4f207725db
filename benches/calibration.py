"""The graph's default breadth: the fixed ef = 128 against `HnswIndex.calibrate`.

For each catalogue size (the clustered synthetic catalogue of `retrieval.py`), one graph is
built (M = 16, ef_construction = 128) and searched with fresh queries of the catalogue's
distribution: recall@10 against the exact top-10 and single-query throughput at
- the fixed default (ef 128);
- the breadth `calibrate` picks from a separate sample of such queries (target 0.95);
- the breadth `calibrate` picks when the sample is the catalogue's own rows (a tempting proxy:
  each row's graph edges lead straight to its answer, so it asks for far too little).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, publish, table
from retrieval import catalogue

K = 10
TARGET = 0.95


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def _truth(items: np.ndarray, queries: np.ndarray) -> np.ndarray:
    out = []
    for lo in range(0, len(queries), 100):
        scores = queries[lo:lo + 100] @ items.T
        out.append(np.argsort(-scores, axis=1)[:, :K])
    return np.concatenate(out)


def _point(index: Any, queries: np.ndarray, truth: np.ndarray, ef: int) -> dict[str, float]:
    found, _ = index.search_batch(queries, K, ef=ef)
    started = time.process_time()
    for q in queries:
        index.search(q, K, ef=ef)
    seconds = time.process_time() - started
    return {"ef": ef, "recall": _recall(found, truth), "qps": len(queries) / seconds}


def run(sizes: list[int], dim: int, queries: int, samples: int, seed: int) -> dict[str, Any]:
    from dpr._core import HnswIndex

    rows = []
    for n in sizes:
        print(f"{n:,} items ...", file=sys.stderr, flush=True)
        items = catalogue(n, dim, seed)
        started = time.perf_counter()
        index = HnswIndex(items)
        build = time.perf_counter() - started
        fresh = catalogue(queries, dim, seed + 1)
        sample = catalogue(samples, dim, seed + 2)
        truth = _truth(items, fresh)
        fixed = _point(index, fresh, truth, 128)
        started = time.perf_counter()
        ef, measured = index.calibrate(sample, K, TARGET)
        calibration_seconds = time.perf_counter() - started
        calibrated = _point(index, fresh, truth, ef)
        own = items[np.linspace(0, n - 1, samples).astype(np.int64)]
        own_ef, own_measured = index.calibrate(own, K + 1, TARGET)
        proxy = _point(index, fresh, truth, own_ef)
        rows.append({"items": n, "build_seconds": build, "fixed": fixed,
                     "calibrated": {**calibrated, "sample_recall": measured,
                                    "seconds": calibration_seconds},
                     "own_rows": {**proxy, "sample_recall": own_measured}})
    return {"dim": dim, "queries": queries, "samples": samples, "target": TARGET,
            "rows": rows, **machine()}


def markdown(r: dict[str, Any], command: str) -> str:
    def cell(p: dict[str, float]) -> str:
        return f"{p['ef']} | {p['recall']:.3f} | {p['qps']:,.0f}"

    body = [[f"{row['items']:,}", cell(row["fixed"]), cell(row["calibrated"]),
             f"{row['calibrated']['seconds']:.1f}", cell(row["own_rows"])] for row in r["rows"]]
    return (
        "# The graph's default breadth: fixed ef 128 against `calibrate`\n\n"
        f"Recall@10 of {r['queries']:,} fresh queries (the catalogue's distribution) against the "
        "exact top-10, and queries/s of single searches (per CPU-second of the querying "
        f"thread), at three default breadths: the fixed 128; what `HnswIndex.calibrate` picks "
        f"for target {r['target']} from {r['samples']} other queries of the same kind; and what "
        "it picks from the catalogue's own rows as queries (each finds itself first, so `k` is "
        "11 there). `Recommender.calibrate_index` does the same with the steered vectors of "
        "real histories and prompts.\n\n"
        + table(["items", "fixed: ef", "recall", "q/s", "calibrated: ef", "recall", "q/s",
                 "calibration s", "own rows: ef", "recall", "q/s"], body)
        + "\nThe catalogue's own rows are too easy as calibration queries: the graph's edges "
        "from a row lead straight to that row's answer, so they call for a breadth at which "
        "queries of the same distribution miss much of their top-10. Calibrate on the "
        "queries the index will serve.\n\n" + footer(r, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="calibration")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    results = run([int(s) for s in args.sizes.split(",")], args.dim, args.queries,
                  args.samples, args.seed)
    return publish("calibration", argv, results, lambda cmd: markdown(results, cmd),
                   args.name, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
