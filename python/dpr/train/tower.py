"""Stage 2a: fine-tune the prompt tower on the grammar's labelled prompts.

A pool of distinct prompts is rendered once from the grammar's training split (asked,
refused, compound, neutral, and free descriptions) and passed once through the frozen layers
below the tuned ones; every step samples a batch from the pool and trains the intent read-out
(per value: none / asked / refused) together with the encoder's top layers, which are the only
layers run per step.
The tower then stays frozen for stages 2 and 3. `calibrate` picks the auto-mode threshold on
the validation split; `PromptInputs` serves the frozen tower to the later stages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dpr.encoder import PromptEncoder
from dpr.models.intent import ASKED, DETECT_THRESHOLD, NONE, REFUSED, IntentHead
from dpr.models.tower import PromptTower
from dpr.prompts import Grammar, Intent, Rendering

TOWER_MIX = {"positive": 0.3, "negative": 0.35, "compound": 0.2, "neutral": 0.15}
"""Share of each intent kind among the tower's training prompts."""
ALSO_SHARE = 0.3
"""Share of positive and compound prompts that also ask for a value of a later family ("a 90s
comedy"), when the tower reads more than one family."""
RANGE_SHARE = 0.3
"""Share of single-value requests and refusals in an ordered family (decades) that name a
range of its values instead ("older than 1980", "a recent film")."""
_POLARITY_CLASS = {"asked": ASKED, "refused": REFUSED}


@dataclass
class TowerTrainConfig:
    """How the prompt tower is fine-tuned."""

    tune_layers: int = 6
    """Top encoder layers fine-tuned (0: the frozen encoder, only the read-out trains)."""
    steps: int = 400
    batch_size: int = 64
    encoder_lr: float = 1e-4
    head_lr: float = 3e-3
    description_share: float = 0.25
    """Share of single-value prompts that describe the value instead of naming it."""
    probe_prompts: int = 4000
    """Prompts encoded once by the frozen encoder for the read-out's first phase."""
    probe_steps: int = 1500
    """Steps of that phase: the read-out alone on the cached frozen embeddings, before the
    top layers join in (linear probing, then fine-tuning: a fresh head's gradients would
    otherwise distort the pretrained features before it has learned anything). 0: none."""
    pool_prompts: int = 24000
    """Distinct training prompts rendered once, with the frozen layers below the tuned ones
    computed once per prompt; every step samples its batch from this pool."""
    pool_share: float = 0.3
    """At most this share of the time budget goes to building the pool (fewer prompts on a
    slow machine)."""
    average_from: float | None = None
    """Share of the run (steps or time budget) after which the trained weights are averaged
    over every later step, and the average is what the tower keeps (stochastic weight
    averaging, Izmailov et al., 2018). None: the last step's weights."""
    max_minutes: float | None = None
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_intents(values: Sequence[tuple[str, str]], n: int, rng: np.random.Generator,
                   grammar: Grammar, description_share: float = 0.25,
                   mix: dict[str, float] | None = None, split: str = "train"
                   ) -> list[tuple[Intent, str]]:
    """`n` random (intent, style) pairs over `values` ((family, value) pairs). With several
    families, `ALSO_SHARE` of the positive and compound intents also ask for a value of a
    family listed after the first value's ("a 90s comedy": the later family's name comes
    first in the sentence). In a family with ranges in `split`, `RANGE_SHARE` of the other
    requests and refusals name a range instead of one value."""
    mix = mix or TOWER_MIX
    order = list(dict.fromkeys(f for f, _ in values))
    known = set(values)
    ranges = {(family, polarity): [r for r in grammar.ranges_of(family, split, polarity)
                                   if all((family, v) in known for v in r)]
              for family in order for polarity in ("asked", "refused")}

    def also(first: tuple[str, str], refused: tuple[str, str] | None = None
             ) -> tuple[str, str] | None:
        later = [pair for pair in values
                 if order.index(pair[0]) > order.index(first[0]) and pair != refused]
        if not later or rng.random() >= ALSO_SHARE:
            return None
        return later[int(rng.integers(len(later)))]

    kinds = list(mix)
    p = np.array([mix[k] for k in kinds], dtype=np.float64)
    drawn = rng.choice(len(kinds), size=n, p=p / p.sum())
    out = []
    for k in drawn:
        kind = kinds[int(k)]
        if kind == "neutral":
            out.append((Intent("neutral"), "name"))
            continue
        first = values[int(rng.integers(len(values)))]
        if kind == "compound":
            second = first
            while second == first:
                second = values[int(rng.integers(len(values)))]
            out.append((Intent("compound", first[1], second[1], family=first[0],
                               avoid_family=second[0], also=also(first, second)), "name"))
            continue
        extra = also(first) if kind == "positive" else None
        spans = ranges[first[0], "asked" if kind == "positive" else "refused"]
        if extra is None and spans and rng.random() < RANGE_SHARE:
            span = spans[int(rng.integers(len(spans)))]
            out.append((Intent(kind, span[0], family=first[0], values=span), "name"))
            continue
        describe = (extra is None and rng.random() < description_share
                    and grammar.describable(*first))
        out.append((Intent(kind, first[1], family=first[0], also=extra),
                    "description" if describe else "name"))
    return out


