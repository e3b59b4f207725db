"""Training: `fit` runs the whole pipeline (stage 1 backbone, prompt tower, steering, export,
evaluation); the pieces below run stage 1 alone."""

from dpr.train.backbone import BackboneTrainResult, load_backbone, train_backbone
from dpr.train.config import BackboneTrainConfig, resolve_device
from dpr.train.fit import FitResult, fit
from dpr.train.recipe import RECIPES, recipe
from dpr.train.scoring import backbone_scorer, backbone_user_vectors

__all__ = ["RECIPES", "BackboneTrainConfig", "BackboneTrainResult", "FitResult",
           "backbone_scorer", "backbone_user_vectors", "fit", "load_backbone", "recipe",
           "resolve_device", "train_backbone"]
