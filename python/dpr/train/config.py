"""Training settings as plain dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class BackboneTrainConfig:
    """Stage 1: next-item prediction with full-softmax cross-entropy over the catalogue."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA where present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
