"""One backbone experiment end to end: train, evaluate against most-popular, save a report."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from dpr.atomic import write_json_atomic
from dpr.data.dataset import SequenceDataset
from dpr.evaluate.ranking import evaluate_popularity, evaluate_scorer
from dpr.models.backbone import make_backbone
from dpr.train import distributed
from dpr.train.backbone import BackboneTrainResult, train_backbone
from dpr.train.config import BackboneTrainConfig
from dpr.train.scoring import backbone_scorer

REPORT = "metrics.json"


def run_backbone_experiment(dataset: SequenceDataset, kind: str, config: BackboneTrainConfig,
                            out_dir: str | Path | None = None, *, progress: bool = True,
                            **hyper_parameters: Any) -> dict[str, Any]:
    """Train a backbone on the leave-one-out split; report valid/test metrics and the baseline."""
    split = dataset.split()
    torch.manual_seed(config.seed)  # the initial weights are part of the seeded run
    backbone = make_backbone(kind, dataset.num_items, **hyper_parameters)
    result = train_backbone(backbone, split, config, out_dir, progress=progress)
    test_histories, test_targets = split.evaluation_cases("test")
    report = {
        "dataset": {"name": dataset.name, **dataset.report},
        "backbone": result.backbone.hyper_parameters(),
        "training": {**config.to_dict(), "epochs": result.epochs, "best_epoch": result.best_epoch,
                     "seconds": round(result.seconds, 1), "stopped_because": result.stopped_because,
                     "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                     "cpu_count": os.cpu_count()},
        "valid": result.best_valid,
        "test": evaluate_scorer(backbone_scorer(result.backbone), test_histories, test_targets),
        "most_popular": {
            "test": evaluate_popularity(split.train, dataset.num_items, test_histories,
                                        test_targets),
            "test_unmasked": evaluate_popularity(split.train, dataset.num_items, test_histories,
                                                 test_targets, mask_history=False),
        },
        "curve": [{"epoch": r.epoch, "loss": r.loss, "valid_ndcg@10": r.valid["ndcg@10"],
                   "seconds": r.seconds} for r in result.history],
    }
    if out_dir is not None and distributed.is_main():
        write_json_atomic(report, Path(out_dir) / REPORT)
        plot_training_curve(result, Path(out_dir) / "training_curve.png")
    return report


def plot_training_curve(result: BackboneTrainResult, path: Path) -> None:
    """Loss and validation NDCG@10 per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in result.history]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(epochs, [r.loss for r in result.history], color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy", color="tab:blue")
    ndcg_axis = loss_axis.twinx()
    ndcg_axis.plot(epochs, [r.valid["ndcg@10"] for r in result.history], color="tab:orange",
                   label="valid NDCG@10")
    ndcg_axis.set_ylabel("valid NDCG@10", color="tab:orange")
    ndcg_axis.axvline(result.best_epoch, color="gray", linestyle=":", label="best")
    fig.suptitle(f"{result.backbone.kind}: best valid NDCG@10 "
                 f"{result.best_valid['ndcg@10']:.4f} at epoch {result.best_epoch}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
