"""DPR: a frozen backbone (behaviour tower) plus the steering head over prompt embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpr.atomic import atomic_write
from dpr.models.backbone import Backbone, build_backbone, user_vectors
from dpr.models.intent import IntentHead
from dpr.models.steering import DPRSteering

DEFAULT_REFUSE_THRESHOLD = 0.9
"""Refused-probability from which `mode="auto"` also hard-excludes a value, until training
chooses one on validation frames."""


class DPR(nn.Module):
    """Backbone + steering: `steered_vectors(items, lengths, prompt_embeddings)` -> h'.

    `columns` names the steered attribute block's coordinates in order, as (family, value)
    pairs (e.g. every genre, then every decade); they travel with the model into the bundle.
    `intent` is the read-out head over the prompt embedding (None: a model whose steering reads
    the bare embedding); with it, the steering's prompt input is `intent.prompt_input(e)`.
    """

    def __init__(self, backbone: Backbone, steering: DPRSteering, *,
                 columns: Sequence[tuple[str, str]] = (), intent: IntentHead | None = None,
                 refuse_threshold: float = DEFAULT_REFUSE_THRESHOLD) -> None:
        super().__init__()
        if steering.dim != backbone.dim:
            raise ValueError(f"steering dim {steering.dim} != backbone dim {backbone.dim}")
        if intent is not None and steering.prompt_dim != intent.embedding_dim + intent.feature_dim:
            raise ValueError(f"steering prompt_dim {steering.prompt_dim} != embedding "
                             f"{intent.embedding_dim} + intent features {intent.feature_dim}")
        if not 0.0 < refuse_threshold <= 1.0:
            raise ValueError(f"refuse_threshold must lie in (0, 1], got {refuse_threshold}")
        self.columns = [(str(f), str(v)) for f, v in columns]
        if self.columns and len(self.columns) != steering.attribute_dim:
            raise ValueError(f"{len(self.columns)} steered columns for attribute_dim "
                             f"{steering.attribute_dim}")
        self.backbone = backbone
        self.steering = steering
        self.intent = intent
        self.refuse_threshold = float(refuse_threshold)

    @property
    def families(self) -> list[str]:
        """The steered attribute families, in column order."""
        return list(dict.fromkeys(f for f, _ in self.columns))

    def values_of(self, family: str) -> list[str]:
        """The steered values of one family, in column order."""
        return [v for f, v in self.columns if f == family]

    def prompt_input(self, embedding: torch.Tensor) -> torch.Tensor:
        """What the steering reads for sentence embeddings `e`: `[e, p_asked, p_refused]` with an
        intent head, else `e`."""
        return embedding if self.intent is None else self.intent.prompt_input(embedding)

    def user_vectors(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The backbone's unsteered user vectors h."""
        return user_vectors(self.backbone, items, lengths)

    def steered_vectors(self, items: torch.Tensor, lengths: torch.Tensor,
                        prompts: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """h' for right-padded histories and (B, prompt_dim) prompt embeddings (0 = no prompt)."""
        return self.steering(self.user_vectors(items, lengths), prompts, strength).steered

    def item_vectors(self, attributes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d [+ A]) vectors that steered users are scored against (rows: items 1..N).

        With attribute coordinates, `attributes` is the (N, A) 0/1 matrix of the items' steered
        columns (`ItemCatalogue.steered_matrix(model.families)` without row 0).
        """
        items = self.backbone.item_vectors()
        if not self.steering.attribute_dim:
            return items
        if attributes is None or attributes.shape != (items.shape[0],
                                                      self.steering.attribute_dim):
            raise ValueError("this model scores items with their attributes: pass the "
                             f"({items.shape[0]}, {self.steering.attribute_dim}) matrix")
        return torch.cat([items, attributes.to(items.dtype)], dim=1)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint `load_dpr` reads (atomically)."""
        payload = {"format": "dpr-model", "version": 1,
                   "backbone": self.backbone.hyper_parameters(),
                   "steering": self.steering.hyper_parameters(),
                   "columns": [list(c) for c in self.columns],
                   "intent": None if self.intent is None else self.intent.hyper_parameters(),
                   "refuse_threshold": self.refuse_threshold,
                   "state_dict": self.state_dict(), "extra": extra or {}}
        atomic_write(path, lambda f: torch.save(payload, f))


def load_dpr(path: str | Path, device: str = "cpu") -> tuple[DPR, dict[str, Any]]:
    """Rebuild a DPR model saved by `DPR.save`; returns it (in eval mode) and its `extra` dict."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint.get("format") != "dpr-model":
        raise ValueError(f"{path}: not a dpr model checkpoint")
    intent = checkpoint.get("intent")
    columns = checkpoint.get("columns")
    if columns is None:  # written before several families could be steered
        columns = [(checkpoint["attribute"], v) for v in checkpoint["values"]]
    model = DPR(build_backbone(checkpoint["backbone"]), DPRSteering(**checkpoint["steering"]),
                columns=[tuple(c) for c in columns],
                intent=None if intent is None else IntentHead(
                    [tuple(pair) for pair in intent["values"]], intent["embedding_dim"],
                    intent["hidden"]),
                refuse_threshold=checkpoint.get("refuse_threshold", DEFAULT_REFUSE_THRESHOLD))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint["extra"]
