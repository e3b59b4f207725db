"""Turn a trained backbone into a scorer: histories in, (B, N+1) item scores out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dpr.models.backbone import Backbone, user_vectors
from dpr.train.batches import history_batch


@torch.inference_mode()
def backbone_user_vectors(backbone: Backbone, histories: Sequence[np.ndarray],
                          device: torch.device | None = None) -> torch.Tensor:
    """(B, d) user vectors of the backbone for histories of internal item ids."""
    device = device or next(backbone.parameters()).device
    items, lengths = history_batch(histories, backbone.max_len)
    return user_vectors(backbone, items.to(device), lengths.to(device))


def backbone_scorer(backbone: Backbone):
    """A scorer for `dpr.evaluate.evaluate_scorer`; column 0 (padding) scores -inf."""

    @torch.inference_mode()
    def scorer(histories: Sequence[np.ndarray]) -> np.ndarray:
        was_training = backbone.training
        backbone.eval()
        users = backbone_user_vectors(backbone, histories)
        scores = users @ backbone.item_embedding.weight.T
        scores[:, 0] = -torch.inf
        backbone.train(was_training)
        return scores.float().cpu().numpy()

    return scorer
