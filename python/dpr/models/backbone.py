"""What every backbone offers, and how to build one from its hyper-parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dpr.models.gru4rec import GRU4Rec
from dpr.models.sasrec import SASRec

BACKBONES: dict[str, type[nn.Module]] = {"sasrec": SASRec, "gru4rec": GRU4Rec}

Backbone = SASRec | GRU4Rec


def make_backbone(kind: str | None, num_items: int | None, **hyper_parameters: Any
                  ) -> Backbone:
    """A fresh backbone of `kind` ('sasrec' or 'gru4rec') over `num_items` items: the one
    backbone factory."""
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone kind {kind!r}; known: {', '.join(BACKBONES)}")
    if num_items is None:
        raise ValueError(f"a {kind} backbone needs num_items")
    return BACKBONES[kind](num_items, **hyper_parameters)


def build_backbone(hyper_parameters: dict[str, Any]) -> Backbone:
    """Rebuild a backbone from `hyper_parameters()` output (the `kind` key picks the class)."""
    params = dict(hyper_parameters)
    kind = params.pop("kind", None)
    if kind == "sasrec":
        params.setdefault("positions", "from_start")  # saved before positions were counted back
    num_items = params.pop("num_items", None)
    return make_backbone(kind, num_items, **params)


def last_positions(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, d) states and (B,) true lengths -> (B, d) state at each sequence's last item."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


def user_vectors(backbone: Backbone, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The backbone's user vector h: its state after the last real item of each sequence."""
    return last_positions(backbone.hidden_states(items), lengths)
