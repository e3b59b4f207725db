"""Which overrule rule: the served one against the broader variant, on validation data only.

The served rule (`docs/prompts.md`, "A filter overrules a contradicting reading") ranks by the
backbone when the exclusions cover every value read *and* one of them is read as asked for.
The broader variant ("covered") drops the second condition: refusals read right and excluded
rank by the backbone too. Both, and no rule at all, on the grammar's validation frames and the
validation users (no held-out frame, no test case), hybrid and auto on refusals.

    python benches/overrule_variants.py --data ../shared/data/ml-1m --format movielens-1m \\
        --run ml1m-sasrec=runs/ml1m-sasrec [--name overrule-variants-ml1m]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, publish, table

VARIANTS = ("none", "covered", "contradicted")


def measure(run: Path, data: Path, fmt: str) -> dict[str, Any]:
    """{family: {"cases", "hybrid": {variant: ratio}, "auto": {variant: ratio}}}."""
    from dpr.evaluate.protocols import evaluate_steering
    from dpr.models.intent import DETECT_THRESHOLD
    from dpr.train.pipeline import (
        dpr_auto,
        dpr_overrules,
        dpr_steerer,
        grammar_renderer,
        steering_cases,
    )
    from overrule import load_run

    model, dataset, grammar, inputs = load_run(run, data, fmt)
    count = model.intent.num_values
    position = {pair: j for j, pair in enumerate(model.intent.values)}

    def covered(prompts, excluded):
        features = np.asarray(inputs(list(prompts)))[:, -2 * count:]
        read = np.maximum(features[:, :count], features[:, count:]) >= DETECT_THRESHOLD
        cover = np.zeros_like(read)
        for family, values in excluded.items():
            cover[:, [position[(family, v)] for v in model.values_of(family)]] |= values
        return read.any(axis=1) & ~(read & ~cover).any(axis=1)

    steer = dpr_steerer(model, inputs)
    out: dict[str, Any] = {}
    for family in model.families:
        cases = steering_cases(model, dataset, family, "valid")
        result = evaluate_steering(
            cases, {v: steer for v in VARIANTS}, render=grammar_renderer(grammar, "valid"),
            protocols=("negative",), auto={v: dpr_auto(model, inputs, family) for v in VARIANTS},
            overrules={"covered": covered, "contradicted": dpr_overrules(model, inputs)})
        block = result["protocols"]["negative"]
        m = block["methods"]
        base = m["hard filter"]["ndcg@10"]
        out[family] = {"cases": block["cases"],
                       **{mode: {v: m[f"{v} {mode}"]["ndcg@10"] / base for v in VARIANTS}
                          for mode in ("hybrid", "auto")}}
    return out


def to_markdown(results: dict[str, Any], command: str) -> str:
    rows = [[run, family, r["cases"], *(f"{r[mode][v]:.3f}" for mode in ("hybrid", "auto")
                                         for v in VARIANTS)]
            for run, families in results["runs"].items() for family, r in families.items()]
    header = ["run", "family", "cases", *(f"{mode}: {v}" for mode in ("hybrid", "auto")
                                          for v in VARIANTS)]
    return ("# Overrule rule variants on validation data\n\n"
            "Refusals (negative protocol), NDCG@10 ÷ the hard filter, validation frames of the "
            "grammar and validation users only. none: no rule; covered: backbone whenever the "
            "exclusions cover every value read; contradicted: the served rule (also one value "
            "read as asked for).\n\n" + table(header, rows) + "\n" + footer(results, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR")
    parser.add_argument("--name", default="overrule-variants")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"runs": {}}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        results["runs"][name] = measure(Path(folder), args.data, args.format)
    results.update(machine())
    return publish("overrule_variants", argv, results, lambda c: to_markdown(results, c),
                   args.name, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