def render_batch(grammar: Grammar, values: Sequence[tuple[str, str]], n: int,
                 rng: np.random.Generator, split: str, description_share: float = 0.25
                 ) -> list[Rendering]:
    """`n` labelled prompts from `split`."""
    return [grammar.render(intent, rng, split=split, style=style)
            for intent, style in sample_intents(values, n, rng, grammar, description_share,
                                                split=split)]


def label_matrix(renderings: Sequence[Rendering], values: Sequence[tuple[str, str]]
                 ) -> torch.Tensor:
    """(n, V) class per value: NONE, ASKED or REFUSED."""
    column = {pair: j for j, pair in enumerate(values)}
    labels = torch.full((len(renderings), len(values)), NONE, dtype=torch.long)
    for row, rendering in enumerate(renderings):
        for family, value, polarity in rendering.labels:
            labels[row, column[(family, value)]] = _POLARITY_CLASS[polarity]
    return labels


def intent_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per value, summed over values, averaged over prompts."""
    return F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), reduction="sum"
                           ) / logits.shape[0]


def train_tower(tower: PromptTower, grammar: Grammar, config: TowerTrainConfig,
                progress: bool = True, averages: Sequence[WeightAverage] = ()
                ) -> dict[str, Any]:
    """Fine-tune `tower` in place; returns the curve and timing. With `config.average_from`,
    the tower ends with the average of its weights over the rest of the run. `averages` are
    further running averages to update at every step (left as they are, for comparison)."""
    rng = np.random.default_rng([config.seed, 11])
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    budget = 60 * config.max_minutes if config.max_minutes else None
    pool = PromptPool.build(tower, grammar, config, rng,
                            None if budget is None else config.pool_share * budget)
    probe = _probe(tower, pool, config) if config.probe_steps else None
    groups = [{"params": list(tower.intent.parameters()), "lr": config.head_lr}]
    if tower.encoder_parameters():
        groups.append({"params": tower.encoder_parameters(), "lr": config.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    base = [group["lr"] for group in optimizer.param_groups]
    kept = (WeightAverage(tower.trained_parameters(), config.average_from)
            if config.average_from is not None else None)
    tracked = [a for a in (kept, *averages) if a is not None]
    tower.train()
    curve = [] if probe is None else [probe]
    bar = tqdm(total=config.steps, desc="stage 2a: prompt tower", disable=not progress)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    while True:
        # Progress is the larger of steps and time used: a time budget anneals the learning
        # rate as fully as a step count does, on a fast machine or a slow one.
        elapsed = time.perf_counter() - started
        done = max(step / config.steps, elapsed / budget if budget else 0.0)
        if done >= 1.0:
            break
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * _lr_factor(step, done)
        rows = torch.randperm(len(pool), generator=generator)[:config.batch_size]
        logits = tower.intent(pool.embed(tower, rows))
        loss = intent_loss(logits, pool.labels[rows].to(logits.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for average in tracked:
            average.update(done)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0:
            curve.append({"step": step, "loss": float(loss.item()), "seconds": elapsed})
        step += 1
    bar.close()
    if step:
        curve.append({"step": step - 1, "loss": float(loss.item()),
                      "seconds": time.perf_counter() - started})
    if kept is not None and kept.count:
        kept.swap()
    tower.eval()
    return {"config": config.to_dict(), "steps": step, "pool_prompts": len(pool),
            "averaged_steps": 0 if kept is None else kept.count,
            "pool_seconds": pool.seconds, "curve": curve,
            "seconds": time.perf_counter() - started}


class WeightAverage:
    """The running mean of some parameters over the steps taken after a share `start` of the
    run; `swap` exchanges the parameters with their mean in place (twice: back again)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], start: float) -> None:
        if not 0.0 <= start < 1.0:
            raise ValueError(f"an average must start within the run (0 <= start < 1), got {start}")
        self.params = list(params)
        self.start = start
        self.count = 0
        self.mean = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, done: float) -> None:
        """Fold in the current weights if the run is past `start` (`done`: share used)."""
        if done < self.start:
            return
        self.count += 1
        for mean, p in zip(self.mean, self.params, strict=True):
            mean.lerp_(p.detach(), 1.0 / self.count)

    @torch.no_grad()
    def swap(self) -> None:
        for mean, p in zip(self.mean, self.params, strict=True):
            held = p.detach().clone()
            p.copy_(mean)
            mean.copy_(held)


