"""Steering quality on real data: DPR and its ablations on a trained backbone, all protocols.

Reuses the backbone a `dpr train` run left in --run (backbone.pt), trains the steering head for
each variant (full DPR; no stage 2; no MoE = one shared expert; no router loss), evaluates every
protocol with the training wordings and the held-out wordings, and writes
benches/results/steering-<name>.{md,json,png}. With --by-wording it also scores the first variant
on each held-out positive and negative template alone (steering-<name>-by-wording.md), which
shows which wordings the model misreads.

    python benches/steering.py --data ../shared/data/ml-1m --format movielens-1m \
        --run runs/ml1m-sasrec --name ml1m-sasrec
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dpr.data import SequenceDataset, load_dataset
from dpr.encoder import PromptEncoder
from dpr.evaluate.protocols import evaluate_steering
from dpr.evaluate.report import write_steering_report
from dpr.models import DPR
from dpr.prompts import HELDOUT_WORDINGS, TRAIN_WORDINGS, Wordings
from dpr.train import load_backbone
from dpr.train.pipeline import Encode, dpr_steerer, evaluate_dpr, fit_steering, steering_cases
from dpr.train.steering import SteeringTrainConfig

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "dpr": ({}, {}),
    "no stage 2": ({"stage2": False}, {}),
    "no MoE": ({}, {"positive_experts": 1, "negative_experts": 0}),
    "no router loss": ({"router_weight": 0.0}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--run", type=Path, required=True, help="folder holding backbone.pt")
    parser.add_argument("--name", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--positions-per-user", type=int, default=40)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--by-wording", action="store_true",
                        help="also score the first variant on each held-out template alone")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    dataset = load_dataset(args.data, args.format)
    backbone = load_backbone(args.run / "backbone.pt")
    encoder = PromptEncoder()
    models, timings = {}, {}
    for name in args.variants:
        config_changes, model_changes = VARIANTS[name]
        config = SteeringTrainConfig(epochs=args.epochs,
                                     positions_per_user=args.positions_per_user,
                                     **config_changes)
        started = time.perf_counter()
        models[name], info = fit_steering(dataset, backbone, encoder.encode, config,
                                          **model_changes)
        timings[name] = {"seconds": time.perf_counter() - started, **info["seconds"],
                         "config": config.to_dict(), "curve": info["curve"]}
        print(f"{name}: stages 2-3 in {timings[name]['seconds']:.0f} s")

    report = {"dataset": dataset.name, "backbone": backbone.hyper_parameters(),
              "training": timings}
    for wordings_name, wordings in (("train_wordings", TRAIN_WORDINGS),
                                    ("heldout_wordings", HELDOUT_WORDINGS)):
        results = evaluate_dpr(models, dataset, encoder.encode, wordings=wordings)
        report[wordings_name] = results
        write_steering_report(results, RESULTS, f"steering {args.name} {wordings_name}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.by_wording:
        first = next(iter(args.variants))
        rows = by_wording(models[first], dataset, encoder.encode, HELDOUT_WORDINGS)
        report["heldout_by_wording"] = {"variant": first, "rows": rows}
        (RESULTS / f"steering-{args.name}-by-wording.md").write_text(
            by_wording_markdown(rows, f"steering {args.name}: held-out wordings one by one "
                                      f"({first})"))
    (RESULTS / f"steering-{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")


def by_wording(model: DPR, dataset: SequenceDataset, encode: Encode, wordings: Wordings
               ) -> list[dict[str, Any]]:
    """Soft-steering NDCG@10 and genre share of each positive and negative template alone."""
    cases = steering_cases(model, dataset, model.attribute)  # the backbone runs once
    steerers = {"dpr": dpr_steerer(model, encode)}
    rows = []
    for polarity in ("positive", "negative"):
        for template in wordings.of(polarity):
            single = replace(wordings, **{polarity: (template,)})
            result = evaluate_steering(cases, steerers, wordings=single, protocols=(polarity,))
            methods = result["protocols"][polarity]["methods"]
            baseline = "pre-filter" if polarity == "positive" else "hard filter"
            rows.append({"polarity": polarity, "template": template,
                         "ndcg@10": methods["dpr soft"]["ndcg@10"],
                         "genre_share@10": methods["dpr soft"]["genre_share@10"],
                         "filter_ndcg@10": methods[baseline]["ndcg@10"]})
    return rows


def by_wording_markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "", "Test cases, full ranking, k = 10, DPR soft steering. genre_share = "
             "share of the top-10 in the asked genre (positive, higher is better) or the "
             "forbidden one (negative, lower is better).", "",
             "| polarity | template | ndcg@10 | ÷ filter | genre_share@10 |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['polarity']} | {row['template']} | {row['ndcg@10']:.4f} | "
                     f"{row['ndcg@10'] / row['filter_ndcg@10']:.2f} | "
                     f"{row['genre_share@10']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
