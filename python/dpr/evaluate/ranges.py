"""The range protocols: a prompt that names several values of an ordered family at once
("something older than 1980", "nothing recent"), asked for or refused.

Selection (drawn before any steerer runs, so every method sees the same cases and prompts),
over the ranges the grammar's split can express (`Grammar.ranges_of`):
- range positive: among the ranges holding the target's value, the one the history
  under-represents most (lowest summed share of history items in it), ties at random;
- range negative: among the ranges holding none of the target's values, the one most items
  of the backbone's top-k fall in, ties at random; cases where no top-k item is in any are
  skipped (nothing to suppress).
Cases whose target has no value in the family are skipped.

Methods: "backbone"; the filter baseline over the whole catalogue ("pre-filter": only the
range; "hard filter": the range removed); for each steerer S, "S soft", "S hybrid" (steered
under the same filter) and, with its auto exclusions, "S auto" (steered, every value the
reading refuses removed). Metrics: NDCG@k and Recall@k (a target the method cannot rank is a
miss), "genre_share@k" (the top-k share in the range: asked for positive, forbidden for
negative; named as in the other protocols) and, with `read`, the intent read-out's accuracy
on the prompts (the detected value-and-polarity set equals the range's labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dpr.evaluate.protocols import (
    NO_GENRE,
    AutoExclude,
    Overrules,
    Scorer,
    Steerer,
    SteeringCases,
    Tally,
    history_shares,
    overruled,
    pick_by_key,
    purpose_rng,
    summarise,
    top_mask,
)
from dpr.prompts import Grammar, Intent

PROTOCOLS = ("range positive", "range negative")
Readings = Callable[[Sequence[str]], np.ndarray]
"""n prompts -> (n, V, 3) read-out probabilities (none, asked, refused) per steered value."""


def evaluate_ranges(cases: SteeringCases, steerers: dict[str, Steerer], grammar: Grammar, *,
                    split: str, auto: dict[str, AutoExclude] | None = None,
                    overrules: dict[str, Overrules] | None = None,
                    read: Readings | None = None, columns: Sequence[tuple[str, str]] = (),
                    k: int = 10, seed: int = 0, batch_size: int = 1024) -> dict[str, Any]:
    """Run both range protocols (module docstring) on `cases.attribute`, rendering prompts from
    `split` of `grammar` (which must know the catalogue's values: `Grammar.with_values`).
    `read` with `columns` (the read-out's (family, value) order) adds, per protocol, "interpret"
    (exact accuracy) and "interpret_overlap" (mean Jaccard of the read and labelled sets).
    `overrules[S]` ranks S's hybrid and auto rows whose reading their exclusions overrule by the
    backbone, as the engine does.

    Returns results shaped as `evaluate_steering`'s, with protocols "range positive" and
    "range negative".
    """
    family = cases.attribute
    auto = auto or {}
    matrix, names = cases.catalogue.attribute_matrix(family)
    position = {v: j for j, v in enumerate(names)}
    scorer = Scorer(cases, mask_history=True)
    n = len(cases)
    target_has = matrix[cases.targets]
    results: dict[str, Any] = {}
    for protocol, polarity in zip(PROTOCOLS, ("asked", "refused"), strict=True):
        spans = [r for r in grammar.ranges_of(family, split, polarity)
                 if all(v in position for v in r)]
        if not spans:
            raise ValueError(f"the grammar's {split} split names no {polarity} range of "
                             f"{family!r}")
        in_span = np.zeros((len(names), len(spans)), dtype=bool)
        for r, span in enumerate(spans):
            in_span[[position[v] for v in span], r] = True
        touches = (target_has.astype(np.int32) @ in_span.astype(np.int32)) > 0
        if polarity == "asked":
            key = history_shares(cases.histories, matrix) @ in_span.astype(np.float64)
            chosen = pick_by_key(touches, key, purpose_rng(seed, f"select {protocol}"), lowest=True)
        else:
            counts = np.zeros((n, len(spans)), dtype=np.float32)
            for start in range(0, n, batch_size):
                rows = np.arange(start, min(start + batch_size, n))
                base = scorer(cases.user_vectors[rows], scorer.history_mask(rows))
                counts[rows] = top_mask(base, k) @ (matrix.astype(np.float32)
                                                    @ in_span.astype(np.float32))
            chosen = pick_by_key(~touches & (counts > 0), counts.astype(np.float64),
                           purpose_rng(seed, f"select {protocol}"), lowest=False)
        chosen[~target_has.any(axis=1)] = NO_GENRE
        rows = np.flatnonzero(chosen != NO_GENRE)
        kind = "positive" if polarity == "asked" else "negative"
        intents = [Intent(kind, spans[chosen[r]][0], family=family, values=spans[chosen[r]])
                   for r in rows]
        prompt_rng = purpose_rng(seed, f"render {protocol}")
        renderings = [grammar.render(intent, prompt_rng, split=split) for intent in intents]
        texts = [r.text for r in renderings]
        # (rows, N+1): the items in each case's range
        item_in = (matrix.astype(np.float32) @ in_span.astype(np.float32))[:, chosen[rows]].T > 0
        methods = _run(cases, scorer, rows, texts, item_in, polarity, steerers, auto,
                       overrules or {}, matrix, in_span[:, chosen[rows]].T, k, batch_size)
        block: dict[str, Any] = {
            "cases": len(rows), "skipped": n - len(rows),
            "examples": [{"prompt": t, "polarity": kind, "value": " / ".join(i.values),
                          "avoid": None} for i, t in zip(intents[:3], texts[:3], strict=True)],
            "methods": methods}
        if read is not None and len(rows):
            block["interpret"], block["interpret_overlap"] = _interpret(read, columns,
                                                                        renderings)
        results[protocol] = block
    return {"protocols": results, "k": k, "history_masked": True, "post_filter_depth": 0,
            "attribute": f"{family} ranges", "seed": seed, "split": split}


def _run(cases: SteeringCases, scorer: Scorer, rows: np.ndarray, texts: list[str],
         item_in: np.ndarray, polarity: str, steerers: dict[str, Steerer],
         auto: dict[str, AutoExclude], overrules: dict[str, Overrules], matrix: np.ndarray,
         spans: np.ndarray, k: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Every method's metrics; `spans` is (rows, V) bool: each case's range of values."""
    tallies: dict[str, Tally] = {}
    metric = f"genre_share@{k}"

    def record(method: str, scores: np.ndarray, batch: slice) -> None:
        tally = tallies.setdefault(method, Tally())
        tally.add_ranks(scores, cases.targets[rows[batch]], cases.catalogue.num_items)
        tally.add_share(metric, top_mask(scores, k), item_in[batch])

    baseline = "pre-filter" if polarity == "asked" else "hard filter"
    by_value = matrix.T.astype(np.float32)
    for start in range(0, len(rows), batch_size):
        batch = slice(start, min(start + batch_size, len(rows)))
        prompts = texts[batch]
        h = cases.user_vectors[rows[batch]]
        mask = scorer.history_mask(rows[batch])
        allowed = item_in[batch] if polarity == "asked" else ~item_in[batch]
        base = scorer(h, mask)
        record("backbone", base, batch)
        record(baseline, np.where(allowed, base, -np.inf), batch)
        family = cases.attribute
        excluded = spans[batch] if polarity == "refused" else np.zeros_like(spans[batch])
        for name, steer in steerers.items():
            overrule = overrules.get(name)
            steered = scorer(np.asarray(steer(h, prompts)), mask)
            record(f"{name} soft", steered, batch)
            hybrid = overruled(steered, base, overrule, prompts, {family: excluded})
            record(f"{name} hybrid", np.where(allowed, hybrid, -np.inf), batch)
            if name in auto:
                refused = np.asarray(auto[name](prompts), dtype=bool)
                scores = overruled(steered, base, overrule, prompts, {family: refused})
                dropped = (refused.astype(np.float32) @ by_value) > 0
                record(f"{name} auto", np.where(dropped, -np.inf, scores), batch)
    return {m: summarise(t, k) for m, t in tallies.items()}


def _interpret(read: Readings, columns: Sequence[tuple[str, str]], renderings: list
               ) -> tuple[float, float]:
    """Exact accuracy (the detected value-and-polarity set equals the range's labels) and the
    mean Jaccard overlap of the two sets (partial credit for a range read in part)."""
    from dpr.models.intent import ASKED, DETECT_THRESHOLD, NONE, REFUSED
    from dpr.train.tower import interpret_accuracy, label_matrix

    probs = np.asarray(read([r.text for r in renderings]))
    labels = label_matrix(renderings, list(columns)).numpy()
    predicted = np.where(probs[..., ASKED] >= DETECT_THRESHOLD, ASKED,
                         np.where(probs[..., REFUSED] >= DETECT_THRESHOLD, REFUSED, NONE))
    both = ((predicted == labels) & (labels != NONE)).sum(axis=1)
    either = ((predicted != NONE) | (labels != NONE)).sum(axis=1)
    return (interpret_accuracy(probs, labels),
            float(np.mean(both / np.maximum(either, 1))))
