"""Ranges on one split, several runs side by side: the range protocols (`dpr.evaluate.ranges`)
and how the intent read-out reads each range form (per relative frame and era: the share of a
range's values read with its polarity, of values outside it read at all, and of its values read
with the opposite polarity).

    python benches/range_reading.py NAME=RUN [NAME=RUN ...] --data ../shared/data/ml-1m \
        --format movielens-1m --split heldout --out range-reading

writes benches/results/<out>.md (one column group per run).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dpr.data import load_dataset
from dpr.models import load_dpr
from dpr.models.intent import ASKED, NONE, REFUSED
from dpr.prompts import Grammar, Intent
from dpr.train.pipeline import MODEL_FILE, evaluate_ranges
from dpr.train.steering import grammar_for
from dpr.train.tower import PromptInputs, label_matrix

RESULTS = Path(__file__).parent / "results"


def load_run(run: Path, dataset) -> tuple[Any, PromptInputs, Grammar]:
    """A run's model, its frozen prompt tower, and the grammar knowing the catalogue."""
    model, extra = load_dpr(run / MODEL_FILE)
    grammar = grammar_for(Grammar.load(), dataset.items, model.families)
    return model, PromptInputs(run / extra["prompt_encoder"], model.intent), grammar


def reading_by_form(model, inputs: PromptInputs, grammar: Grammar, family: str, split: str,
                    per_polarity: int, seed: int = 0
                    ) -> dict[str, tuple[int, float, float, float]]:
    """Form id -> (prompts, in-range values read right, outside values read, flipped)."""
    rng = np.random.default_rng(seed)
    renderings = []
    for polarity, kind in (("asked", "positive"), ("refused", "negative")):
        spans = grammar.ranges_of(family, split, polarity)
        for _ in range(per_polarity):
            span = spans[int(rng.integers(len(spans)))]
            renderings.append(grammar.render(Intent(kind, span[0], family=family, values=span),
                                             rng, split=split))
    probs = inputs.readings([r.text for r in renderings])
    columns = list(model.columns)
    labels = label_matrix(renderings, columns).numpy()
    read = np.where(probs[..., ASKED] >= 0.5, ASKED,
                    np.where(probs[..., REFUSED] >= 0.5, REFUSED, NONE))
    mine = [j for j, (f, _) in enumerate(columns) if f == family]
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for rendering, label, guess in zip(renderings, labels[:, mine], read[:, mine], strict=True):
        inside = label != NONE
        wanted = label[inside][0]
        rows[rendering.frame.split("/")[0]].append((
            float((guess[inside] == wanted).mean()),
            float(((guess != NONE) & ~inside).sum() / max((~inside).sum(), 1)),
            float((guess[inside] == ASKED + REFUSED - wanted).mean())))
    return {form: (len(v), *np.mean(v, axis=0)) for form, v in sorted(rows.items())}


def protocol_row(name: str, model, inputs: PromptInputs, grammar: Grammar, dataset,
                 family: str, split: str) -> str:
    """The range protocols of one run, as a table row."""
    blocks = evaluate_ranges(model, inputs, dataset, grammar, family, split=split)["protocols"]
    pos, neg = blocks["range positive"], blocks["range negative"]
    p, n = pos["methods"], neg["methods"]

    def ratio(methods: dict, top: str, bottom: str) -> float:
        return methods[top]["ndcg@10"] / methods[bottom]["ndcg@10"]

    share = "genre_share@10"
    return (f"| {name} | {ratio(p, 'dpr soft', 'pre-filter'):.3f} | {p['dpr soft'][share]:.3f} "
            f"({p['backbone'][share]:.3f}) | {n['dpr soft'][share]:.3f} / "
            f"{n['dpr auto'][share]:.3f} ({n['backbone'][share]:.3f}) | "
            f"{ratio(n, 'dpr auto', 'hard filter'):.3f} / "
            f"{ratio(n, 'dpr hybrid', 'hard filter'):.3f} | {pos['interpret']:.3f} / "
            f"{pos['interpret_overlap']:.3f}; "
            f"{neg['interpret']:.3f} / {neg['interpret_overlap']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--family", default="decade")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--prompts", type=int, default=400, help="per polarity")
    parser.add_argument("--out", default="range-reading")
    args = parser.parse_args()
    dataset = load_dataset(args.data, args.format)
    tables, protocols = {}, []
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        model, inputs, grammar = load_run(Path(folder), dataset)
        tables[name] = reading_by_form(model, inputs, grammar, args.family, args.split,
                                       args.prompts)
        protocols.append(protocol_row(name, model, inputs, grammar, dataset, args.family,
                                      args.split))
    forms = sorted({f for t in tables.values() for f in t})
    lines = [f"# {args.family} ranges on the {args.split} split", "",
             "Range protocols (test split, full ranking, k = 10; shares of the top-10 in the "
             "range):", "",
             "| run | asked: soft ÷ pre-filter | asked share soft (backbone) | refused share "
             "soft / auto (backbone) | refused: auto / hybrid ÷ hard filter | interpret exact / "
             "overlap, asked; refused |", "|---|---|---|---|---|---|", *protocols, "",
             "How the read-out reads each form:", "",
             f"{2 * args.prompts} prompts per run ({args.prompts} asked, {args.prompts} refused "
             f"ranges). Per form: the share of the range's values read with the range's "
             "polarity (right), of values outside the range read at all (outside), and of the "
             "range's values read with the opposite polarity (flipped). Produced by `python "
             f"benches/range_reading.py {' '.join(args.runs)} --data {args.data} --format "
             f"{args.format} --split {args.split} --out {args.out}`.", "",
             "| form | " + " | ".join(f"{n}: n / right / outside / flipped" for n in tables)
             + " |", "|---|" + "---|" * len(tables)]
    for form in forms:
        cells = []
        for table in tables.values():
            n, right, outside, flipped = table.get(form, (0, np.nan, np.nan, np.nan))
            cells.append(f"{n} / {right:.2f} / {outside:.2f} / {flipped:.2f}")
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
