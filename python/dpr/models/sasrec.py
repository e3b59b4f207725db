"""SASRec: a causal self-attention encoder over the item sequence, tied input/output embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POSITION_MODES = ("from_end", "from_start")


class CausalSelfAttention(nn.Module):
    """Multi-head attention where each position sees itself and earlier positions only.

    No dropout on the attention weights: on the CPU it costs more than the rest of the block.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, dim // heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim))


class SASRecBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + FFN(LN(x)) with ReLU."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        hidden = self.dropout(F.relu(self.ffn_in(self.ffn_norm(x))))
        return x + self.dropout(self.ffn_out(hidden))


class SASRec(nn.Module):
    """Self-attentive sequential recommender (Kang & McAuley, 2018), CE-trained over all items.

    Sequences are right-padded with 0, so a real position never attends to padding and its
    output does not depend on the padding. `positions` says how positions are counted:
    "from_end" (the most recent item is position 0, as in the original left-padded SASRec, so
    the position the user vector is read at is always the same) or "from_start" (the oldest item
    in the window is position 0; models trained before `positions` existed).
    """

    kind = "sasrec"

    def __init__(self, num_items: int, *, dim: int = 64, max_len: int = 200, num_blocks: int = 2,
                 num_heads: int = 2, ffn_dim: int | None = None, dropout: float = 0.2,
                 positions: str = "from_end") -> None:
        super().__init__()
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, not {positions!r}")
        self.num_items = num_items
        self.dim = dim
        self.max_len = max_len
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim or dim
        self.dropout_rate = dropout
        self.positions = positions
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(dim, num_heads, self.ffn_dim, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item_embedding.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def hyper_parameters(self) -> dict[str, int | float | str]:
        """Everything needed to rebuild this module (and to run it outside PyTorch)."""
        return {"kind": self.kind, "num_items": self.num_items, "dim": self.dim,
                "max_len": self.max_len, "num_blocks": self.num_blocks,
                "num_heads": self.num_heads, "ffn_dim": self.ffn_dim,
                "dropout": self.dropout_rate, "positions": self.positions}

    def hidden_states(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded item ids, T <= max_len -> (B, T, dim) sequence representations."""
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        positions = torch.arange(length, device=items.device)
        if self.positions == "from_end":
            lengths = (items > 0).sum(dim=1, keepdim=True)
            positions = (lengths - 1 - positions).clamp(min=0)
        x = self.item_embedding(items) * math.sqrt(self.dim) + self.position_embedding(positions)
        x = self.embedding_dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Same as `hidden_states` (so DistributedDataParallel can wrap the module)."""
        return self.hidden_states(items)

    def item_vectors(self) -> torch.Tensor:
        """(N, dim) output embeddings of items 1..N (row r is item r+1)."""
        return self.item_embedding.weight[1:]