@dataclass
class PromptPool:
    """Distinct training prompts, their labels, and the frozen states below the tuned layers
    (computed once: only the tuned layers run per step)."""

    renderings: list[Rendering]
    labels: torch.Tensor
    lower: list[torch.Tensor]
    seconds: float

    def __len__(self) -> int:
        return len(self.renderings)

    @classmethod
    def build(cls, tower: PromptTower, grammar: Grammar, config: TowerTrainConfig,
              rng: np.random.Generator, max_seconds: float | None) -> PromptPool:
        """Up to `config.pool_prompts` distinct prompts (no more than the probe and the steps
        can use), fewer if `max_seconds` runs out."""
        started = time.perf_counter()
        wanted = min(config.pool_prompts,
                     max(config.probe_prompts if config.probe_steps else 0,
                         config.steps * config.batch_size))
        renderings: list[Rendering] = []
        lower: list[torch.Tensor] = []
        seen: set[str] = set()
        tower.eval()
        stale = 0  # rounds in a row without a new sentence: a small grammar is exhausted
        while len(renderings) < wanted and stale < 20:
            fresh = [r for r in render_batch(grammar, tower.intent.values, 256, rng, "train",
                                             config.description_share)
                     if r.text.strip() and not (r.text in seen or seen.add(r.text))]
            fresh = fresh[:wanted - len(renderings)]
            stale = 0 if fresh else stale + 1
            if fresh:
                renderings += fresh
                lower += tower.lower_states([r.text for r in fresh])
            if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                break
        if not renderings:
            raise RuntimeError("the prompt pool is empty: the grammar renders no training text")
        return cls(renderings, label_matrix(renderings, tower.intent.values), lower,
                   time.perf_counter() - started)

    def embed(self, tower: PromptTower, rows: torch.Tensor) -> torch.Tensor:
        """The tower's embedding of the prompts at `rows` (through the tuned layers)."""
        return tower.upper_embed([self.lower[int(i)] for i in rows])


