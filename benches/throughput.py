"""Batch throughput: `Recommender.query_batch` queries/s on 1 and on all cores.

Each thread count runs in its own process (the Rust thread pool is sized once per process,
from RAYON_NUM_THREADS), on the same histories and prompts, with the history cache off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, median_of, publish, table

PROMPTS = ["something funny, but no romance", "no horror please", "a good sci-fi movie",
           "I'd like a thriller tonight", "anything but westerns", "surprise me",
           "an animated film for the kids", "a war movie", "romantic comedy", "no dramas"]


def _worker(bundle: Path, sizes: list[int], history: int, seed: int) -> dict[str, float]:
    import dpr

    # Repeated timing rounds reuse the histories: without the history cache every query runs
    # the backbone, as a batch of new users would.
    rec = dpr.Recommender.load(bundle, history_cache=0)
    ids = list(rec._engine.item_ids())
    rng = np.random.default_rng(seed)
    out = {}
    for size in sizes:
        histories = [[ids[r] for r in rng.choice(len(ids), size=history, replace=False)]
                     for _ in range(size)]
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(size)]
        rec.query_batch(histories[:64], prompts[:64])  # prompts cached, pool started
        seconds = median_of(lambda h=histories, p=prompts: rec.query_batch(h, p, k=10), 5)
        out[str(size)] = size / seconds
    return out


def run(bundle: Path, sizes: list[int], threads: list[int], history: int, seed: int
        ) -> dict[str, Any]:
    results: dict[str, Any] = {"bundle": str(bundle), "history": history, "qps": {}}
    for count in threads:
        env = {**os.environ, "RAYON_NUM_THREADS": str(count)}
        command = [sys.executable, __file__, "--worker", "--bundle",
                   str(bundle), "--sizes", ",".join(map(str, sizes)), "--history", str(history),
                   "--seed", str(seed)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results["qps"][str(count)] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**results, **machine()}


def to_markdown(r: dict[str, Any], command: str) -> str:
    threads = list(r["qps"])
    sizes = list(r["qps"][threads[0]])
    rows = [[f"{int(size):,}"] + [f"{r['qps'][t][size]:,.0f}" for t in threads]
            + [f"{r['qps'][threads[-1]][size] / r['qps'][threads[0]][size]:.2f}×"]
            for size in sizes]
    return ("# Batch throughput: `query_batch`, queries/s (median of 5)\n\n"
            + table(["queries per call"] + [f"{t} thread(s)" for t in threads]
                    + [f"{threads[-1]} vs {threads[0]}"], rows)
            + f"\nHistories of {r['history']} items, ten prompts (cached), k = 10, mode \"auto\" "
            "(the default: steering, and each prompt's refused values excluded).\n\n"
            + footer(r, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="throughput")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        print(json.dumps(_worker(args.bundle, sizes, args.history, args.seed)))
        return 0
    results = run(args.bundle, sizes, [int(t) for t in args.threads.split(",")], args.history,
                  args.seed)
    return publish("throughput", argv, results,
                   lambda c: to_markdown(results, c), args.name, args.out)


if __name__ == "__main__":
    sys.exit(main())
