"""DPR: a frozen backbone (behaviour tower) plus the steering head over prompt embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpr.models.backbone import Backbone, build_backbone, user_vectors
from dpr.models.steering import DPRSteering


class DPR(nn.Module):
    """Backbone + steering: `steered_vectors(items, lengths, prompt_embeddings)` -> h'.

    `attribute` and `values` name the item attribute the prompts talk about (e.g. genre) and its
    values in the order the training used; they travel with the model into the bundle.
    """

    def __init__(self, backbone: Backbone, steering: DPRSteering, *, attribute: str = "genre",
                 values: list[str] | None = None) -> None:
        super().__init__()
        if steering.dim != backbone.dim:
            raise ValueError(f"steering dim {steering.dim} != backbone dim {backbone.dim}")
        self.backbone = backbone
        self.steering = steering
        self.attribute = attribute
        self.values = list(values or [])

    def user_vectors(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The backbone's unsteered user vectors h."""
        return user_vectors(self.backbone, items, lengths)

    def steered_vectors(self, items: torch.Tensor, lengths: torch.Tensor,
                        prompts: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """h' for right-padded histories and (B, prompt_dim) prompt embeddings (0 = no prompt)."""
        return self.steering(self.user_vectors(items, lengths), prompts, strength).steered

    def item_vectors(self, attributes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d [+ A]) vectors that steered users are scored against (rows: items 1..N).

        With attribute coordinates, `attributes` is the (N, A) 0/1 matrix of item attributes.
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
        from dpr.train.checkpoint import save_atomic

        save_atomic({"format": "dpr-model", "version": 1,
                     "backbone": self.backbone.hyper_parameters(),
                     "steering": self.steering.hyper_parameters(),
                     "attribute": self.attribute, "values": self.values,
                     "state_dict": self.state_dict(), "extra": extra or {}}, path)


def load_dpr(path: str | Path, device: str = "cpu") -> tuple[DPR, dict[str, Any]]:
    """Rebuild a DPR model saved by `DPR.save`; returns it (in eval mode) and its `extra` dict."""
    from dpr.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    if checkpoint.get("format") != "dpr-model":
        raise ValueError(f"{path}: not a dpr model checkpoint")
    model = DPR(build_backbone(checkpoint["backbone"]), DPRSteering(**checkpoint["steering"]),
                attribute=checkpoint["attribute"], values=checkpoint["values"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint["extra"]