def _probe(tower: PromptTower, pool: PromptPool, config: TowerTrainConfig) -> dict[str, Any]:
    """The first phase: train the read-out alone on the frozen embeddings of (up to
    `probe_prompts` of) the pool, each prompt encoded once."""
    started = time.perf_counter()
    count = min(config.probe_prompts, len(pool))
    tower.eval()
    with torch.no_grad():
        embeddings = torch.cat([pool.embed(tower, torch.arange(lo, min(lo + 256, count)))
                                for lo in range(0, count, 256)])
    labels = pool.labels[:count].to(embeddings.device)
    optimizer = torch.optim.AdamW(tower.intent.parameters(), lr=config.head_lr,
                                  weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed)
    loss = torch.zeros(())
    for _ in range(config.probe_steps):
        rows = torch.randint(count, (config.batch_size,), generator=generator)
        loss = intent_loss(tower.intent(embeddings[rows]), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"phase": "probe", "steps": config.probe_steps, "prompts": count,
            "loss": float(loss.item()), "seconds": time.perf_counter() - started}


def _lr_factor(step: int, done: float) -> float:
    """Warm up over 20 steps, hold, then decay linearly to 10% over the last 30% of the run
    (`done`: the share of the step count or time budget used)."""
    warm = min(1.0, (step + 1) / 20)
    tail = max(0.0, (done - 0.7) / 0.3)
    return warm * (1.0 - 0.9 * min(tail, 1.0))


class PromptInputs:
    """The frozen tower as the later stages use it: prompts -> `[e, p_asked, p_refused]`
    (float32, cached per distinct prompt; blank prompts give zero rows), computed by the same
    encoder code path as the exported bundle's (`PromptEncoder` over the saved folder)."""

    def __init__(self, encoder_dir: str | Path, intent: IntentHead) -> None:
        self.encoder = PromptEncoder(encoder_dir)
        self.intent = intent.eval()

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        e = torch.from_numpy(self.encoder.encode(list(prompts)))
        return self.intent.prompt_input(e).numpy()

    def readings(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, V, 3) probabilities per value (zero for blank prompts)."""
        with torch.no_grad():
            e = torch.from_numpy(self.encoder.encode(list(prompts)))
            return self.intent.probabilities(e).numpy()


def calibrate(inputs: PromptInputs, grammar: Grammar, values: Sequence[tuple[str, str]],
              n: int = 3000, seed: int = 0, false_rate: float = 0.02) -> dict[str, Any]:
    """The auto-mode threshold, chosen on the validation split: the lowest refused probability
    (from 0.5 up, in steps of 0.05) at which at most `false_rate` of validation prompts would
    hard-exclude a value they did not refuse. Also reports validation accuracy."""
    rng = np.random.default_rng([seed, 13])
    renderings = render_batch(grammar, values, n, rng, "valid")
    probs = inputs.readings([r.text for r in renderings])
    labels = label_matrix(renderings, values).numpy()
    refused = probs[..., REFUSED]
    chosen, table = 0.95, []
    for threshold in np.round(np.arange(0.5, 0.96, 0.05), 2):
        excluded = refused >= threshold
        wrong = (excluded & (labels != REFUSED)).any(axis=1).mean()
        caught = (excluded & (labels == REFUSED)).sum() / max((labels == REFUSED).sum(), 1)
        table.append({"threshold": float(threshold), "false_exclusion_rate": float(wrong),
                      "refusals_caught": float(caught)})
    for row in table:
        if row["false_exclusion_rate"] <= false_rate:
            chosen = row["threshold"]
            break
    return {"refuse_threshold": chosen, "table": table,
            "valid_accuracy": interpret_accuracy(probs, labels)}


def interpret_accuracy(probs: np.ndarray, labels: np.ndarray,
                       detect: float = DETECT_THRESHOLD) -> float:
    """Share of prompts whose detected (value, polarity) set equals the labelled one."""
    predicted = np.where(probs[..., ASKED] >= detect, ASKED,
                         np.where(probs[..., REFUSED] >= detect, REFUSED, NONE))
    return float((predicted == labels).all(axis=1).mean())


def save_tower(tower: PromptTower, out_dir: Path) -> Path:
    """The tuned encoder folder beside a run (`OUT/prompt_encoder`)."""
    return tower.save_encoder(out_dir)
