"""Where the intent read-out misreads: accuracy by opener (hedge), by context tail and by
frame, over bundles side by side, with each run's held-out steering figures.

Renders every frame of a split for every value of each steered family, reads it with the
bundle's `Recommender.interpret` (the served Rust read-out) and counts exact readings (every
labelled value with its polarity, nothing else). The runs' `steering.json` (written by
`dpr train`) gives the held-out protocol figures beside them.

    python benches/reading_breakdown.py --name shape-twins \
        old=runs/ml1m-sasrec-rng new=runs/ml1m-sasrec-shape
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import dpr
from dpr.prompts import Grammar, Intent

RESULTS = Path(__file__).parent / "results"
POLARITY = {"asked": "positive", "refused": "negative"}


def readings(recommender: dpr.Recommender, grammar: Grammar, split: str, repeats: int,
             seed: int) -> dict[tuple[str, ...], list[bool]]:
    """Exact-reading outcomes keyed by (family, polarity, facet, facet value)."""
    rng = np.random.default_rng(seed)
    hedges = [h for h in grammar.hedges.get(split, ()) if h]
    contexts = [c for c in grammar.contexts.get(split, ()) if c]
    out: dict[tuple[str, ...], list[bool]] = defaultdict(list)
    families = [f for f in recommender.attributes if f in grammar.families]
    for family in families:
        values = list(recommender.attributes[family])
        for polarity, kind in POLARITY.items():
            frames = grammar.frames_of(split, polarity, family=family)
            for frame in tqdm(frames, desc=f"{family} {polarity}", leave=False):
                for value in values:
                    for _ in range(repeats):
                        rendering = grammar.render(Intent(kind, value, family=family), rng,
                                                   split=split, frame=frame.id)
                        got = {(r.attribute, r.value, r.polarity)
                               for r in recommender.interpret(rendering.text)}
                        right = got == set(rendering.labels)
                        text = rendering.text.lower()
                        hedge = next((h.strip() for h in hedges
                                      if text.startswith(h.lower().strip())), "(none)")
                        context = next((c.strip() for c in contexts
                                        if c.strip().lower() in text), "(none)")
                        for facet, level in (("all", ""), ("opener", hedge),
                                             ("context", context), ("frame", frame.id)):
                            out[family, polarity, facet, level].append(right)
    return out


def steering_figures(run: Path) -> dict[str, float]:
    """Held-out protocol figures of a run's steering.json (NaN where absent)."""
    path = run / "steering.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    figures: dict[str, float] = {}
    for key, label in (("heldout_frames", "genre"), ("heldout_frames_decade", "decade")):
        block = report.get(key, {}).get("protocols")
        if not block:
            continue
        pos, neg = block["positive"]["methods"], block["negative"]["methods"]
        com, std = block["compound"]["methods"], block["standard"]["methods"]
        figures[f"{label} positive: soft ÷ pre-filter"] = (
            pos["dpr soft"]["ndcg@10"] / pos["pre-filter"]["ndcg@10"])
        figures[f"{label} positive: asked share (soft)"] = pos["dpr soft"]["genre_share@10"]
        figures[f"{label} refused: forbidden share (soft)"] = neg["dpr soft"]["genre_share@10"]
        figures[f"{label} refused: auto ÷ hard filter"] = (
            neg["dpr auto"]["ndcg@10"] / neg["hard filter"]["ndcg@10"])
        if "dpr soft" in com:
            figures[f"{label} compound: asked / refused share (soft)"] = (
                com["dpr soft"]["genre_share@10"], com["dpr soft"]["avoid_share@10"])
        figures[f"{label} neutral ÷ backbone"] = (
            std["dpr neutral"]["ndcg@10"] / std["backbone"]["ndcg@10"])
    cross = report.get("heldout_cross_family", {}).get("protocols", {})
    for block in cross.values():
        methods = block.get("methods", {})
        soft = methods.get("dpr soft", {})
        if "avoid_share@10" in soft:
            figures["cross-family compound: refused share (soft)"] = soft["avoid_share@10"]
    return figures


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return " / ".join(f"{v:.3f}" for v in value)
    return f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="name=run folder (with bundle/ and steering.json)")
    parser.add_argument("--name", required=True, help="report name under benches/results/")
    parser.add_argument("--split", default="heldout", choices=["train", "valid", "heldout"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.runs)
    grammar = Grammar.load()
    tables = {name: readings(dpr.Recommender.load(Path(run) / "bundle"), grammar, args.split,
                             args.repeats, args.seed) for name, run in runs.items()}
    names = list(runs)
    lines = [f"# Intent read-out by opener, context and frame: {', '.join(names)}", "",
             f"{args.split} frames, every value of each steered family, {args.repeats} "
             "renderings each; a reading is right when it names every labelled value with "
             "its polarity and nothing else. Made by `python benches/reading_breakdown.py "
             f"--name {args.name} " + " ".join(args.runs) + "`.", ""]
    figures = {name: steering_figures(Path(run)) for name, run in runs.items()}
    keys = list(dict.fromkeys(k for f in figures.values() for k in f))
    if keys:
        lines += ["## Held-out steering (test split, k = 10)", "",
                  "| measure | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for key in keys:
            lines.append(f"| {key} | " + " | ".join(
                _cell(figures[n][key]) if key in figures[n] else "–" for n in names) + " |")
        lines.append("")
    facets = sorted({k for t in tables.values() for k in t if k[2] != "frame"})
    lines += ["## Read-out accuracy", "",
              "| family | polarity | facet | level | " + " | ".join(names) + " | cases |",
              "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for key in facets:
        cells = [f"{np.mean(tables[n][key]):.3f}" if key in tables[n] else "–" for n in names]
        cases = len(next(tables[n][key] for n in names if key in tables[n]))
        lines.append(f"| {' | '.join(key)} | " + " | ".join(cells) + f" | {cases} |")
    frames = sorted({k for t in tables.values() for k in t if k[2] == "frame"})
    lines += ["", "## By frame", "",
              "| family | polarity | frame | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for key in frames:
        cells = [f"{np.mean(tables[n][key]):.2f}" if key in tables[n] else "–" for n in names]
        lines.append(f"| {key[0]} | {key[1]} | {key[3]} | " + " | ".join(cells) + " |")
    out = RESULTS / f"{args.name}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
