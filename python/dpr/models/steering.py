"""DPR steering: prompt projector, fusion, router and a positive/negative mixture of experts.

Given the backbone's user vector h and a prompt embedding e (the frozen sentence encoder's
L2-normalised output), the steered vector is

    p  = projector(e)                                   prompt in the collaborative space
    x  = [h, p, h * p]                                  fusion features
    g  = softmax(router([e, h]))                        gates over K experts
    h' = [h, 0] + strength * sum_k g_k * expert_k(x)    modulation

The steered vector lives in the item space extended by the item attributes: items are scored
by [E_i, A_i] . h', where A_i is item i's 0/1 attribute row (e.g. its genres). The unsteered
vector [h, 0] scores exactly like the backbone, and the experts can move the user both along
collaborative directions (the first d coordinates) and along an attribute's own axis ("more
comedy", "no horror") -- which the frozen ID embeddings alone do not encode linearly. Retrieval
stays one inner-product search over item vectors.

Experts 0..P-1 form the positive group, P..K-1 the negative group. The router reads the prompt
embedding itself because polarity ("no horror" vs "horror") lives there, while stage 2 aligns
the projector's output with genre content. A zero prompt embedding (the empty prompt) leaves h
unchanged, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SteeringOutput:
    steered: torch.Tensor
    gates: torch.Tensor
    shift: torch.Tensor
    prompt: torch.Tensor


class MLP(nn.Module):
    """Linear-ReLU-Linear: the prompt projector (384 -> d) and the router ([e, h] -> K)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(in_dim, hidden)
        self.output_layer = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(F.relu(self.hidden_layer(x)))


class Experts(nn.Module):
    """K two-layer MLPs over the fusion features, evaluated together as batched matmuls."""

    def __init__(self, num_experts: int, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.in_weight = nn.Parameter(torch.empty(num_experts, hidden, in_dim))
        self.in_bias = nn.Parameter(torch.zeros(num_experts, hidden))
        self.out_weight = nn.Parameter(torch.empty(num_experts, out_dim, hidden))
        self.out_bias = nn.Parameter(torch.zeros(num_experts, out_dim))
        nn.init.kaiming_uniform_(self.in_weight.view(-1, in_dim), a=5 ** 0.5)
        nn.init.normal_(self.out_weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, K, out_dim): every expert's shift."""
        hidden = F.relu(torch.einsum("bi,khi->bkh", features, self.in_weight) + self.in_bias)
        return torch.einsum("bkh,kdh->bkd", hidden, self.out_weight) + self.out_bias


class DPRSteering(nn.Module):
    """The prompt tower and the steering head that sit on top of a frozen backbone."""

    def __init__(self, dim: int, *, attribute_dim: int = 0, prompt_dim: int = 384,
                 positive_experts: int = 2, negative_experts: int = 2,
                 projector_hidden: int = 256, expert_hidden: int = 256,
                 router_hidden: int = 128, attribute_scale: float = 10.0) -> None:
        super().__init__()
        if positive_experts < 0 or negative_experts < 0 or positive_experts + negative_experts < 1:
            raise ValueError("need at least one expert")
        self.dim = dim
        self.attribute_dim = attribute_dim
        self.attribute_scale = attribute_scale
        self.prompt_dim = prompt_dim
        self.positive_experts = positive_experts
        self.negative_experts = negative_experts
        self.projector_hidden = projector_hidden
        self.expert_hidden = expert_hidden
        self.router_hidden = router_hidden
        self.projector = MLP(prompt_dim, projector_hidden, dim)
        self.router = MLP(prompt_dim + dim, router_hidden, self.num_experts)
        self.experts = Experts(self.num_experts, 3 * dim, expert_hidden, dim + attribute_dim)
        scale = torch.ones(dim + attribute_dim)
        scale[dim:] = attribute_scale
        self.register_buffer("output_scale", scale, persistent=False)

    @property
    def num_experts(self) -> int:
        return self.positive_experts + self.negative_experts

    @property
    def steered_dim(self) -> int:
        """Width of the steered vector: item dim plus one coordinate per attribute value."""
        return self.dim + self.attribute_dim

    def hyper_parameters(self) -> dict[str, int | float]:
        """Everything needed to rebuild this module (and to run it outside PyTorch)."""
        return {"dim": self.dim, "attribute_dim": self.attribute_dim,
                "attribute_scale": self.attribute_scale, "prompt_dim": self.prompt_dim,
                "positive_experts": self.positive_experts,
                "negative_experts": self.negative_experts,
                "projector_hidden": self.projector_hidden, "expert_hidden": self.expert_hidden,
                "router_hidden": self.router_hidden}

    def forward(self, user: torch.Tensor, prompt: torch.Tensor,
                strength: float | torch.Tensor = 1.0) -> SteeringOutput:
        """(B, d) backbone vectors and (B, prompt_dim) prompt embeddings -> (B, d + A) steered."""
        projected = self.projector(prompt)
        features = torch.cat([user, projected, user * projected], dim=-1)
        gates = torch.softmax(self.router(torch.cat([prompt, user], dim=-1)), dim=-1)
        shift = (gates.unsqueeze(-1) * self.experts(features)).sum(dim=1) * self.output_scale
        has_prompt = prompt.abs().sum(dim=-1, keepdim=True) > 0
        shift = torch.where(has_prompt, shift, torch.zeros_like(shift))
        if isinstance(strength, torch.Tensor) and strength.dim() == 1:
            strength = strength.unsqueeze(-1)
        return SteeringOutput(self.extend(user) + strength * shift, gates, shift, projected)

    def extend(self, user: torch.Tensor) -> torch.Tensor:
        """[h, 0]: the unsteered vector in the attribute-extended item space."""
        return F.pad(user, (0, self.attribute_dim))

    def group_mass(self, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total gate weight on the positive and on the negative expert group."""
        return (gates[:, : self.positive_experts].sum(-1),
                gates[:, self.positive_experts:].sum(-1))
