"""Which encoder layers to fine-tune: the prompt tower trained with 0 (frozen), some or all of
MiniLM's layers, scored by the intent read-out's accuracy on validation and held-out frames.

Needs no dataset: the tower learns from the grammar alone. Runs on the CPU or on CUDA
(`--device cuda`); writes benches/results/tower-layers.{md,json}.

    python benches/tower_layers.py --layers 0 2 6 --steps 600
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dpr.encoder import encoder_dir
from dpr.evaluate.frames import interpret_report
from dpr.models.intent import IntentHead
from dpr.models.tower import PromptTower
from dpr.prompts import Grammar
from dpr.train.tower import TowerTrainConfig, WeightAverage, train_tower

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 6])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=None,
                        help="time budget per run (whichever of steps and time ends first)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", type=Path, default=None, help="sentence encoder folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--name", default="tower-layers")
    parser.add_argument("--average-from", type=float, nargs="*", default=[],
                        help="also score, from the same run, the weights averaged over every "
                             "step after these shares of the run")
    args = parser.parse_args()

    grammar = Grammar.load()
    values = [("genre", v) for v in grammar.families["genre"].values]
    folder = args.encoder or encoder_dir()
    rows = []
    for layers in args.layers:
        for seed in args.seeds:
            torch.manual_seed(seed)
            tower = PromptTower(folder, IntentHead(values), tune_layers=layers)
            tower.encoder.float()
            tower.to(args.device)
            config = TowerTrainConfig(tune_layers=layers, steps=args.steps,
                                      batch_size=args.batch_size, seed=seed, device=args.device,
                                      max_minutes=args.minutes)
            averages = {start: WeightAverage(tower.trained_parameters(), start)
                        for start in args.average_from}
            started = time.perf_counter()
            report = train_tower(tower, grammar, config, progress=False,
                                 averages=list(averages.values()))
            seconds = time.perf_counter() - started

            for start, average in [(None, None), *averages.items()]:
                if average is not None:
                    average.swap()
                row = {"tune_layers": layers, "seed": seed, "steps": report["steps"],
                       "weights": "last step" if average is None
                       else f"mean after {start:.0%} ({average.count} steps)",
                       "seconds": seconds, "final_loss": report["curve"][-1]["loss"]}
                for split in ("valid", "heldout"):
                    result = interpret_report(tower.readings, grammar, values, split=split, n=3000,
                                              seed=seed)
                    row[split] = {"accuracy": result["accuracy"], "by_kind": result["by_kind"],
                                  "by_frame": result["by_frame"],
                                  "refused_read_as_asked": result["refused_read_as_asked"],
                                  "asked_read_as_refused": result["asked_read_as_refused"],
                                  "lowest": sorted(result["by_frame"].items(),
                                                   key=lambda kv: kv[1])[:6]}
                if average is not None:
                    average.swap()
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("tune_layers", "seed", "weights",
                                                      "seconds")}),
                      "valid", round(row["valid"]["accuracy"], 3), "heldout",
                      round(row["heldout"]["accuracy"], 3), row["heldout"]["by_kind"],
                      "refused->asked", round(row["heldout"]["refused_read_as_asked"], 3),
                      "asked->refused", round(row["heldout"]["asked_read_as_refused"], 3),
                      flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"cpu, {torch.get_num_threads()} threads")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"device": device, "rows": rows},
                                                          indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, device, args))


def markdown(rows: list[dict], device: str, args: argparse.Namespace) -> str:
    kinds = sorted({k for r in rows for k in r["heldout"]["by_kind"]})
    lines = ["# Prompt tower: which encoder layers to fine-tune", "",
             f"Intent read-out accuracy (the detected value-and-polarity set equals the labels) "
             f"on 3,000 generated prompts per split, after at most {args.steps} steps of "
             f"{args.batch_size} prompts" + (f" or {args.minutes} minutes" if args.minutes else "")
             + f"; device: {device}. Produced by `python benches/tower_layers.py --layers "
             f"{' '.join(map(str, args.layers))} --steps {args.steps}"
             + (f" --minutes {args.minutes}" if args.minutes else "")
             + f" --device {args.device}`.", "",
             "| tuned layers | seed | steps | weights | valid | held-out | " + " | ".join(
                 f"held-out {k}" for k in kinds) + " | train seconds |",
             "|---|---|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    for r in rows:
        lines.append(f"| {r['tune_layers']} | {r['seed']} | {r['steps']} | {r['weights']} | "
                     f"{r['valid']['accuracy']:.3f} | "
                     f"{r['heldout']['accuracy']:.3f} | " + " | ".join(
                         f"{r['heldout']['by_kind'].get(k, float('nan')):.3f}" for k in kinds)
                     + f" | {r['seconds']:.0f} |")
    lines += ["", "Lowest held-out frames per run:", ""]
    for r in rows:
        lines.append(f"- {r['tune_layers']} layers, seed {r['seed']}, {r['weights']}: " + ", ".join(
            f"{f} {a:.2f}" for f, a in r["heldout"]["lowest"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
