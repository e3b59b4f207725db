"""The `dpr` command: quickstart and train."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRAIN_EXTRA_HINT = 'training needs the train extra: pip install "dpr[train]"'


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dpr` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ModuleNotFoundError as error:
        if error.name in {"torch", "tqdm", "matplotlib"}:
            print(f"dpr: {TRAIN_EXTRA_HINT} ({error.name} is missing)", file=sys.stderr)
            return 2
        raise
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"dpr: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    quick = commands.add_parser("quickstart", help="train and evaluate on the built-in synthetic "
                                "catalogue (no download)")
    quick.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--max-epochs", type=int, default=40)
    quick.set_defaults(handler=_quickstart)

    train = commands.add_parser("train", help="train a backbone on a dataset folder")
    train.add_argument("--data", type=Path, required=True, help="dataset folder")
    train.add_argument("--format", required=True,
                       choices=["movielens-1m", "movielens-100k", "csv", "synthetic"])
    train.add_argument("--backbone", choices=["sasrec", "gru4rec"], default="sasrec")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--min-rating", type=float, default=None,
                       help="keep ratings >= this (movielens-1m default: 4)")
    train.add_argument("--k-core", type=int, default=5)
    train.add_argument("--dim", type=int, default=64)
    train.add_argument("--max-len", type=int, default=200)
    train.add_argument("--blocks", type=int, default=2, help="SASRec blocks")
    train.add_argument("--heads", type=int, default=2, help="SASRec attention heads")
    train.add_argument("--dropout", type=float, default=0.2)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--max-epochs", type=int, default=200)
    train.add_argument("--patience", type=int, default=10)
    train.add_argument("--max-minutes", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--no-resume", action="store_true",
                       help="start over even if --out holds a checkpoint")
    train.set_defaults(handler=_train)
    return parser


def _backbone_args(args: argparse.Namespace) -> dict[str, Any]:
    common = {"dim": args.dim, "max_len": args.max_len, "dropout": args.dropout}
    if args.backbone == "sasrec":
        return {**common, "num_blocks": args.blocks, "num_heads": args.heads}
    return common


def _train(args: argparse.Namespace) -> int:
    from dpr.data import load_dataset
    from dpr.train import BackboneTrainConfig
    from dpr.train.experiment import run_backbone_experiment

    dataset = load_dataset(args.data, args.format, min_rating=args.min_rating, k_core=args.k_core)
    print(_describe(dataset.report))
    config = BackboneTrainConfig(lr=args.lr, batch_size=args.batch_size,
                                 max_epochs=args.max_epochs, patience=args.patience,
                                 max_minutes=args.max_minutes, seed=args.seed, device=args.device)
    if args.no_resume:
        (args.out / "backbone_last.pt").unlink(missing_ok=True)
    report = run_backbone_experiment(dataset, args.backbone, config, args.out,
                                     **_backbone_args(args))
    print(_table([(args.backbone, report["test"]),
                  ("most popular", report["most_popular"]["test"])]))
    print(f"{report['training']['epochs']} epochs in {report['training']['seconds']:.0f} s "
          f"({report['training']['stopped_because']}); written to {args.out}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from dpr.data import synthetic_dataset
    from dpr.train import BackboneTrainConfig
    from dpr.train.experiment import run_backbone_experiment

    dataset = synthetic_dataset(seed=args.seed)
    print(f"synthetic catalogue: {_describe(dataset.report)}")
    config = BackboneTrainConfig(lr=2e-3, max_epochs=args.max_epochs, patience=5,
                                 seed=args.seed)
    rows, popular = [], None
    for kind in ("sasrec", "gru4rec"):
        print(f"training {kind} ...")
        report = run_backbone_experiment(dataset, kind, config, args.out / kind, dim=64,
                                         max_len=50)
        rows.append((kind, report["test"]))
        popular = report["most_popular"]["test"]
    rows.append(("most popular", popular))
    print(_table(rows))
    print(f"models, metrics.json and training curves are in {args.out}/")
    return 0


def _describe(report: dict[str, Any]) -> str:
    return (f"{report['users']} users, {report['items']} items, "
            f"{report['interactions']} interactions")


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Test metrics as an aligned text table (history masked from the ranking)."""
    lines = [f"{'model':<14}{'NDCG@10':>10}{'Recall@10':>11}{'MRR@10':>9}"]
    for name, m in rows:
        lines.append(f"{name:<14}{m['ndcg@10']:>10.4f}{m['recall@10']:>11.4f}{m['mrr@10']:>9.4f}")
    masked = all(m.get("history_masked", True) for _, m in rows)
    lines.append(f"(test split, full ranking over all items, history "
                 f"{'masked' if masked else 'not masked'})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
