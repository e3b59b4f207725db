"""Steering measured per grammar frame, polarity flips, and the intent read-out's accuracy.

Each frame of one split (by default the held-out one) is scored alone, so a form the model
misreads shows up as its own row instead of vanishing in an average:
- refusal frames run the negative protocol, request frames the positive one, connectors the
  compound one, and free-description frames the positive protocol with the value described
  instead of named (compared with the pre-filter that is told the value);
- polarity flips: the same value asked for by a request frame and refused by a parallel refusal
  frame; a case is separated when that value's share of the two top-k lists differs by at least
  `FLIP_MARGIN`;
- interpret accuracy: generated prompts of the split whose detected (value, polarity) set
  equals their labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dpr.evaluate.protocols import (
    AutoExclude,
    Overrules,
    Scorer,
    Steerer,
    SteeringCases,
    choose_positive_genres,
    evaluate_steering,
    history_shares,
    overruled,
    purpose_rng,
    top_mask,
)
from dpr.models.intent import ASKED, DETECT_THRESHOLD, NONE, REFUSED
from dpr.prompts import Grammar, Intent

FLIP_MARGIN = 0.5
"""How far apart a value's top-k share must be between "asked" and "refused" prompts."""

Readings = Callable[[Sequence[str]], np.ndarray]
"""n prompts -> (n, V, 3) probabilities of none / asked / refused per read-out value."""


def frame_plan(grammar: Grammar, split: str, family: str | None = None
               ) -> list[tuple[str, str, str, str]]:
    """(frame id, kind, protocol, style) for every frame of `split` that names or describes
    a value (of `family`, when given), and every connector."""
    plan = []
    for frame in grammar.frames_of(split, "refused", family=family):
        plan.append((frame.id, "refusal", "negative", "name"))
    for frame in grammar.frames_of(split, "asked", family=family):
        plan.append((frame.id, "request", "positive", "name"))
    for frame in grammar.connectors_of(split):
        plan.append((frame.id, "compound", "compound", "name"))
    for frame in grammar.frames_of(split, "asked", "description", family):
        plan.append((frame.id, "description", "positive", "description"))
    for frame in grammar.frames_of(split, "refused", "description", family):
        plan.append((frame.id, "description refusal", "negative", "description"))
    return plan


def evaluate_frames(cases: SteeringCases, steerers: dict[str, Steerer], grammar: Grammar, *,
                    auto: dict[str, AutoExclude] | None = None,
                    overrules: dict[str, Overrules] | None = None, split: str = "heldout",
                    seed: int = 0, k: int = 10, progress: bool = True) -> dict[str, Any]:
    """Every protocol's metrics per frame of `split` ({frame: {"kind", "protocol", ...
    evaluate_steering's block}}). Cases whose value has no free description are skipped in
    description frames."""
    from tqdm.auto import tqdm

    family = cases.attribute
    out: dict[str, Any] = {}
    for frame_id, kind, protocol, style in tqdm(frame_plan(grammar, split, family), desc="frames",
                                                disable=not progress):
        if style == "description":
            describable = [v for v in cases.catalogue.attribute_values(family)
                           if grammar.describable(family, v)]
            if not describable:
                continue

        def render(intent: Intent, rng: np.random.Generator, frame_id: str = frame_id,
                   style: str = style) -> str:
            usable = style == "name" or grammar.describable(family, str(intent.value))
            frame = frame_id if usable else None
            return grammar.render(intent, rng, split=split, frame=frame,
                                  style=style if usable else "name").text

        result = evaluate_steering(cases, steerers, render=render, seed=seed, k=k,
                                   protocols=(protocol,), auto=auto, overrules=overrules)
        out[frame_id] = {"kind": kind, "protocol": protocol, **result["protocols"][protocol]}
    return out


