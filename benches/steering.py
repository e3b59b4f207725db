"""Steering quality on real data: DPR and its ablations on a trained backbone, every protocol,
every held-out frame alone, polarity flips and the intent read-out's accuracy.

Reuses the backbone a `dpr train` run left in --run (backbone.pt) and runs the one pipeline
(`dpr.train.fit`, stage 1 skipped) per variant: full DPR (fine-tuned prompt tower), the frozen
encoder (`--freeze-encoder`), no stage 2, no MoE (one shared expert). Each variant's run folder
is `runs/<name>-<variant>`; the reports land in benches/results/steering-<name>-<variant>-*.

    python benches/steering.py --data ../shared/data/ml-1m --format movielens-1m \
        --run runs/ml1m-sasrec --name ml1m-sasrec --variants dpr "frozen encoder"
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch

from dpr.data import load_dataset
from dpr.train import fit, load_backbone
from dpr.train.steering import SteeringTrainConfig
from dpr.train.tower import TowerTrainConfig

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # (tower changes, steering changes, model changes)
    "dpr": ({}, {}, {}),
    "frozen encoder": ({"tune_layers": 0}, {}, {}),
    "no stage 2": ({}, {"stage2": False}, {}),
    "no MoE": ({}, {}, {"positive_experts": 1, "negative_experts": 0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--run", type=Path, required=True, help="folder holding backbone.pt")
    parser.add_argument("--name", required=True)
    parser.add_argument("--variants", nargs="*", default=["dpr", "frozen encoder"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--positions-per-user", type=int, default=40)
    parser.add_argument("--tower-steps", type=int, default=600)
    parser.add_argument("--tune-layers", type=int, default=2)
    parser.add_argument("--tower-from", type=Path, default=None,
                        help="reuse the prompt tower of this run for the variants that keep "
                             "the default tower")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    dataset = load_dataset(args.data, args.format)
    backbone = load_backbone(args.run / "backbone.pt")
    summary = {}
    for variant in args.variants:
        tower_changes, steering_changes, model_changes = VARIANTS[variant]
        tower = TowerTrainConfig(tune_layers=args.tune_layers, steps=args.tower_steps,
                                 **tower_changes)
        steering = SteeringTrainConfig(epochs=args.epochs,
                                       positions_per_user=args.positions_per_user,
                                       **steering_changes)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{args.name} {variant}".lower()).strip("-")
        out = Path("runs") / slug
        out.mkdir(parents=True, exist_ok=True)
        reuse = args.tower_from if not tower_changes else None
        result = fit(dataset, out, backbone=backbone, tower=tower, steering=steering,
                     tower_from=reuse, export=False, title=f"steering {slug}",
                     steering_model=model_changes)
        run = result.steering
        assert run is not None
        RESULTS.mkdir(parents=True, exist_ok=True)
        for report in out.glob("steering-*.md"):
            shutil.copyfile(report, RESULTS / report.name)
            png = report.with_suffix(".png")
            if png.is_file():
                shutil.copyfile(png, RESULTS / png.name)
        summary[variant] = {"run": str(out), "seconds": run.report["seconds"],
                            "interpret": run.report["interpret"]["accuracy"],
                            "flips": run.report["flips"]["separated"],
                            "tower": {k: v for k, v in run.report["tower"].items()
                                      if k in ("config", "steps", "seconds", "calibration",
                                               "reused_from")}}
        print(f"{variant}: {json.dumps(summary[variant]['seconds'])}")
    (RESULTS / f"steering-{args.name}.json").write_text(json.dumps(
        {"dataset": dataset.name, "backbone": backbone.hyper_parameters(),
         "variants": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
