"""Stage 1: train a SASRec/GRU4Rec backbone on next-item prediction, early-stopped on validation."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from dpr.data.dataset import LeaveOneOutSplit
from dpr.evaluate.ranking import evaluate_scorer
from dpr.models.backbone import Backbone, build_backbone
from dpr.train import distributed
from dpr.train.batches import bucketed_batches, next_item_batch
from dpr.train.checkpoint import load_checkpoint, save_atomic
from dpr.train.config import BackboneTrainConfig, resolve_device
from dpr.train.losses import full_softmax_cross_entropy
from dpr.train.scoring import backbone_scorer

LAST_CHECKPOINT = "backbone_last.pt"
BEST_CHECKPOINT = "backbone.pt"
METRIC = "ndcg@10"


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    valid: dict[str, float]
    seconds: float


@dataclass
class BackboneTrainResult:
    """The best backbone (by validation NDCG@10) and how training went."""

    backbone: Backbone
    best_epoch: int
    best_valid: dict[str, Any]
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    stopped_because: str = ""

    @property
    def epochs(self) -> int:
        return len(self.history)


def cross_entropy_loss(backbone: Backbone, inputs: torch.Tensor, targets: torch.Tensor,
                       model: torch.nn.Module | None = None, *,
                       exclude_seen: bool = False, smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-item cross-entropy over all items, at every labelled position.

    `model` is the backbone as wrapped for training (e.g. by DistributedDataParallel). With
    `exclude_seen`, the items a position has already seen are left out of its softmax, as
    evaluation leaves the history out of the ranking. `smoothing` is the label smoothing ε.
    """
    hidden = (model or backbone)(inputs)
    labelled = targets > 0
    excluded = seen_items(inputs, targets) if exclude_seen else None
    return full_softmax_cross_entropy(hidden[labelled], backbone.item_vectors(),
                                      targets[labelled] - 1, excluded, smoothing)