def polarity_flips(cases: SteeringCases, steerers: dict[str, Steerer], grammar: Grammar, *,
                   auto: dict[str, AutoExclude] | None = None,
                   overrules: dict[str, Overrules] | None = None, split: str = "heldout",
                   seed: int = 0, k: int = 10, max_cases: int = 2000) -> dict[str, Any]:
    """For parallel request/refusal frames of `split` (the i-th of each), the share of cases
    whose asked and refused top-k lists differ in the value's share by >= FLIP_MARGIN."""
    attributes, names = cases.catalogue.attribute_matrix(cases.attribute)
    shares = history_shares(cases.histories, attributes)
    value = choose_positive_genres(shares, attributes[cases.targets],
                                   purpose_rng(seed, "select positive"))
    rows = np.flatnonzero(value >= 0)
    rows = rows[np.random.default_rng([seed, 17]).permutation(len(rows))[:max_cases]]
    scorer = Scorer(cases, mask_history=True)
    h, mask = cases.user_vectors[rows], scorer.history_mask(rows)
    by_value = attributes.T
    asks = grammar.frames_of(split, "asked", family=cases.attribute)
    refusals = grammar.frames_of(split, "refused", family=cases.attribute)
    pairs = list(zip(asks, refusals, strict=False))
    out: dict[str, Any] = {"margin": FLIP_MARGIN, "cases": len(rows), "pairs": {}}
    totals: dict[str, list[float]] = {}
    for ask, refuse in pairs:
        texts = {}
        for frame, polarity in ((ask, "positive"), (refuse, "negative")):
            rng = purpose_rng(seed, f"flip {frame.id}")
            texts[polarity] = [grammar.render(Intent(polarity, names[v], family=cases.attribute),
                                              rng, split=split, frame=frame.id).text
                               for v in value[rows]]
        pair = {}
        for name, steer in steerers.items():
            methods = {"soft": None}
            if auto and name in auto:
                methods["auto"] = auto[name]
            for method, exclude in methods.items():
                share = {}
                for polarity, prompts in texts.items():
                    scores = scorer(np.asarray(steer(h, prompts)), mask)
                    if exclude is not None:
                        refused = np.asarray(exclude(prompts), dtype=bool)
                        scores = overruled(scores, scorer(h, mask), (overrules or {}).get(name),
                                         prompts, {cases.attribute: refused})
                        dropped = (refused.astype(np.float32)
                                   @ by_value.astype(np.float32)) > 0
                        scores = np.where(dropped, -np.inf, scores)
                    top = top_mask(scores, k)
                    has = (top & by_value[value[rows]]).sum(1) / np.maximum(top.sum(1), 1)
                    share[polarity] = has
                separated = float(((share["positive"] - share["negative"]) >= FLIP_MARGIN
                                   ).mean())
                pair[f"{name} {method}"] = separated
                totals.setdefault(f"{name} {method}", []).append(separated)
        out["pairs"][f"{ask.id} / {refuse.id}"] = pair
    out["separated"] = {method: float(np.mean(v)) for method, v in totals.items()}
    return out


def interpret_report(readings: Readings, grammar: Grammar, values: Sequence[tuple[str, str]],
                     *, split: str = "heldout", n: int = 3000, seed: int = 0,
                     detect: float = DETECT_THRESHOLD) -> dict[str, Any]:
    """Accuracy of the read-out (value and polarity) on `n` generated prompts of `split`,
    overall, per intent kind and per frame."""
    from dpr.train.tower import label_matrix, render_batch

    rng = np.random.default_rng([seed, 19])
    renderings = render_batch(grammar, values, n, rng, split)
    probs = np.asarray(readings([r.text for r in renderings]))
    labels = label_matrix(renderings, values).numpy()
    predicted = np.where(probs[..., ASKED] >= detect, ASKED,
                         np.where(probs[..., REFUSED] >= detect, REFUSED, NONE))
    correct = (predicted == labels).all(axis=1)
    polarity_only = ((predicted == REFUSED) == (labels == REFUSED)).all(axis=1)
    refused, asked = labels == REFUSED, labels == ASKED
    kinds = [_kind(grammar, r.frame, r.labels) for r in renderings]
    by_kind: dict[str, list[bool]] = {}
    by_frame: dict[str, list[bool]] = {}
    for kind, rendering, ok in zip(kinds, renderings, correct, strict=True):
        by_kind.setdefault(kind, []).append(bool(ok))
        by_frame.setdefault(rendering.frame, []).append(bool(ok))
    return {"split": split, "prompts": n, "detect_threshold": detect,
            "accuracy": float(correct.mean()),
            "refusal_set_accuracy": float(polarity_only.mean()),
            # the harmful misreadings: a refused value steered towards, an asked one away
            "refused_read_as_asked": float((predicted[refused] == ASKED).mean())
            if refused.any() else 0.0,
            "asked_read_as_refused": float((predicted[asked] == REFUSED).mean())
            if asked.any() else 0.0,
            "by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
            "by_frame": {k: float(np.mean(v)) for k, v in sorted(by_frame.items())},
            "examples": [{"prompt": r.text, "labels": [list(x) for x in r.labels],
                          "ok": bool(ok)} for r, ok in zip(renderings[:12], correct[:12],
                                                           strict=True)]}


def _kind(grammar: Grammar, frame_id: str, labels: tuple) -> str:
    if not labels:
        return "neutral"
    frame = grammar.frame(frame_id.rsplit("/", 1)[-1])  # "era/frame": an era in a frame
    if frame.kind == "connector":
        return "compound"
    if frame.kind == "range" or "/" in frame_id:
        return "range request" if labels[0][2] == "asked" else "range refusal"
    base = "request" if frame.polarity == "asked" else "refusal"
    return f"description {base}" if frame.kind == "description" else base
