"""A filter overrules a contradicting reading: hybrid and auto with and without the rule.

For each trained run, the steering protocols on the grammar's held-out frames (test split) per
steered family, side by side: the same prompts and cases, once without the rule (hybrid and auto
rank by the steered vector whatever the filters say) and once with it (`docs/prompts.md`, "A
filter overrules a contradicting reading": exclusions that cover every value the read-out finds,
one of them read as asked for, make the query rank by the unsteered backbone).

    python benches/overrule.py --data ../shared/data/ml-1m --format movielens-1m \\
        --run ml1m-sasrec=runs/ml1m-sasrec [--name overrule]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import DEFAULT_RESULTS, footer, machine, publish, table

PROTOCOLS = ("negative", "compound")
FILTERS = {"negative": "hard filter", "compound": "filter"}


def load_run(run: Path, data: Path, fmt: str) -> tuple[Any, Any, Any, Any]:
    """A trained run's model, its dataset, the grammar over its values and its prompt inputs."""
    from dpr.data import load_dataset
    from dpr.models import load_dpr
    from dpr.prompts import Grammar
    from dpr.train.steering import grammar_for
    from dpr.train.tower import PromptInputs

    model, extra = load_dpr(run / "dpr.pt")
    dataset = load_dataset(data, fmt)
    grammar = grammar_for(Grammar.load(), dataset.items, model.families)
    return model, dataset, grammar, PromptInputs(run / extra["prompt_encoder"], model.intent)


def measure(run: Path, data: Path, fmt: str) -> dict[str, Any]:
    """{family: {protocol: {method: {metric: value}}}} for one run, both ways."""
    from dpr.evaluate.protocols import evaluate_steering
    from dpr.train.pipeline import (
        dpr_auto,
        dpr_overrules,
        dpr_steerer,
        grammar_renderer,
        steering_cases,
    )

    model, dataset, grammar, inputs = load_run(run, data, fmt)
    steer = dpr_steerer(model, inputs)
    out: dict[str, Any] = {}
    for family in model.families:
        cases = steering_cases(model, dataset, family, "test")
        steerers = {"before": steer, "rule": steer}
        auto = {name: dpr_auto(model, inputs, family) for name in steerers}
        result = evaluate_steering(cases, steerers, render=grammar_renderer(grammar, "heldout"),
                                   protocols=PROTOCOLS, auto=auto,
                                   overrules={"rule": dpr_overrules(model, inputs)})
        out[family] = {p: {"cases": b["cases"], "methods": b["methods"]}
                       for p, b in result["protocols"].items()}
    return out


def to_markdown(results: dict[str, Any], command: str) -> str:
    rows = []
    for run, families in results["runs"].items():
        for family, protocols in families.items():
            for protocol, block in protocols.items():
                m = block["methods"]
                if FILTERS[protocol] not in m:  # no case (e.g. a compound within one decade)
                    continue
                base = m[FILTERS[protocol]]["ndcg@10"]
                cells = [f"{m[f'{way} {mode}']['ndcg@10'] / base:.3f}"
                         for mode in ("hybrid", "auto") for way in ("before", "rule")]
                rows.append([run, family, protocol, block["cases"], *cells])
    header = ["run", "family", "protocol", "cases", "hybrid before", "hybrid with the rule",
              "auto before", "auto with the rule"]
    return ("# A filter overrules a contradicting reading\n\n"
            "NDCG@10 ÷ the protocol's filter (the hard filter for refusals, the combined filter "
            "for compounds), held-out frames, test split, k = 10, history masked; the same "
            "prompts and cases both ways. Rule: `docs/prompts.md`.\n\n"
            + table(header, rows) + "\n" + footer(results, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR")
    parser.add_argument("--name", default="overrule")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"runs": {}}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        results["runs"][name] = measure(Path(folder), args.data, args.format)
    results.update(machine())
    return publish("overrule", argv, results, lambda c: to_markdown(results, c), args.name,
                   args.out)


if __name__ == "__main__":
    raise SystemExit(main())
