"""The intent read-out: what a prompt asks for and what it refuses, per attribute value.

A small MLP over the prompt tower's sentence embedding `e` gives, for each attribute value
`v` (over every steerable family, in a fixed order), three logits: the prompt does not mention
`v`, asks for it, or refuses it. Their softmax is the reading; its asked and refused
probabilities are also what the steering head reads beside `e`:

    prompt input = [e, p_asked(v_1..v_V), p_refused(v_1..v_V)]     (384 + 2V floats)

A blank prompt has `e = 0` and, by definition, a zero reading (so the whole prompt input is
zero and the steered vector is the backbone's exactly). The layout is specified in
docs/bundle.md ("intent"); the Rust core computes the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NONE, ASKED, REFUSED = 0, 1, 2
"""Class indices of the per-value softmax."""
DETECT_THRESHOLD = 0.5
"""A value is read (by `interpret`, the evaluation's accuracy and the overrule rule) when its
asked or refused probability reaches this; export writes it to dpr.json."""
POLARITY_NAMES = ("none", "asked", "refused")


class IntentHead(nn.Module):
    """`e` (B, embedding_dim) -> (B, V, 3) logits over (none, asked, refused) per value.

    `values` lists `(family, value)` pairs, the order of the V outputs.
    """

    def __init__(self, values: list[tuple[str, str]], embedding_dim: int = 384,
                 hidden: int = 256) -> None:
        super().__init__()
        if not values:
            raise ValueError("an intent head needs at least one attribute value")
        self.values = [(str(f), str(v)) for f, v in values]
        self.embedding_dim = embedding_dim
        self.hidden = hidden
        self.hidden_layer = nn.Linear(embedding_dim, hidden)
        self.output_layer = nn.Linear(hidden, 3 * len(values))

    @property
    def num_values(self) -> int:
        return len(self.values)

    @property
    def feature_dim(self) -> int:
        """Floats the head appends to the embedding: asked and refused probability per value."""
        return 2 * len(self.values)

    def hyper_parameters(self) -> dict[str, object]:
        return {"values": [list(pair) for pair in self.values],
                "embedding_dim": self.embedding_dim, "hidden": self.hidden}

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        logits = self.output_layer(F.relu(self.hidden_layer(embedding)))
        return logits.view(*embedding.shape[:-1], len(self.values), 3)

    def probabilities(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) softmax per value; all zero for a blank prompt (e = 0)."""
        probs = torch.softmax(self(embedding), dim=-1)
        blank = embedding.abs().sum(dim=-1) == 0
        return probs.masked_fill(blank[..., None, None], 0.0)

    def prompt_input(self, embedding: torch.Tensor) -> torch.Tensor:
        """`[e, p_asked, p_refused]`: what the steering head reads (zero for a blank prompt)."""
        probs = self.probabilities(embedding)
        return torch.cat([embedding, probs[..., ASKED], probs[..., REFUSED]], dim=-1)
