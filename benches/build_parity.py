"""Do two builds of dpr serve the same rankings? Dump, then compare.

A refactor must not change what users get. `dump` runs a fixed, seeded set of queries (random
histories from the bundle's catalogue; no prompt, requests, refusals, compounds; every mode;
include/exclude filters; `query_batch`; `interpret`) through whichever `dpr` is importable and
writes every answer to JSON. `compare` reads two dumps and reports identical top-k lists, the
largest score difference and any differing `interpret` reading.

    PYTHONPATH=old/python python benches/build_parity.py dump runs/x/bundle old.json
    PYTHONPATH=new/python python benches/build_parity.py dump runs/x/bundle new.json
    python benches/build_parity.py compare old.json new.json

`latency` times warm queries (prompt vector cached) and cold prompts (never seen) through the
importable build and prints one JSON line; run it for both builds alternately, several rounds,
and compare medians.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

PROMPTS = ["", "Something funny tonight.", "No horror please.", "Spare me the dramas.",
           "A comedy, but no romance.", "I'd like action; thrillers are off the table.",
           "Explosions and car chases.", "Dealer's choice."]


def dump(bundle: Path, out: Path, users: int, seed: int, index: str) -> None:
    import numpy as np

    from dpr import Recommender

    rec = Recommender.load(bundle, index=index)  # type: ignore[arg-type]
    ids = json.loads((bundle / "items.json").read_text("utf-8"))["ids"]
    values = rec.attributes.get("genre", [])
    rng = random.Random(seed)
    histories = [rng.sample(ids, rng.randint(1, min(60, len(ids) - 1))) for _ in range(users)]
    answers: list[dict[str, Any]] = []
    for u, history in enumerate(histories):
        for prompt in PROMPTS:
            for mode in ("auto", "soft", "hard"):
                hits = rec.query(history, prompt, k=20, mode=mode)
                answers.append({"user": u, "prompt": prompt, "mode": mode,
                                "ids": [h.item_id for h in hits],
                                "scores": [h.score for h in hits]})
            if values:
                filters = {"include": {"genre": [values[u % len(values)]]},
                           "exclude": {"genre": [values[(u + 3) % len(values)]]}}
                hits = rec.query(history, prompt, k=20, mode="hybrid", **filters)
                answers.append({"user": u, "prompt": prompt, "mode": "hybrid",
                                "ids": [h.item_id for h in hits],
                                "scores": [h.score for h in hits]})
    found, scores = rec.query_batch(histories, PROMPTS[2], k=20)
    batch = {"ids": np.asarray(found).tolist(), "scores": np.asarray(scores).tolist()}
    readings = {p: [list(r) for r in rec.interpret(p)] for p in PROMPTS if p}
    out.write_text(json.dumps({"bundle": f"{bundle} (index={index})", "answers": answers,
                               "batch": batch, "interpret": readings}))
    print(f"{len(answers)} queries from {bundle} -> {out}")


def latency(bundle: Path, queries: int, seed: int) -> None:
    import statistics
    import time

    from dpr import Recommender

    rec = Recommender.load(bundle)
    ids = json.loads((bundle / "items.json").read_text("utf-8"))["ids"]
    rng = random.Random(seed)
    histories = [rng.sample(ids, 50) for _ in range(queries)]
    rec.query(histories[0], PROMPTS[4])
    warm = []
    for history in histories:
        start = time.perf_counter()
        rec.query(history, PROMPTS[4], k=10)
        warm.append(time.perf_counter() - start)
    cold = []
    for i in range(min(queries, 60)):
        start = time.perf_counter()
        rec.query(histories[i], f"{PROMPTS[4]} ({i} {seed})", k=10)
        cold.append(time.perf_counter() - start)
    print(json.dumps({"warm_p50_us": statistics.median(warm) * 1e6,
                      "cold_p50_us": statistics.median(cold) * 1e6}))


def compare(old_path: Path, new_path: Path) -> int:
    old, new = (json.loads(p.read_text()) for p in (old_path, new_path))
    same = 0
    worst = 0.0
    for a, b in zip(old["answers"], new["answers"], strict=True):
        same += a["ids"] == b["ids"]
        worst = max([worst, *(abs(x - y) for x, y in zip(a["scores"], b["scores"], strict=False))])
    batch_same = old["batch"]["ids"] == new["batch"]["ids"]
    readings_same = old["interpret"] == new["interpret"]
    n = len(old["answers"])
    print(f"{old['bundle']}: identical top-20 {same}/{n}, max |score diff| {worst:.2e}, "
          f"query_batch identical {batch_same}, interpret identical {readings_same}")
    return 0 if same == n and batch_same and readings_same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("dump")
    d.add_argument("bundle", type=Path)
    d.add_argument("out", type=Path)
    d.add_argument("--users", type=int, default=25)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--index", choices=("auto", "exact", "hnsw"), default="auto")
    t = commands.add_parser("latency")
    t.add_argument("bundle", type=Path)
    t.add_argument("--queries", type=int, default=2000)
    t.add_argument("--seed", type=int, default=0)
    c = commands.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    if args.command == "dump":
        dump(args.bundle, args.out, args.users, args.seed, args.index)
        return 0
    if args.command == "latency":
        latency(args.bundle, args.queries, args.seed)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
