"""The cross-family compound protocol: one value of each of two families asked for, one value of
the first family refused ("a 90s comedy, but no romance").

Selection (drawn before any steerer runs, so every method sees the same cases and prompts):
- the asked value of the first family (`cases.attribute`, e.g. genre) and of the second (e.g.
  decade) are each chosen as the positive protocol chooses: the target's value that the
  history under-represents most;
- the refused value is the first family's value the target lacks that most items of the
  combined pre-filter's top-k carry (the backbone restricted to both asked values): what a
  user who asked for both would still be shown and wants gone.
Cases whose target lacks a value of either family, or with nothing to refuse, are skipped.

Methods: "backbone"; "filter" (both asked values required, the refused one removed: the
strongest filter baseline); for each steerer S, "S soft", "S hybrid" (steered under the same
filter) and, with its auto exclusions, "S auto" (steered, every value the prompt's reading
refuses removed, in either family). Metrics: NDCG@k and Recall@k (a target the method cannot
rank is a miss), and the top-k shares of each asked value and of the refused one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpr.evaluate.protocols import (
    NO_GENRE,
    AutoExclude,
    Overrules,
    Render,
    Scorer,
    Steerer,
    SteeringCases,
    Tally,
    choose_avoided_genres,
    choose_positive_genres,
    history_shares,
    overruled,
    purpose_rng,
    summarise,
    top_mask,
)
from dpr.prompts import Intent

PROTOCOL = "cross-family"


def evaluate_cross_family(cases: SteeringCases, second: str, steerers: dict[str, Steerer], *,
                          render: Render, auto: dict[str, dict[str, AutoExclude]] | None = None,
                          overrules: dict[str, Overrules] | None = None, k: int = 10,
                          seed: int = 0, batch_size: int = 1024) -> dict[str, Any]:
    """Run the protocol (module docstring) with `cases.attribute` as the first family and
    `second` as the other; `auto[S][family]` gives steerer S's auto exclusions per family;
    `overrules[S]` ranks S's hybrid and auto rows whose reading their exclusions overrule by the
    backbone, as the engine does.

    Returns results shaped as `evaluate_steering`'s (so `write_steering_report` reports them),
    with one protocol, "cross-family": {"cases", "skipped", "examples", "families", "methods":
    {method: {metric: value}}}; metrics "ndcg@k", "recall@k", "genre_share@k" (the first
    family's asked value, named as in the other protocols), "also_share@k" (the second's) and
    "avoid_share@k".
    """
    first = cases.attribute
    if second == first:
        raise ValueError(f"the second family must differ from the first ({first!r})")
    auto = auto or {}
    first_matrix, first_names = cases.catalogue.attribute_matrix(first)
    second_matrix, second_names = cases.catalogue.attribute_matrix(second)
    scorer = Scorer(cases, mask_history=True)
    asked = choose_positive_genres(history_shares(cases.histories, first_matrix),
                                   first_matrix[cases.targets], purpose_rng(seed, "cross first"))
    also = choose_positive_genres(history_shares(cases.histories, second_matrix),
                                  second_matrix[cases.targets], purpose_rng(seed, "cross second"))
    n = len(cases)
    counts = np.zeros((n, first_matrix.shape[1]), dtype=np.float32)
    usable = np.flatnonzero((asked != NO_GENRE) & (also != NO_GENRE))
    for start in range(0, len(usable), batch_size):
        rows = usable[start:start + batch_size]
        base = scorer(cases.user_vectors[rows], scorer.history_mask(rows))
        both = first_matrix.T[asked[rows]] & second_matrix.T[also[rows]]
        counts[rows] = top_mask(np.where(both, base, -np.inf), k) @ first_matrix.astype(
            np.float32)
    avoid = choose_avoided_genres(counts, first_matrix[cases.targets],
                                  purpose_rng(seed, "cross avoid"))
    rows = usable[avoid[usable] != NO_GENRE]
    intents = [Intent("compound", first_names[asked[r]], first_names[avoid[r]], family=first,
                      also=(second, second_names[also[r]])) for r in rows]
    prompt_rng = purpose_rng(seed, "render cross-family")
    texts = [render(intent, prompt_rng) for intent in intents]

    shares = {f"genre_share@{k}": (first_matrix.T, asked),
              f"also_share@{k}": (second_matrix.T, also),
              f"avoid_share@{k}": (first_matrix.T, avoid)}
    tallies: dict[str, Tally] = {}

    def record(method: str, scores: np.ndarray, batch: np.ndarray) -> None:
        tally = tallies.setdefault(method, Tally())
        tally.add_ranks(scores, cases.targets[batch], cases.catalogue.num_items)
        top = top_mask(scores, k)
        for metric, (by_value, values) in shares.items():
            tally.add_share(metric, top, by_value[values[batch]])

    matrices = {first: first_matrix.T, second: second_matrix.T}
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        prompts = texts[start:start + batch_size]
        h = cases.user_vectors[batch]
        base = scorer(h, scorer.history_mask(batch))
        allowed = (first_matrix.T[asked[batch]] & second_matrix.T[also[batch]]
                   & ~first_matrix.T[avoid[batch]])
        record("backbone", base, batch)
        record("filter", np.where(allowed, base, -np.inf), batch)
        avoided = {first: np.eye(first_matrix.shape[1], dtype=bool)[avoid[batch]]}
        for name, steer in steerers.items():
            overrule = (overrules or {}).get(name)
            steered = scorer(np.asarray(steer(h, prompts)), scorer.history_mask(batch))
            record(f"{name} soft", steered, batch)
            hybrid = overruled(steered, base, overrule, prompts, avoided)
            record(f"{name} hybrid", np.where(allowed, hybrid, -np.inf), batch)
            if name in auto:
                refused = {family: np.asarray(exclude(prompts), dtype=bool)
                           for family, exclude in auto[name].items()}
                scores = overruled(steered, base, overrule, prompts, refused)
                record(f"{name} auto", _excluded(scores, refused, matrices), batch)
    block = {"cases": len(rows), "skipped": n - len(rows), "families": [first, second],
             "examples": [{"prompt": t, "polarity": "compound",
                           "value": f"{i.value} + {i.also[1] if i.also else ''}",
                           "avoid": i.avoid}
                          for i, t in zip(intents[:3], texts[:3], strict=True)],
             "methods": {m: summarise(t, k) for m, t in tallies.items()}}
    return {"protocols": {PROTOCOL: block}, "k": k, "history_masked": True,
            "post_filter_depth": 0, "attribute": f"{first} + {second}", "seed": seed}


def _excluded(scores: np.ndarray, refused: dict[str, np.ndarray],
              matrices: dict[str, np.ndarray]) -> np.ndarray:
    """Scores with the items of every value the reading refuses (in any family) removed;
    `refused[family]` is the (B, V) bool of that family's refused values."""
    dropped = np.zeros(scores.shape, dtype=bool)
    for family, values in refused.items():
        dropped |= (values.astype(np.float32) @ matrices[family].astype(np.float32)) > 0
    return np.where(dropped, -np.inf, scores)
