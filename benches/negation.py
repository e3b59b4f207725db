"""Does "no X" keep X out? Short negations and compound prompts, served from a bundle.

For each test user the probe forbids the genre that fills most of the user's unprompted top-10
(where suppression has the most to do), and measures the share of the prompted top-10 still in
that genre, per wording. Wordings marked "trained" match a training template up to case and
punctuation; the others were never trained on. Compound wordings ask for a second genre (the
one best represented after the forbidden genre) and report both shares. Serving only: Rust,
no torch.

    python benches/negation.py --bundle runs/ml1m-sasrec/bundle --data ../shared/data/ml-1m \
        --format movielens-1m --name ml1m-sasrec
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

import dpr
from dpr.data import load_dataset
from dpr.prompts import TRAIN_WORDINGS, surface_forms

RESULTS = Path(__file__).parent / "results"
NEGATIVE = (
    "no {genre} please",
    "no {genre}",
    "No {genre} movies, please.",
    "I don't want {genre}",
    "avoid {genre} movies",
    "no {genre} tonight",
    "please, no {genre}",
    "without {genre}",
    "{genre} is the last thing I want",
    "not in the mood for {genre}",
    "skip {genre}",
    "I'm so done with {genre}",
)
COMPOUND = (
    "something {genre}, but no {avoid}",
    "{genre} but not {avoid}",
    "{genre} please, no {avoid}",
    "I'd like {genre}; {avoid} is off the table",
)


def _normal(text: str) -> str:
    return re.sub(r"[^a-z{} ]", "", text.lower()).strip()


TRAINED = {_normal(t) for p in ("negative", "compound") for t in TRAIN_WORDINGS.of(p)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rec = dpr.Recommender.load(args.bundle)
    dataset = load_dataset(args.data, args.format)
    catalogue = dataset.items
    genres_of = {ext: set(g) for ext, g in zip(catalogue.ids, catalogue.attributes["genre"],
                                                strict=True)}
    histories, _ = dataset.split().evaluation_cases("test")
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(histories), size=min(args.users, len(histories)), replace=False)
    external = [[catalogue.ids[i - 1] for i in histories[u]] for u in chosen]

    plain, _ = rec.query_batch(external, "", k=10)
    forbidden, asked = [], []
    for row in plain:
        counts = Counter(g for item in row for g in genres_of[item])
        ranked = [g for g, _ in counts.most_common()]
        forbidden.append(ranked[0])
        asked.append(ranked[1] if len(ranked) > 1 else ranked[0])

    def share(rows: np.ndarray, genres: list[str]) -> float:
        return float(np.mean([sum(g in genres_of[i] for i in row) / len(row)
                              for row, g in zip(rows, genres, strict=True)]))

    def name(genre: str) -> str:
        return surface_forms(genre)[0]

    baseline = share(plain, forbidden)
    negative = []
    for template in NEGATIVE:
        prompts = [template.format(genre=name(g)) for g in forbidden]
        rows, _ = rec.query_batch(external, prompts, k=10)
        negative.append({"wording": template, "trained": _normal(template) in TRAINED,
                         "forbidden_share": share(rows, forbidden)})
    compound = []
    for template in COMPOUND:
        prompts = [template.format(genre=name(a), avoid=name(f))
                   for a, f in zip(asked, forbidden, strict=True)]
        rows, _ = rec.query_batch(external, prompts, k=10)
        compound.append({"wording": template, "trained": _normal(template) in TRAINED,
                         "asked_share": share(rows, asked),
                         "forbidden_share": share(rows, forbidden)})
    report = {"bundle": str(args.bundle), "users": len(chosen), "seed": args.seed,
              "unprompted": {"forbidden_share": baseline, "asked_share": share(plain, asked)},
              "negative": negative, "compound": compound}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"negation-{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"negation-{args.name}.md").write_text(_markdown(report, args))
    print(_markdown(report, args))


def _markdown(report: dict, args: argparse.Namespace) -> str:
    base = report["unprompted"]
    lines = [f"# Negation probe: {args.name}", "",
             f"{report['users']} test users (seed {report['seed']}); each forbids the genre "
             "that fills most of the user's unprompted top-10. Share of the top-10 in that genre "
             f"with no prompt: **{base['forbidden_share']:.3f}**; a working negation drives it "
             "towards 0.", "",
             "| negative wording | trained | forbidden share@10 |", "|---|---|---|"]
    lines += [f"| {r['wording']} | {'yes' if r['trained'] else 'no'} | "
              f"{r['forbidden_share']:.3f} |" for r in report["negative"]]
    lines += ["", "Compound: ask for the user's second genre, forbid the first "
              f"(no prompt: asked share {base['asked_share']:.3f}).", "",
              "| compound wording | trained | asked share@10 | forbidden share@10 |",
              "|---|---|---|---|"]
    lines += [f"| {r['wording']} | {'yes' if r['trained'] else 'no'} | {r['asked_share']:.3f} | "
              f"{r['forbidden_share']:.3f} |" for r in report["compound"]]
    lines += ["", f"Produced by `python benches/negation.py --bundle {args.bundle} --data "
              f"{args.data} --format {args.format} --name {args.name}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
