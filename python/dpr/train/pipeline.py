"""The whole DPR recipe on one dataset: stage 1 (backbone), stages 2-3 (steering), evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpr.data.dataset import SequenceDataset
from dpr.evaluate.protocols import Steerer, SteeringCases, evaluate_steering
from dpr.models.backbone import Backbone
from dpr.models.dpr import DPR
from dpr.models.steering import DPRSteering
from dpr.prompts import TRAIN_WORDINGS, Wordings
from dpr.train import distributed
from dpr.train.backbone import BEST_CHECKPOINT, load_backbone
from dpr.train.config import BackboneTrainConfig
from dpr.train.experiment import REPORT, run_backbone_experiment, write_json_atomic
from dpr.train.scoring import backbone_user_vectors
from dpr.train.steering import SteeringTrainConfig, train_steering

MODEL_FILE = "dpr.pt"
STEERING_REPORT = "steering.json"
Encode = Callable[[Sequence[str]], np.ndarray]


def fit_backbone(dataset: SequenceDataset, kind: str, config: BackboneTrainConfig,
                 out_dir: Path, *, progress: bool = True, **hyper_parameters: Any
                 ) -> tuple[Backbone, dict[str, Any]]:
    """Stage 1, or the finished stage 1 already in `out_dir` (its metrics.json says so)."""
    report_path = out_dir / REPORT
    if report_path.is_file() and (out_dir / BEST_CHECKPOINT).is_file():
        import json

        report = json.loads(report_path.read_text())
        backbone = load_backbone(out_dir / BEST_CHECKPOINT)
        if backbone.kind == kind and backbone.num_items == dataset.num_items:
            return backbone, report
    report = run_backbone_experiment(dataset, kind, config, out_dir, progress=progress,
                                     **hyper_parameters)
    distributed.barrier()
    return load_backbone(out_dir / BEST_CHECKPOINT), report


def steering_for(backbone: Backbone, **hyper_parameters: Any) -> DPRSteering:
    """A fresh steering head sized for `backbone`."""
    return DPRSteering(backbone.dim, **hyper_parameters)


def fit_steering(dataset: SequenceDataset, backbone: Backbone, encode: Encode,
                 config: SteeringTrainConfig, *, attribute: str = "genre",
                 wordings: Wordings = TRAIN_WORDINGS, progress: bool = True,
                 **hyper_parameters: Any) -> tuple[DPR, dict[str, Any]]:
    """Stages 2 and 3 on a trained backbone; returns the DPR model and timing/curve."""
    torch.manual_seed(config.seed)
    values = dataset.items.attribute_values(attribute)
    hyper_parameters.setdefault("attribute_dim", len(values))
    steering = steering_for(backbone, **hyper_parameters)
    started = time.perf_counter()
    result = train_steering(steering, backbone, dataset.split(), dataset.items, encode, config,
                            attribute=attribute, wordings=wordings, progress=progress)
    model = DPR(backbone, result.steering, attribute=attribute, values=values).eval()
    return model, {"config": config.to_dict(), "steering": steering.hyper_parameters(),
                   "seconds": {**result.seconds, "total": time.perf_counter() - started},
                   "curve": result.curve}


def dpr_steerer(model: DPR, encode: Encode, strength: float = 1.0) -> Steerer:
    """Adapter for the evaluation protocols: (h, prompts) -> h'."""

    dim = model.backbone.dim

    @torch.inference_mode()
    def steer(users: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        embeddings = torch.from_numpy(np.asarray(encode(list(prompts)), dtype=np.float32))
        h = torch.from_numpy(np.ascontiguousarray(users[:, :dim], dtype=np.float32))
        return model.steering(h, embeddings, strength).steered.numpy()

    return steer


def steering_cases(model_or_backbone: DPR | Backbone, dataset: SequenceDataset,
                   attribute: str = "genre", stage: str = "test") -> SteeringCases:
    """The held-out cases of `stage`, ready for evaluation.

    For a DPR model with attribute coordinates, user vectors are [h, 0] and item vectors [E, A],
    which score exactly like the backbone until a prompt moves the user.
    """
    is_dpr = isinstance(model_or_backbone, DPR)
    backbone = model_or_backbone.backbone if is_dpr else model_or_backbone
    histories, targets = dataset.split().evaluation_cases(stage)
    vectors = torch.cat([backbone_user_vectors(backbone, histories[i:i + 512])
                         for i in range(0, len(histories), 512)]).float().cpu()
    with torch.no_grad():
        items = backbone.item_embedding.weight.detach().float().cpu()
    if is_dpr and model_or_backbone.steering.attribute_dim:
        matrix, _ = dataset.items.attribute_matrix(model_or_backbone.attribute)
        items = torch.cat([items, torch.from_numpy(matrix).float()], dim=1)
        vectors = model_or_backbone.steering.extend(vectors)
    vectors, items = vectors.numpy(), items.numpy().copy()
    return SteeringCases(histories=histories, targets=targets, user_vectors=vectors,
                         item_vectors=items, catalogue=dataset.items, attribute=attribute)


def evaluate_dpr(models: dict[str, DPR], dataset: SequenceDataset, encode: Encode, *,
                 wordings: Wordings, seed: int = 0, stage: str = "test",
                 protocols: Sequence[str] = ("standard", "positive", "negative", "compound")
                 ) -> dict[str, Any]:
    """Run every protocol for one or more DPR models sharing a backbone (ablations)."""
    first = next(iter(models.values()))
    cases = steering_cases(first, dataset, first.attribute, stage)
    steerers = {name: dpr_steerer(model, encode) for name, model in models.items()}
    return evaluate_steering(cases, steerers, wordings=wordings, seed=seed, protocols=protocols)


def save_model(model: DPR, dataset: SequenceDataset, out_dir: Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Write `dpr.pt` with the item table the export step needs."""
    items = dataset.items
    attributes = {name: [list(v) for v in values] for name, values in items.attributes.items()}
    path = out_dir / MODEL_FILE
    model.save(path, {"dataset": dataset.name, "item_ids": list(items.ids),
                      "titles": list(items.titles), "attributes": attributes, **(extra or {})})
    return path


def write_steering_report(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / STEERING_REPORT
    write_json_atomic(report, path)
    return path
