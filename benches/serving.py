"""Serving timings for one bundle: load, first query, warm query (medians, one run).

    python benches/serving.py --bundle runs/ml1m-sasrec/bundle [--name ml1m-sasrec]

Prints a table and writes benches/results/serving-<name>.{md,json}. Timings on a shared machine
are noisy: read the medians and the ratios, not single values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import dpr

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["something funny, but no romance", "no horror please", "a good sci-fi movie",
           "I'd like a thriller tonight", "anything but westerns"]


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _percentile_us(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q) * 1e6)


def measure(bundle: Path, loads: int, warm_queries: int, history_len: int, seed: int
            ) -> dict[str, float | int | str]:
    rng = np.random.default_rng(seed)
    load_s, first_s, cold_s = [], [], []
    rec = None
    for i in range(loads):
        t0 = time.perf_counter()
        rec = dpr.Recommender.load(bundle)
        t1 = time.perf_counter()
        ids = rec._engine.item_ids()
        history = list(rng.choice(ids, size=history_len, replace=False))
        rec.query(history, PROMPTS[i % len(PROMPTS)] + f" #{i}", k=10)
        t2 = time.perf_counter()
        rec.query(history, f"a different prompt, number {i}", k=10)
        t3 = time.perf_counter()
        load_s.append(t1 - t0)
        first_s.append(t2 - t1)
        cold_s.append(t3 - t2)
    assert rec is not None
    ids = rec._engine.item_ids()
    histories = [list(rng.choice(ids, size=history_len, replace=False)) for _ in range(64)]
    prompt = PROMPTS[0]
    rec.query(histories[0], prompt)  # the prompt is now cached
    warm = []
    for i in range(warm_queries):
        t0 = time.perf_counter()
        rec.query(histories[i % len(histories)], prompt, k=10)
        warm.append(time.perf_counter() - t0)
    unverified = []
    for _ in range(max(1, loads // 2)):
        t0 = time.perf_counter()
        dpr.Recommender.load(bundle, verify=False)
        unverified.append(time.perf_counter() - t0)
    return {"bundle": str(bundle), "items": rec.num_items, "history_len": history_len,
            "load_ms_median": _median_ms(load_s),
            "load_no_checksum_ms_median": _median_ms(unverified),
            "first_query_ms_median": _median_ms(first_s),
            "cold_prompt_query_ms_median": _median_ms(cold_s),
            "warm_query_us_p50": _percentile_us(warm, 50),
            "warm_query_us_p99": _percentile_us(warm, 99),
            "loads": loads, "warm_queries": warm_queries,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}


def to_markdown(r: dict[str, float | int | str], command: str) -> str:
    rows = [("load (sha256 verified)", f"{r['load_ms_median']:.0f} ms"),
            ("load (no checksum)", f"{r['load_no_checksum_ms_median']:.0f} ms"),
            ("first query after load (new prompt)", f"{r['first_query_ms_median']:.1f} ms"),
            ("query with a new prompt", f"{r['cold_prompt_query_ms_median']:.1f} ms"),
            ("warm query p50 (cached prompt)", f"{r['warm_query_us_p50']:.0f} µs"),
            ("warm query p99 (cached prompt)", f"{r['warm_query_us_p99']:.0f} µs")]
    lines = [f"# Serving timings: {r['bundle']} ({r['items']} items, history "
             f"{r['history_len']})", "", f"Command: `{command}`", "",
             "| what | median |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", f"{r['loads']} loads, {r['warm_queries']} warm queries, through the Python API "
              "(`dpr.Recommender`), single thread, k = 10."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--warm-queries", type=int, default=2000)
    parser.add_argument("--history-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = measure(args.bundle, args.loads, args.warm_queries, args.history_len, args.seed)
    command = (f"python benches/serving.py --bundle {args.bundle}"
               + (f" --name {args.name}" if args.name else ""))
    markdown = to_markdown(result, command)
    print(markdown)
    if args.name:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"serving-{args.name}.md").write_text(markdown, encoding="utf-8")
        (RESULTS / f"serving-{args.name}.json").write_text(json.dumps(result, indent=1) + "\n",
                                                           encoding="utf-8")


if __name__ == "__main__":
    main()
