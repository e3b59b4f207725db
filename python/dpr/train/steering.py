"""Stages 2 and 3: align the prompt projector with the item space, then train the steering head.

The backbone and the item embeddings stay frozen. Its user vector at every training position is
computed once, so both stages only run the small steering network and one item-score matmul.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dpr.data.dataset import ItemCatalogue, LeaveOneOutSplit
from dpr.models.backbone import Backbone
from dpr.models.steering import DPRSteering
from dpr.prompts import POLARITIES, Episodes, Grammar, Intent, ValueRange, value_ranges
from dpr.prompts import steering_episodes as build_episodes
from dpr.train import distributed
from dpr.train.batches import history_batch

POSITIVE, NEGATIVE, NEUTRAL, COMPOUND = (POLARITIES.index(p) for p in
                                         ("positive", "negative", "neutral", "compound"))


@dataclass
class SteeringTrainConfig:
    """Stages 2 (alignment) and 3 (steering); either can be skipped for ablations."""

    stage2: bool = True
    stage3: bool = True
    align_steps: int = 300
    align_temperature: float = 0.1
    epochs: int = 4
    positions_per_user: int | None = 40
    prompts_per_genre: int = 48
    prompts_per_pair: int = 3
    description_share: float = 0.25
    """Share of each value's training renderings that describe it instead of naming it."""
    prompt_noise: float = 0.3
    batch_size: int = 512
    lr: float = 2e-3
    projector_lr_scale: float = 0.3
    router_weight: float = 0.2
    suppression_weight: float = 3.0
    neutral_weight: float = 1.0
    preserve_weight: float = 0.2
    max_minutes: float | None = None
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SteeringTrainResult:
    steering: DPRSteering
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class PromptPool:
    """A fixed set of renderings per intent from the grammar's training split, each encoded
    once.

    Every (polarity, column) of `columns` ((family, value) pairs) gets `per_genre` renderings
    (a `description_share` of them free descriptions) and every compound pair `per_pair`; with
    several families, every request of a value with a second one of a later family
    (`Intent.also`) gets `per_pair`, and every such compound one. So the encoder runs on a few
    thousand prompts instead of every possible rendering. Each of `ranges` gets `per_genre`
    renderings per polarity it can be rendered in. Keys are (polarity, value column, avoided
    column, second asked column, range), -1 where there is none (`episode_keys`).
    """

    def __init__(self, encode, grammar: Grammar, columns: Sequence[tuple[str, str]],
                 rng: np.random.Generator, per_genre: int = 12, per_pair: int = 2,
                 description_share: float = 0.25, ranges: Sequence[ValueRange] = ()) -> None:
        self.choices: dict[tuple[int, int, int, int, int], list[int]] = {}
        texts: dict[str, int] = {}

        def add(key: tuple[int, int, int, int, int], intent: Intent, count: int) -> None:
            rows = []
            for _ in range(count):
                describe = (intent.polarity in ("positive", "negative") and intent.also is None
                            and rng.random() < description_share
                            and grammar.describable(intent.family, str(intent.value)))
                text = grammar.render(intent, rng, split="train",
                                      style="description" if describe else "name").text
                rows.append(texts.setdefault(text, len(texts)))
            self.choices[key] = sorted(set(rows))

        add((NEUTRAL, -1, -1, -1, -1), Intent("neutral"),
            4 * len(grammar.frames_of("train", "neutral")))
        for r, value_range in enumerate(ranges):
            family = columns[value_range.columns[0]][0]
            span = tuple(columns[c][1] for c in value_range.columns)
            for polarity, kind, renderable in ((POSITIVE, "positive", value_range.asked),
                                               (NEGATIVE, "negative", value_range.refused)):
                if renderable:
                    add((polarity, -1, -1, -1, r),
                        Intent(kind, span[0], family=family, values=span), per_genre)
        order = list(dict.fromkeys(f for f, _ in columns))
        for g, (family, value) in enumerate(columns):
            add((POSITIVE, g, -1, -1, -1), Intent("positive", value, family=family), per_genre)
            add((NEGATIVE, g, -1, -1, -1), Intent("negative", value, family=family), per_genre)
            later = [x for x, (f, _) in enumerate(columns) if order.index(f) > order.index(family)]
            for x in later:
                add((POSITIVE, g, -1, x, -1), Intent("positive", value, family=family,
                                                     also=columns[x]), per_pair)
            for a, (avoid_family, avoid) in enumerate(columns):
                if a == g:
                    continue
                add((COMPOUND, g, a, -1, -1), Intent("compound", value, avoid, family=family,
                                                     avoid_family=avoid_family), per_pair)
                for x in later:
                    if x != a:
                        add((COMPOUND, g, a, x, -1),
                            Intent("compound", value, avoid, family=family,
                                   avoid_family=avoid_family, also=columns[x]), 1)
        self.texts = list(texts)
        self.embeddings = torch.from_numpy(np.asarray(encode(self.texts), dtype=np.float32))

    def sample(self, keys: Sequence[tuple[int, int, int, int, int]], rng: np.random.Generator
               ) -> torch.Tensor:
        """One random rendering's embedding per intent key."""
        rows = [self._pick(self.choices[key], rng) for key in keys]
        return self.embeddings[rows]

    @staticmethod
    def _pick(options: list[int], rng: np.random.Generator) -> int:
        return options[int(rng.integers(len(options)))]


