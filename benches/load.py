"""Loading a large bundle: time and resident memory to load a 1M-item bundle, first queries.

The bundle holds a randomly initialised model (load cost does not depend on training) over a
synthetic catalogue, with its HNSW graph saved inside; it is written once to `--workdir` and
reused. Each load runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_RESULTS, footer, machine, publish, table

GENRES = [f"genre {i:02d}" for i in range(18)]


def make_bundle(path: Path, items: int, seed: int) -> Path:
    """Writes (once) a bundle of `items` items with a saved HNSW graph; returns its path."""
    from dpr._core import INDEX_FILE

    if (path / INDEX_FILE).is_file():
        return path
    import numpy as np
    import torch

    from dpr.export import export_bundle
    from dpr.models import DPR, SASRec
    from dpr.models.steering import DPRSteering

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backbone = SASRec(items, dim=64, max_len=200)
    model = DPR(backbone, DPRSteering(64, attribute_dim=len(GENRES)),
                columns=[("genre", g) for g in GENRES]).eval()
    picks = rng.integers(0, len(GENRES), size=(items, 2))
    catalogue = {"item_ids": list(range(1, items + 1)),
                 "titles": [f"item {i}" for i in range(1, items + 1)],
                 "attributes": {"genre": [sorted({GENRES[a], GENRES[b]}) for a, b in picks]}}
    export_bundle(model, catalogue, path)
    import dpr

    started = time.perf_counter()
    dpr.Recommender.load(path, index="hnsw").save_index(path / INDEX_FILE)
    print(f"built and saved the HNSW graph in {time.perf_counter() - started:.0f} s", flush=True)
    return path


WARM_QUERIES = 200


def _probe(path: Path, verify: bool, value_graphs: bool) -> dict[str, float]:
    """One fresh-process load: seconds, RSS growth, first and second query, then the median
    of warm queries (histories of 50 random items, a cached prompt) with no filter and with an
    `include` filter on one genre (held by ~11% of the items)."""
    import numpy as np

    from _common import rss_mib

    before = rss_mib()
    started = time.perf_counter()
    import dpr

    rec = dpr.Recommender.load(path, verify=verify, value_graphs=value_graphs)
    loaded = time.perf_counter()
    prompt = "something funny, but no romance"
    rec.query([1, 2, 3, 4, 5], prompt, k=10)
    first = time.perf_counter()
    rec.query([6, 7, 8], prompt, k=10)
    second = time.perf_counter()
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, rec.num_items + 1, size=50).tolist()
                 for _ in range(WARM_QUERIES)]

    def median_s(**filters: Any) -> float:
        mode = "hybrid" if filters else "soft"
        times = []
        for history in histories:
            start = time.perf_counter()
            rec.query(history, prompt, k=10, mode=mode, **filters)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return {"load_s": loaded - started, "first_query_s": first - loaded,
            "second_query_s": second - first, "rss_growth_mib": rss_mib() - before,
            "warm_s": median_s(), "warm_filtered_s": median_s(include={"genre": [GENRES[0]]}),
            "uses_hnsw": float(rec.uses_hnsw)}


def run(path: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"bundle": str(path),
                           "bundle_mib": sum(f.stat().st_size for f in path.rglob("*")
                                             if f.is_file()) / 2**20}
    for key, flags in (("verified", []), ("unverified", ["--no-verify"]),
                       ("no_value_graphs", ["--no-value-graphs"])):
        samples = []
        for _ in range(repeats):
            command = [sys.executable, __file__, "--probe", str(path), *flags]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
        out[key] = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
    return {**out, **machine()}


def to_markdown(r: dict[str, Any], items: int, command: str) -> str:
    rows = [[name, f"{r[key]['load_s']:.2f}", f"{r[key]['rss_growth_mib']:.0f}",
             f"{r[key]['first_query_s'] * 1e3:.1f}", f"{r[key]['second_query_s'] * 1e3:.2f}",
             f"{r[key]['warm_s'] * 1e6:.0f}", f"{r[key]['warm_filtered_s'] * 1e6:.0f}"]
            for name, key in (("sha256 verified (default)", "verified"),
                              ("verify=False", "unverified"),
                              ("value_graphs=False", "no_value_graphs"))]
    return (f"# Loading a {items:,}-item bundle (fresh process each, medians)\n\n"
            + table(["load", "load s", "RSS growth MiB", "first query ms (cold prompt)",
                     "second query ms", "warm query µs", "warm query, one genre µs"], rows)
            + f"\nBundle: {r['bundle_mib']:.0f} MiB on disk (f16 encoder, f32 weights, saved "
            f"HNSW graph with its value graphs: 18 genres, each item holding two, so each genre "
            f"~11% of the items). Warm queries: the median of {WARM_QUERIES} queries in each "
            f"process, histories of 50 random items, a cached prompt, mode soft; one genre: "
            f"mode hybrid with `include={{'genre': ['genre 00']}}`. "
            + footer(r, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-load"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="load-1m")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-value-graphs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(_probe(args.probe, not args.no_verify, not args.no_value_graphs)))
        return 0
    path = make_bundle(args.workdir / f"bundle-{args.items}", args.items, args.seed)
    results = run(path, args.repeats)
    return publish("load", argv, results,
                   lambda c: to_markdown(results, args.items, c), args.name, args.out)


if __name__ == "__main__":
    sys.exit(main())
