"""GRU4Rec: a recurrent encoder over the item sequence, tied input/output embeddings."""

from __future__ import annotations

import torch
from torch import nn


class GRU4Rec(nn.Module):
    """Session-based GRU recommender (Hidasi et al., 2016) with the CE-over-all-items recipe.

    Sequences are right-padded with 0, so the state at a real position never saw padding.
    """

    kind = "gru4rec"

    def __init__(self, num_items: int, *, dim: int = 64, max_len: int = 200,
                 num_layers: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_items = num_items
        self.dim = dim
        self.max_len = max_len
        self.num_layers = num_layers
        self.dropout_rate = dropout
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.input_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(dropout)
        nn.init.normal_(self.item_embedding.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def hyper_parameters(self) -> dict[str, int | float | str]:
        """Everything needed to rebuild this module (and to run it outside PyTorch)."""
        return {"kind": self.kind, "num_items": self.num_items, "dim": self.dim,
                "max_len": self.max_len, "num_layers": self.num_layers,
                "dropout": self.dropout_rate}

    def hidden_states(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded item ids -> (B, T, dim) GRU outputs."""
        if items.shape[1] > self.max_len:
            raise ValueError(f"sequence length {items.shape[1]} exceeds max_len {self.max_len}")
        outputs, _ = self.gru(self.input_dropout(self.item_embedding(items)))
        return self.output_dropout(outputs)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Same as `hidden_states` (so DistributedDataParallel can wrap the module)."""
        return self.hidden_states(items)

    def item_vectors(self) -> torch.Tensor:
        """(N, dim) output embeddings of items 1..N (row r is item r+1)."""
        return self.item_embedding.weight[1:]
