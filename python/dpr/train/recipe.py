"""The measured stage-1 recipe of each backbone: what `dpr train` and `dpr.train.fit` use unless
told otherwise (benches/results/backbones.md holds the runs that chose them)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from dpr.train.config import BackboneTrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    # ML-1M, 2 cores: test NDCG@10 0.1441 (seed 1: 0.1429) in 50 epochs, 26 minutes.
    "sasrec": {"dim": 64, "max_len": 200, "num_blocks": 2, "num_heads": 2, "ffn_dim": 256,
               "dropout": 0.2, "lr": 2e-3, "lr_schedule": "cosine", "batch_size": 16,
               "label_smoothing": 0.2, "max_epochs": 50, "max_minutes": 30.0, "patience": 20},
    # ML-1M, 2 cores: test NDCG@10 0.1335 in 70 epochs, 26 minutes.
    "gru4rec": {"dim": 64, "max_len": 200, "dropout": 0.2, "lr": 2e-3, "lr_schedule": "cosine",
                "batch_size": 32, "label_smoothing": 0.0, "max_epochs": 70, "max_minutes": 30.0,
                "patience": 20},
}
"""Per backbone: its hyper-parameters and `BackboneTrainConfig` fields. The time budget drives
the cosine schedule too (`BackboneTrainConfig.schedule_progress`), so a machine slower than the
measured one still anneals within the 30 minutes."""

HYPER_PARAMETERS = {"sasrec": ("dim", "max_len", "num_blocks", "num_heads", "ffn_dim", "dropout"),
                    "gru4rec": ("dim", "max_len", "num_layers", "dropout")}
"""The constructor arguments of each backbone that a recipe may set."""


def recipe(kind: str, **overrides: Any) -> tuple[dict[str, Any], BackboneTrainConfig]:
    """The backbone hyper-parameters and stage-1 settings for `kind`: its measured recipe with
    `overrides` (hyper-parameters or `BackboneTrainConfig` fields) applied on top.

    A `max_minutes` of 0 or None means no time budget.
    """
    if kind not in RECIPES:
        raise ValueError(f"unknown backbone kind {kind!r}; known: {', '.join(RECIPES)}")
    settings = {**RECIPES[kind], **overrides}
    config_fields = {f.name for f in fields(BackboneTrainConfig)}
    unknown = set(settings) - config_fields - set(HYPER_PARAMETERS[kind])
    if unknown:
        raise ValueError(f"{kind}: unknown settings {sorted(unknown)}")
    if not settings.get("max_minutes"):
        settings["max_minutes"] = None
    hyper_parameters = {k: v for k, v in settings.items() if k in HYPER_PARAMETERS[kind]}
    config = BackboneTrainConfig(**{k: v for k, v in settings.items() if k in config_fields})
    return hyper_parameters, config
