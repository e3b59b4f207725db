"""PyTorch models: SASRec and GRU4Rec backbones (and, on top of them, the DPR steering model)."""

from dpr.models.backbone import BACKBONES, Backbone, build_backbone, last_positions, user_vectors
from dpr.models.gru4rec import GRU4Rec
from dpr.models.sasrec import SASRec

__all__ = [
           "BACKBONES",
           "Backbone",
           "GRU4Rec",
           "SASRec",
           "build_backbone",
           "last_positions",
           "user_vectors",
]