def seen_items(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, item indices) of the items each labelled position has seen, rows ascending.

    Rows number the labelled positions (`targets > 0`) in row-major order; inputs and targets
    are right-padded (B, T) batches. A seen item equal to the position's target (a repeat) is
    kept in the softmax.
    """
    labelled = targets > 0
    steps = inputs.shape[1]
    earlier = torch.ones(steps, steps, dtype=torch.bool, device=inputs.device).tril()
    pairs = (earlier & labelled[:, :, None] & (inputs > 0)[:, None, :]).nonzero()
    user, position, seen = pairs.unbind(1)
    row_of = labelled.flatten().cumsum(0) - 1
    rows = row_of[user * steps + position]
    items = inputs[user, seen]
    keep = items != targets[user, position]
    return rows[keep], items[keep] - 1


def train_backbone(backbone: Backbone, split: LeaveOneOutSplit, config: BackboneTrainConfig,
                   out_dir: str | Path | None = None, *, resume: bool = True,
                   progress: bool = True) -> BackboneTrainResult:
    """Train with AdamW on full-softmax CE; keep the weights of the best validation NDCG@10.

    With `out_dir`, the best weights go to `backbone.pt` and a resumable state to
    `backbone_last.pt` after every epoch; a later call with `resume=True` continues from it.
    """
    device = resolve_device(config.device)
    distributed.init_from_environment(device)
    torch.manual_seed(config.seed)
    backbone.to(device)
    model = distributed.wrap(backbone)
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.98))
    rng = np.random.default_rng(config.seed)
    trainable = np.flatnonzero([len(s) >= 2 for s in split.train])
    if len(trainable) == 0:
        raise ValueError("no user has two or more training items")
    valid_histories, valid_targets = split.evaluation_cases("valid")
    if len(valid_targets) == 0:
        raise ValueError("no user has a validation item (every user needs 3+ interactions)")

    averaged = (AveragedModel(backbone, multi_avg_fn=get_ema_multi_avg_fn(config.weight_average))
                if config.weight_average > 0 else None)
    evaluated: Backbone = averaged.module if averaged is not None else backbone

    state = _TrainingState(best_state=copy.deepcopy(backbone.state_dict()))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume and (out / LAST_CHECKPOINT).is_file():
        state = _restore(out / LAST_CHECKPOINT, backbone, optimizer, rng, averaged)

    started = time.perf_counter() - state.seconds
    stopped_because = "max_epochs"
    last_epoch_seconds = state.history[-1].seconds if state.history else 0.0
    for epoch in range(state.next_epoch, config.max_epochs):
        epoch_start = time.perf_counter()
        # Minutes are read at epoch boundaries, from rank 0, and extrapolated within the epoch
        # by the last epoch's length: every DDP rank then steps with the same learning rate.
        elapsed = distributed.main_value(epoch_start - started)
        last = distributed.main_value(last_epoch_seconds)

        def schedule(fraction: float, epoch: int = epoch, elapsed: float = elapsed,
                     last: float = last) -> float:
            return config.schedule_progress(epoch + fraction, elapsed + fraction * last)

        loss = _train_epoch(backbone, model, optimizer, split, trainable, rng, config, epoch,
                            schedule, progress and distributed.is_main(), averaged)
        valid = evaluate_scorer(backbone_scorer(evaluated), valid_histories, valid_targets,
                                batch_size=config.eval_batch_size)
        record = EpochRecord(epoch, loss, valid, time.perf_counter() - epoch_start)
        state.history.append(record)
        last_epoch_seconds = record.seconds
        if valid[METRIC] > state.best_valid.get(METRIC, -1.0):
            state.best_valid, state.best_epoch = valid, epoch
            state.best_state = copy.deepcopy(evaluated.state_dict())
            if out is not None and distributed.is_main():
                save_atomic({"hyper_parameters": backbone.hyper_parameters(),
                             "state_dict": state.best_state, "valid": valid, "epoch": epoch,
                             "config": config.to_dict()}, out / BEST_CHECKPOINT)
        if progress and distributed.is_main():
            tqdm.write(f"epoch {epoch:3d}  loss {loss:.4f}  valid ndcg@10 {valid[METRIC]:.4f}  "
                       f"recall@10 {valid['recall@10']:.4f}  best {state.best_valid[METRIC]:.4f}"
                       f" (epoch {state.best_epoch})")
        state.next_epoch = epoch + 1
        state.seconds = distributed.main_value(time.perf_counter() - started)  # ranks agree
        if out is not None and distributed.is_main():
            _save_last(out / LAST_CHECKPOINT, backbone, optimizer, rng, state, config, averaged)
        if epoch - state.best_epoch >= config.patience:
            stopped_because = f"no validation gain in {config.patience} epochs"
            break
        if config.max_minutes is not None and state.seconds > 60 * config.max_minutes:
            stopped_because = f"time budget of {config.max_minutes} minutes"
            break

    backbone.load_state_dict(state.best_state)
    backbone.eval()
    return BackboneTrainResult(backbone, state.best_epoch, state.best_valid, state.history,
                               time.perf_counter() - started, stopped_because)


def load_backbone(path: str | Path, device: str = "cpu") -> Backbone:
    """Rebuild the best backbone saved by `train_backbone` (a `backbone.pt` file)."""
    checkpoint = load_checkpoint(path)
    backbone = build_backbone(checkpoint["hyper_parameters"])
    backbone.load_state_dict(checkpoint["state_dict"])
    return backbone.to(device).eval()


@dataclass
class _TrainingState:
    best_state: dict[str, torch.Tensor]
    best_valid: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = -1
    next_epoch: int = 0
    seconds: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)


def _train_epoch(backbone: Backbone, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 split: LeaveOneOutSplit, trainable: np.ndarray, rng: np.random.Generator,
                 config: BackboneTrainConfig, epoch: int, schedule: Callable[[float], float],
                 progress: bool, averaged: AveragedModel | None) -> float:
    """One pass over the training users; `schedule(fraction of the epoch done)` is the
    learning-rate schedule's progress."""
    backbone.train()
    device = next(backbone.parameters()).device
    lengths = np.fromiter((min(len(s), backbone.max_len + 1) for s in split.train), dtype=np.int64,
                          count=len(split.train))
    batches = distributed.shard_batches(
        bucketed_batches(trainable, lengths, config.batch_size, rng))
    total, count = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for step, users in enumerate(bar):
        lr = config.lr_at(schedule(step / len(batches)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = next_item_batch([split.train[u] for u in users], backbone.max_len,
                                          rng if config.windows == "random" else None)
        loss = cross_entropy_loss(backbone, inputs.to(device), targets.to(device), model,
                                  exclude_seen=config.exclude_seen,
                                  smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            backbone.item_embedding.weight[0].zero_()
        if averaged is not None:
            averaged.update_parameters(backbone)
        total += loss.item()
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def _save_last(path: Path, backbone: Backbone, optimizer: torch.optim.Optimizer,
               rng: np.random.Generator, state: _TrainingState,
               config: BackboneTrainConfig, averaged: AveragedModel | None) -> None:
    save_atomic({
        "hyper_parameters": backbone.hyper_parameters(),
        "state_dict": backbone.state_dict(),
        "optimizer": optimizer.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "training": {**state.__dict__, "history": [r.__dict__ for r in state.history]},
        "config": config.to_dict(),
        "weight_average": averaged.state_dict() if averaged is not None else None,
    }, path)


def _restore(path: Path, backbone: Backbone, optimizer: torch.optim.Optimizer,
             rng: np.random.Generator, averaged: AveragedModel | None) -> _TrainingState:
    checkpoint = load_checkpoint(path)
    if checkpoint["hyper_parameters"] != backbone.hyper_parameters():
        raise ValueError(f"{path}: checkpoint was trained with {checkpoint['hyper_parameters']}, "
                         f"not {backbone.hyper_parameters()}")
    backbone.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    rng.bit_generator.state = checkpoint["numpy_rng"]
    torch.set_rng_state(checkpoint["torch_rng"])
    if averaged is not None:
        if checkpoint.get("weight_average") is None:
            raise ValueError(f"{path}: checkpoint was trained without a weight average; "
                             "resume with weight_average=0 or start over")
        averaged.load_state_dict(checkpoint["weight_average"])
    saved = dict(checkpoint["training"])
    saved["history"] = [EpochRecord(**r) for r in saved["history"]]
    return _TrainingState(**saved)