def episode_keys(episodes: Episodes, batch: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """The prompt-pool key of each episode in `batch` (a range episode's prompt names the range,
    not its own value)."""
    span = episodes.span[batch]
    value = np.where(span >= 0, -1, episodes.value[batch])
    return list(zip(episodes.polarity[batch].tolist(), value.tolist(),
                    episodes.avoid[batch].tolist(), episodes.also[batch].tolist(),
                    span.tolist(), strict=True))


def refused_columns(episodes: Episodes, batch: np.ndarray, num_columns: int) -> torch.Tensor:
    """(B, A) bool: the steered values each episode's prompt refuses (a negative episode's
    value or range, a compound's avoided value)."""
    out = torch.zeros(len(batch), num_columns, dtype=torch.bool)
    polarity, span = episodes.polarity[batch], episodes.span[batch]
    single = np.where(polarity == NEGATIVE, episodes.value[batch], episodes.avoid[batch])
    rows = np.flatnonzero((single >= 0) & ~((polarity == NEGATIVE) & (span >= 0)))
    out[torch.from_numpy(rows), torch.from_numpy(single[rows])] = True
    for row in np.flatnonzero((polarity == NEGATIVE) & (span >= 0)):
        out[int(row), list(episodes.ranges[int(span[row])].columns)] = True
    return out


@torch.inference_mode()
def prefix_states(backbone: Backbone, sequences: Sequence[np.ndarray], batch_size: int = 256
                  ) -> tuple[torch.Tensor, np.ndarray]:
    """User vectors after every prefix of each sequence's first `max_len` items.

    Returns a flat (M, d) tensor and offsets: the vector after the first p items of sequence u
    (the state that predicts item p) is row `offsets[u] + p - 1`.
    """
    backbone.eval()
    device = next(backbone.parameters()).device
    heads = [np.asarray(s[: backbone.max_len], dtype=np.int64) for s in sequences]
    lengths = np.array([len(h) for h in heads], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    states = torch.empty(int(lengths.sum()), backbone.dim)
    for start in range(0, len(heads), batch_size):
        chunk = [h for h in heads[start:start + batch_size] if len(h)]
        rows = [u for u in range(start, min(start + batch_size, len(heads))) if lengths[u]]
        if not chunk:
            continue
        items, _ = history_batch(chunk, backbone.max_len)
        hidden = backbone.hidden_states(items.to(device)).float().cpu()
        for row, u in enumerate(rows):
            states[offsets[u]: offsets[u] + lengths[u]] = hidden[row, : lengths[u]]
    return states, offsets


def extended_items(items: torch.Tensor, attributes: torch.Tensor, attribute_dim: int
                   ) -> torch.Tensor:
    """[E, A]: item vectors extended by their 0/1 attribute rows (when the steering uses them)."""
    return torch.cat([items, attributes.float()], dim=1) if attribute_dim else items


def value_centroids(item_vectors: torch.Tensor, column_matrix: torch.Tensor) -> torch.Tensor:
    """(A, d) unit-norm mean item vector of each steered value."""
    sums = column_matrix.T.float() @ item_vectors
    counts = column_matrix.sum(0).clamp(min=1).unsqueeze(-1)
    return F.normalize(sums / counts, dim=-1)


def align_projector(steering: DPRSteering, pool: PromptPool, num_values: int,
                    centroids: torch.Tensor, config: SteeringTrainConfig,
                    progress: bool = True) -> list[float]:
    """Stage 2: a prompt about value g projects closest to g's centroid (InfoNCE over values)."""
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(steering.projector.parameters(), lr=config.lr)
    losses = []
    bar = tqdm(range(config.align_steps), desc="stage 2: align", disable=not progress)
    for _ in bar:
        genre_index = rng.integers(num_values, size=config.batch_size)
        polarity = rng.choice([POSITIVE, NEGATIVE], size=config.batch_size)
        keys = [(int(p), int(g), -1, -1, -1) for p, g in zip(polarity, genre_index, strict=True)]
        projected = F.normalize(steering.projector(pool.sample(keys, rng)), dim=-1)
        logits = projected @ centroids.T / config.align_temperature
        loss = F.cross_entropy(logits, torch.from_numpy(genre_index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return losses


def train_steering(steering: DPRSteering, backbone: Backbone, split: LeaveOneOutSplit,
                   catalogue: ItemCatalogue, encode, config: SteeringTrainConfig, *,
                   families: Sequence[str] = ("genre",), grammar: Grammar | None = None,
                   embedding_dim: int | None = None, progress: bool = True
                   ) -> SteeringTrainResult:
    """Run stage 2 then stage 3 (each as configured) on a frozen backbone, steering the values
    of `families` (the attribute block: `catalogue.steered_matrix(families)`).

    `encode` maps a list of prompts to the steering's prompt inputs (`steering.prompt_dim`
    floats: the frozen tower's embedding, then its intent reading if it has one); the first
    `embedding_dim` floats (default: all) are the sentence embedding that prompt noise perturbs.
    """
    grammar = grammar_for(grammar or Grammar.load(), catalogue, families)
    torch.manual_seed(config.seed)
    backbone.eval().requires_grad_(False)
    items = backbone.item_vectors().detach().float().cpu()
    matrix, columns = catalogue.steered_matrix(families)
    if steering.attribute_dim not in (0, len(columns)):
        raise ValueError(f"steering expects {steering.attribute_dim} values of {list(families)}, "
                         f"the catalogue has {len(columns)}")
    column_matrix = torch.from_numpy(matrix[1:])
    result = SteeringTrainResult(steering)

    started = time.perf_counter()
    ranges = value_ranges(grammar, columns)
    pool = PromptPool(encode, grammar, columns, np.random.default_rng(config.seed + 2),
                      config.prompts_per_genre, config.prompts_per_pair,
                      config.description_share, ranges)
    pool.embedding_dim = embedding_dim or pool.embeddings.shape[1]
    result.seconds["encode_prompts"] = time.perf_counter() - started

    if config.stage2:
        started = time.perf_counter()
        losses = align_projector(steering, pool, len(columns),
                                 value_centroids(items, column_matrix), config, progress)
        result.seconds["stage2"] = time.perf_counter() - started
        result.curve.append({"stage": 2, "first_loss": losses[0], "last_loss": losses[-1]})
    if config.stage3:
        started = time.perf_counter()
        scored = extended_items(items, column_matrix, steering.attribute_dim)
        result.curve.extend(_stage3(steering, backbone, split, catalogue, pool, scored,
                                    column_matrix, config, families, ranges, progress))
        result.seconds["stage3"] = time.perf_counter() - started
    steering.eval()
    return result


def grammar_for(grammar: Grammar, catalogue: ItemCatalogue, families: Sequence[str]) -> Grammar:
    """`grammar`, knowing every value of each of `families` in `catalogue`."""
    for family in families:
        grammar = grammar.with_values(family, catalogue.attribute_values(family))
    return grammar


def _stage3(steering: DPRSteering, backbone: Backbone, split: LeaveOneOutSplit,
            catalogue: ItemCatalogue, pool: PromptPool, items: torch.Tensor,
            column_matrix: torch.Tensor, config: SteeringTrainConfig, families: Sequence[str],
            ranges: Sequence[ValueRange], progress: bool) -> list[dict[str, float]]:
    rng = np.random.default_rng(config.seed + 1)  # the same on every rank: episodes, order
    prompt_rng = np.random.default_rng([config.seed, 7, distributed.world()[0]])
    heads = [s[: backbone.max_len] for s in split.train]
    states, offsets = prefix_states(backbone, heads)
    head_split = LeaveOneOutSplit(heads, split.valid_targets, split.test_targets)
    model = distributed.wrap(steering)
    projector = set(steering.projector.parameters())
    optimizer = torch.optim.AdamW([
        {"params": [p for p in steering.parameters() if p not in projector], "lr": config.lr},
        {"params": list(projector), "lr": config.lr * config.projector_lr_scale},
    ])
    started = time.perf_counter()
    curve = []
    for epoch in range(config.epochs):
        episodes = build_episodes(head_split, catalogue, families=families, rng=rng,
                                  positions_per_user=config.positions_per_user, ranges=ranges)
        order = distributed.shard(rng.permutation(len(episodes.target)), config.batch_size)
        totals: dict[str, float] = {}
        bar = tqdm(order, desc=f"stage 3: epoch {epoch}", disable=not progress, unit="batch")
        for batch in bar:
            user = states[offsets[episodes.user[batch]] + episodes.position[batch] - 1]
            prompts = _jitter(pool.sample(episode_keys(episodes, batch), prompt_rng),
                              config.prompt_noise,
                              pool.embedding_dim)
            losses = steering_losses(model, steering, user, prompts, episodes, batch, items,
                                     column_matrix, config)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{losses['total'].item():.3f}")
        steps = max(len(order), 1)
        curve.append({"stage": 3, "epoch": epoch, **{k: v / steps for k, v in totals.items()}})
        if progress:
            tqdm.write(f"stage 3 epoch {epoch}: " + "  ".join(
                f"{k} {v / steps:.4f}" for k, v in totals.items()))
        if config.max_minutes and time.perf_counter() - started > 60 * config.max_minutes:
            break
    return curve


def _jitter(prompts: torch.Tensor, noise: float, embedding_dim: int | None = None
            ) -> torch.Tensor:
    """Random unit-sphere perturbation of the sentence-embedding part of prompt inputs (the
    first `embedding_dim` floats; the intent reading after them is kept); empty prompts stay
    empty.

    Training wordings are few; noise makes the router and experts answer for a neighbourhood
    of each wording rather than its exact point, which helps on unseen wordings.
    """
    if noise <= 0:
        return prompts
    d = embedding_dim or prompts.shape[1]
    e = prompts[:, :d]
    has_prompt = prompts.abs().sum(-1, keepdim=True) > 0
    moved = F.normalize(e + noise * torch.randn_like(e) / d ** 0.5, dim=-1)
    moved = torch.cat([moved, prompts[:, d:]], dim=1)
    return torch.where(has_prompt, moved, prompts)


def steering_losses(model: torch.nn.Module, steering: DPRSteering, user: torch.Tensor,
                    prompts: torch.Tensor, episodes: Episodes, batch: np.ndarray,
                    items: torch.Tensor, genre_matrix: torch.Tensor,
                    config: SteeringTrainConfig) -> dict[str, torch.Tensor]:
    """All stage-3 losses for one batch of episodes.

    - target: cross-entropy of the true next item; for negative and compound prompts over the
      allowed items only (the forbidden genre is what a hard filter would remove);
    - suppression: -log(1 - softmax mass on the forbidden genre);
    - preserve: KL from the backbone's to the steered distribution over allowed items, so
      suppression reorders allowed items as little as possible;
    - neutral: squared shift relative to |h| for neutral prompts (keep h' near h);
    - router: positive prompts gate to positive experts, negative to negative, compound to both.
    """
    out = model(user, prompts)
    polarity = torch.from_numpy(episodes.polarity[batch]).long()
    target = torch.from_numpy(episodes.target[batch]) - 1
    refused = refused_columns(episodes, batch, genre_matrix.shape[1])
    has_avoid = refused.any(dim=1)
    forbidden = (refused.float() @ genre_matrix.T.float()) > 0

    logits = out.steered @ items.T
    allowed_logits = logits.masked_fill(forbidden, -torch.inf)
    target_loss = F.cross_entropy(allowed_logits, target)

    suppression, preserve = _avoidance_losses(logits[has_avoid], allowed_logits[has_avoid],
                                              forbidden[has_avoid], user[has_avoid], items)

    is_neutral = polarity == NEUTRAL
    relative_shift = out.shift[:, : user.shape[1]].pow(2).sum(-1) / user.pow(2).sum(-1).clamp(
        min=1e-6) + out.shift[:, user.shape[1]:].pow(2).mean(-1)
    neutral = (relative_shift * is_neutral).sum() / is_neutral.sum().clamp(min=1)

    router = _router_loss(steering, out.gates, polarity)
    total = (target_loss + config.suppression_weight * suppression
             + config.preserve_weight * preserve + config.neutral_weight * neutral
             + config.router_weight * router)
    return {"total": total, "target": target_loss.detach(), "suppression": suppression.detach(),
            "preserve": preserve.detach(), "neutral": neutral.detach(), "router": router.detach()}


def _avoidance_losses(logits: torch.Tensor, allowed_logits: torch.Tensor,
                      forbidden: torch.Tensor, user: torch.Tensor, items: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Suppression and preservation losses over the rows whose prompt forbids a genre."""
    if len(logits) == 0:
        zero = logits.new_zeros(())
        return zero, zero
    forbidden_mass = (torch.softmax(logits, dim=-1) * forbidden).sum(-1).clamp(max=1 - 1e-6)
    suppression = -torch.log1p(-forbidden_mass).mean()
    with torch.no_grad():
        base_logits = user @ items[:, : user.shape[1]].T
        base = torch.softmax(base_logits.masked_fill(forbidden, -torch.inf), dim=-1)
    steered_allowed = torch.log_softmax(allowed_logits, dim=-1).masked_fill(forbidden, 0.0)
    preserve = (base * (torch.log(base.clamp(min=1e-12)) - steered_allowed)).sum(-1).mean()
    return suppression, preserve


def _router_loss(steering: DPRSteering, gates: torch.Tensor, polarity: torch.Tensor
                 ) -> torch.Tensor:
    if steering.positive_experts == 0 or steering.negative_experts == 0:
        return gates.new_zeros(())
    positive_mass, negative_mass = steering.group_mass(gates)
    eps = 1e-6
    loss = torch.zeros_like(positive_mass)
    loss = torch.where(polarity == POSITIVE, -torch.log(positive_mass + eps), loss)
    loss = torch.where(polarity == NEGATIVE, -torch.log(negative_mass + eps), loss)
    both = -0.5 * (torch.log(positive_mass + eps) + torch.log(negative_mass + eps))
    loss = torch.where(polarity == COMPOUND, both, loss)
    counted = polarity != NEUTRAL
    return (loss * counted).sum() / counted.sum().clamp(min=1)
