"""Backbone quality on real data: SASRec and GRU4Rec on ML-1M (ratings >= 4) and ML-100k.

Trains each (or reuses a finished run in --runs), then writes benches/results/backbones.{md,json}
with test NDCG@10 / Recall@10, the most-popular baseline, epochs and wall time.

    python benches/backbones.py --data-root ../shared/data --runs runs --max-minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

DATASETS = {"ml-1m": "movielens-1m", "ml-100k": "movielens-100k"}
BACKBONES = ("sasrec", "gru4rec")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", default="32,ml-1m:sasrec=16,ml-100k:sasrec=16",
                        help="batch size per run as B,DATASET:BACKBONE=B,... (a bare B is the "
                             "default for runs not named)")
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    parser.add_argument("--label-smoothing", default="0,ml-1m:sasrec=0.2,ml-100k:sasrec=0.1",
                        help="label smoothing per run, in the form of --batch-size")
    parser.add_argument("--ffn-dim", default="64,ml-1m:sasrec=256",
                        help="SASRec feed-forward width per run, in the form of --batch-size")
    parser.add_argument("--max-epochs", default="60,ml-1m:sasrec=50,ml-1m:gru4rec=70",
                        help="epochs per run, in the form of --batch-size; the cosine schedule "
                             "anneals over them, so pick what fits --max-minutes")
    parser.add_argument("--collect-only", action="store_true",
                        help="only tabulate runs that already finished")
    args = parser.parse_args()
    epochs, batch_sizes = _per_run(args.max_epochs), _per_run(args.batch_size)
    smoothing, ffn_dims = _per_run(args.label_smoothing), _per_run(args.ffn_dim)
    rows = []
    for folder, data_format in DATASETS.items():
        for kind in BACKBONES:
            out = args.runs / f"{folder.replace('-', '')}-{kind}"
            if not (out / "metrics.json").is_file() and not args.collect_only:
                ffn = ["--ffn-dim", _value(ffn_dims, folder, kind)] if kind == "sasrec" else []
                subprocess.run(["dpr", "train", *ffn, "--data", str(args.data_root / folder),
                                "--format", data_format, "--backbone", kind, "--out", str(out),
                                "--lr", str(args.lr),
                                "--batch-size", _value(batch_sizes, folder, kind),
                                "--label-smoothing", _value(smoothing, folder, kind),
                                "--max-minutes", str(args.max_minutes),
                                "--lr-schedule", args.lr_schedule,
                                "--max-epochs", _value(epochs, folder, kind),
                                "--patience", "20", "--backbone-only"], check=True)
            if (out / "metrics.json").is_file():
                rows.append(_row(folder, kind, out))
    _write(rows)


def _per_run(spec: str) -> dict[str, str]:
    """'32,ml-1m:sasrec=16' -> {'': '32', 'ml-1m:sasrec': '16'} ('' holds the default)."""
    values = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.rpartition("=")
        values[key] = value
    if "" not in values:
        raise SystemExit(f"{spec!r} names no default value (a bare number)")
    return values


def _value(values: dict[str, str], dataset: str, kind: str) -> str:
    return values.get(f"{dataset}:{kind}", values[""])


def _row(dataset: str, kind: str, out: Path) -> dict:
    report = json.loads((out / "metrics.json").read_text())
    training = report["training"]
    return {"dataset": dataset, "backbone": kind, "run": str(out),
            "test": report["test"], "valid": report["valid"],
            "most_popular": report["most_popular"],
            "epochs": training["epochs"], "best_epoch": training["best_epoch"],
            "seconds": training["seconds"], "stopped_because": training["stopped_because"],
            "lr": training["lr"], "batch_size": training["batch_size"],
            "lr_schedule": training.get("lr_schedule", "constant"),
            "label_smoothing": training.get("label_smoothing", 0.0),
            "hyper_parameters": report["backbone"],
            "data": {k: report["dataset"][k] for k in ("users", "items", "interactions")}}


def _write(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"machine": platform.machine(), "cpus": os.cpu_count()}
    (RESULTS / "backbones.json").write_text(json.dumps({"machine": machine, "runs": rows},
                                                       indent=2) + "\n")
    lines = ["# Backbones: test metrics (leave-one-out, full ranking, history masked)", "",
             "| dataset | backbone | NDCG@10 | Recall@10 | most-popular NDCG@10 | "
             "most-popular Recall@10 | epochs (best) | wall time | stopped | "
             "batch, lr, schedule, label smoothing, FFN width |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pop = r["most_popular"]["test"]
        lines.append(f"| {r['dataset']} | {r['backbone']} | {r['test']['ndcg@10']:.4f} | "
                     f"{r['test']['recall@10']:.4f} | {pop['ndcg@10']:.4f} | "
                     f"{pop['recall@10']:.4f} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['seconds'] / 60:.1f} min | {r['stopped_because']} | "
                     f"{r['batch_size']}, {r['lr']:g}, {r['lr_schedule']}, "
                     f"{r['label_smoothing']:g}, "
                     f"{r['hyper_parameters'].get('ffn_dim', '–')} |")
    lines += ["", f"Machine: {machine['cpus']} CPUs ({machine['machine']}). Produced by "
              "`python benches/backbones.py --data-root ../shared/data --runs runs`."]
    (RESULTS / "backbones.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
