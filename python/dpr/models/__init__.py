"""PyTorch models: SASRec and GRU4Rec backbones (and, on top of them, the DPR steering model)."""

from dpr.models.backbone import (
    BACKBONES,
    Backbone,
    build_backbone,
    last_positions,
    make_backbone,
    user_vectors,
)
from dpr.models.dpr import DPR, load_dpr
from dpr.models.gru4rec import GRU4Rec
from dpr.models.sasrec import SASRec
from dpr.models.steering import DPRSteering, SteeringOutput

__all__ = [
    "BACKBONES",
    "DPR",
    "Backbone",
    "DPRSteering",
    "GRU4Rec",
    "SASRec",
    "SteeringOutput",
    "build_backbone",
    "last_positions",
    "load_dpr",
    "make_backbone",
    "user_vectors",
]
