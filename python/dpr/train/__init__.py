"""Training: stage 1 (backbone), with checkpoints, progress bars and early stopping."""

from dpr.train.backbone import BackboneTrainResult, load_backbone, train_backbone
from dpr.train.config import BackboneTrainConfig, resolve_device
from dpr.train.scoring import backbone_scorer, backbone_user_vectors

__all__ = ["BackboneTrainConfig", "BackboneTrainResult", "backbone_scorer",
           "backbone_user_vectors", "load_backbone", "resolve_device", "train_backbone"]
