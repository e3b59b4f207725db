"""Which intent read-out binds values to polarities better: the MLP over the pooled sentence
vector (today's head) or a per-value attention read-out over the tuned token states?

Both towers start from the same MiniLM weights, tune the same top layers, see the same batches
from one shared prompt pool (training frames only) and take turns step by step, so the machine's
speed affects both alike. Measured on the validation split's renderings: `interpret` accuracy
(every value's none / asked / refused right) overall, on compounds, and the share of refused
values read as asked.

    OMP_NUM_THREADS=1 python benches/intent_readout.py --minutes 10 --layers 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpr.data import synthetic_dataset
from dpr.encoder import encoder_dir
from dpr.models.intent import ASKED, REFUSED, IntentHead
from dpr.models.tower import PromptTower, _layer_output
from dpr.prompts.grammar import Grammar
from dpr.train.tower import (
    PromptPool,
    TowerTrainConfig,
    intent_loss,
    interpret_accuracy,
    label_matrix,
    render_batch,
)


class ValueAttentionReadout(nn.Module):
    """Per value v: attention-pool the token states with a learned query q_v, then classify
    (none, asked, refused) from [that value's pooled state, q_v, the sentence vector]."""

    def __init__(self, num_values: int, dim: int = 384, hidden: int = 256) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_values, dim) * 0.05)
        self.key = nn.Linear(dim, dim)
        self.classify = nn.Sequential(nn.Linear(3 * dim + 1, hidden), nn.ReLU(),
                                      nn.Linear(hidden, 3))

    def forward(self, states: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor
                ) -> torch.Tensor:
        logits = torch.einsum("bth,vh->bvt", self.key(states), self.queries)
        logits = logits / math.sqrt(states.shape[-1])
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        attention = torch.softmax(logits, dim=-1)
        per_value = torch.einsum("bvt,bth->bvh", attention, states)
        b, v = per_value.shape[:2]
        best = logits.max(dim=-1).values.unsqueeze(-1)
        x = torch.cat([per_value, self.queries.expand(b, -1, -1),
                       pooled[:, None, :].expand(-1, v, -1), best], dim=-1)
        return self.classify(x)


def upper_states(tower: PromptTower, lower: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token states after the tuned layers, their mask, and the pooled normalised vector."""
    states = torch.nn.utils.rnn.pad_sequence(lower, batch_first=True)
    lengths = torch.tensor([len(s) for s in lower])
    mask = torch.arange(states.shape[1])[None, :] < lengths[:, None]
    extended = tower._extended_mask(states, mask.long())
    layers = tower.encoder.encoder.layer
    for layer in layers[len(layers) - tower.tune_layers:]:
        states = _layer_output(layer(states, attention_mask=extended))
    weights = mask.unsqueeze(-1).to(states.dtype)
    pooled = F.normalize((states * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=1)
    return states, mask, pooled


def evaluate(tower: PromptTower, readout: nn.Module | None, texts: list[str],
             labels: np.ndarray, compound: np.ndarray) -> dict[str, float]:
    tower.eval()
    probs = []
    with torch.no_grad():
        for start in range(0, len(texts), 128):
            lower = tower.lower_states(texts[start:start + 128])
            states, mask, pooled = upper_states(tower, lower)
            logits = tower.intent(pooled) if readout is None else readout(states, mask, pooled)
            probs.append(torch.softmax(logits, dim=-1).numpy())
    p = np.concatenate(probs)
    refused = labels == REFUSED
    predicted_asked = (p[..., ASKED] >= 0.5) & refused
    return {"interpret": interpret_accuracy(p, labels),
            "interpret_compound": interpret_accuracy(p[compound], labels[compound]),
            "refused_read_as_asked": float(predicted_asked.sum() / max(refused.sum(), 1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--valid", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benches/results/intent-readout.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dataset = synthetic_dataset(seed=args.seed)
    values = [("genre", v) for v in dataset.items.attribute_values("genre")]
    grammar = Grammar.load().with_values("genre", [v for _, v in values])
    pooled_tower = PromptTower(encoder_dir(), IntentHead(values), tune_layers=args.layers)
    attention_tower = copy.deepcopy(pooled_tower)
    readout = ValueAttentionReadout(len(values))
    config = TowerTrainConfig(tune_layers=args.layers, steps=100000, pool_prompts=12000,
                              probe_steps=0)
    budget = 60 * args.minutes
    pool = PromptPool.build(pooled_tower, grammar, config, rng, 0.25 * budget)
    valid = render_batch(grammar, values, args.valid, np.random.default_rng(99), "valid")
    texts = [r.text for r in valid]
    labels = label_matrix(valid, values).numpy()
    compound = np.array([r.frame.startswith("compound") or len(r.labels) > 1 for r in valid])

    def optimizer(tower: PromptTower, head: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": tower.encoder_parameters(), "lr": 1e-4},
                                  {"params": list(head.parameters()), "lr": 3e-3}])

    optimizers = (optimizer(pooled_tower, pooled_tower.intent),
                  optimizer(attention_tower, readout))
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < budget - pool.seconds:
        rows = torch.from_numpy(rng.choice(len(pool), size=64, replace=False))
        lower = [pool.lower[int(i)] for i in rows]
        target = pool.labels[rows]
        for tower, opt, head in ((pooled_tower, optimizers[0], None),
                                 (attention_tower, optimizers[1], readout)):
            tower.train()
            states, mask, pooled = upper_states(tower, lower)
            logits = tower.intent(pooled) if head is None else head(states, mask, pooled)
            opt.zero_grad()
            intent_loss(logits, target).backward()
            opt.step()
        steps += 1
    result = {"minutes": args.minutes, "tuned_layers": args.layers, "steps": steps,
              "pool_prompts": len(pool), "valid_prompts": len(valid),
              "valid_compounds": int(compound.sum()),
              "pooled_mlp": evaluate(pooled_tower, None, texts, labels, compound),
              "value_attention": evaluate(attention_tower, readout, texts, labels, compound)}
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
