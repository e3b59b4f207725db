"""Run under torchrun by tests/test_distributed.py: stages 1 (also under a time budget) and 3
with DDP on gloo.

Each rank writes the checksums of its trained parameters; DDP must keep them identical.
"""

import json
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from dpr.data import synthetic_dataset
from dpr.models import DPRSteering, make_backbone
from dpr.train import BackboneTrainConfig, distributed, train_backbone
from dpr.train.steering import SteeringTrainConfig, train_steering

PROMPT_DIM = 16


def fake_encode(prompts):
    """Deterministic stand-in for the sentence encoder (same vector for the same text)."""
    rows = [np.random.default_rng(zlib.crc32(p.encode())).normal(size=PROMPT_DIM) for p in prompts]
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dataset = synthetic_dataset(num_users=120, num_items=60, seed=1, min_length=8, max_length=16)
    split = dataset.split()
    backbone = make_backbone("gru4rec", dataset.num_items, dim=16, max_len=16)
    result = train_backbone(backbone, split, BackboneTrainConfig(max_epochs=2, batch_size=16),
                            progress=False)
    # A time budget drives the schedule and the stop: every rank must still step alike.
    budget = train_backbone(make_backbone("gru4rec", dataset.num_items, dim=16, max_len=16),
                            split, BackboneTrainConfig(max_epochs=1000, max_minutes=0.02,
                                                       patience=1000, lr_schedule="cosine",
                                                       batch_size=16), progress=False)
    values = dataset.items.attribute_values("genre")
    steering = DPRSteering(16, attribute_dim=len(values), prompt_dim=PROMPT_DIM)
    config = SteeringTrainConfig(epochs=1, positions_per_user=4, prompts_per_genre=2,
                                 prompts_per_pair=1, align_steps=5, batch_size=32)
    train_steering(steering, result.backbone, split, dataset.items, fake_encode, config,
                   progress=False)
    rank, size = distributed.world()
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": size, "epochs": result.epochs,
        "backbone": checksum(result.backbone), "steering": checksum(steering),
        "budget_epochs": budget.epochs, "budget_backbone": checksum(budget.backbone)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
