"""Steering evaluation: the standard, positive, negative and compound protocols of PAPER.md.

Every method ranks the full catalogue with `scores = h' @ item_vectors.T`: column 0 (padding) is
never ranked, a user's history is masked (the held-out target never is), ties count against the
target, and a target a method cannot recommend at all (score -inf: filtered out, or outside the
post-filter's list) is a miss. Scores are float32, as served. NumPy only — no torch — so any
steerer can be plugged in.

Selection rules (one genre per case, drawn before any steerer runs, so every method sees the
same cases and the same prompts):
- positive: among the target's genres, the one with the lowest share of history items having
  it (the genre the user under-represents most); ties broken by the seeded rng. Cases whose
  target has no genre are skipped.
- negative: among the genres the target does NOT have, the one carried by the most items of the
  backbone's top-k (history masked, unless `mask_history=False`); ties broken by the seeded rng
  (not by index, which would always favour alphabetically early genres). Cases where no top-k
  item carries such a genre are skipped (there is nothing to suppress).
- compound: the positive genre as above (the same genre per case as in "positive"); the avoided
  genre is chosen like the negative one but from the top-k of the backbone restricted to the
  positive genre (the pre-filter's list) — what a user who only asked for the genre would still
  be shown and wants gone ("a comedy, but no romance": romance co-occurs with comedy). It is
  therefore never the positive genre nor any genre of the target, so the target always passes
  the compound filter. Cases with no positive genre or no such avoided genre are skipped.

Longer than ~400 lines because the four protocols share their case selection, baselines and
scoring; split, each would re-state these rules.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpr.data.dataset import PADDING, ItemCatalogue
from dpr.evaluate.metrics import ranking_metrics, target_ranks
from dpr.prompts import Intent

Steerer = Callable[[np.ndarray, Sequence[str]], np.ndarray]
"""(n, d) backbone user vectors h and n prompts -> (n, d) steered vectors h'; "" = no prompt."""

Render = Callable[[Intent, np.random.Generator], str]
"""Turns an intent into one prompt sentence (e.g. a `Grammar.render` bound to a split)."""

AutoExclude = Callable[[Sequence[str]], np.ndarray]
"""n prompts -> (n, V) bool: the attribute values `mode="auto"` hard-excludes for each."""

Overrules = Callable[[Sequence[str], dict[str, np.ndarray]], np.ndarray]
"""n prompts and, per attribute family, the (n, V) bool values a method hard-excludes -> (n,)
bool: the prompts whose reading those exclusions overrule (they cover every value the read-out
finds and it reads one of them as asked for), which the engine ranks by the unsteered backbone
(`Model::filters_overrule`)."""

PROTOCOLS = ("standard", "positive", "negative", "compound")
BASELINES = ("backbone", "pre-filter", "post-filter", "hard filter", "filter")
"""Method names that are not steerers; a steerer may not take one of them."""

_FILTER_NAME = {"positive": "pre-filter", "negative": "hard filter", "compound": "filter"}
NO_GENRE = -1
"""Genre index meaning "none" in the per-case selections."""


@dataclass
class SteeringCases:
    """The held-out cases, shared by every method.

    `histories` and `targets` hold internal item ids; `user_vectors[i]` is the backbone's vector
    for `histories[i]`; `item_vectors` has one row per internal id, row 0 being padding.
    """

    histories: list[np.ndarray]
    targets: np.ndarray
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    catalogue: ItemCatalogue
    attribute: str = "genre"

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        n, num_items = len(self.targets), self.catalogue.num_items
        if len(self.histories) != n:
            raise ValueError(f"steering cases: {len(self.histories)} histories, {n} targets")
        if self.user_vectors.ndim != 2 or len(self.user_vectors) != n:
            raise ValueError(f"steering cases: user_vectors has shape {self.user_vectors.shape}, "
                             f"expected ({n}, d)")
        if self.item_vectors.shape != (num_items + 1, self.user_vectors.shape[1]):
            raise ValueError(f"steering cases: item_vectors has shape {self.item_vectors.shape}, "
                             f"expected ({num_items + 1}, {self.user_vectors.shape[1]})")
        if n and not (self.targets.min() >= 1 and self.targets.max() <= num_items):
            raise ValueError(f"steering cases: targets outside 1..{num_items}")

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class _Selection:
    """Per-case genres (indices into the attribute's values, NO_GENRE where none)."""

    positive: np.ndarray
    negative: np.ndarray
    compound_avoid: np.ndarray


@dataclass
class Tally:
    """Accumulates one method's target ranks and per-row top-k shares."""

    ranks: list[np.ndarray] = field(default_factory=list)
    share_sums: dict[str, float] = field(default_factory=dict)
    share_rows: dict[str, int] = field(default_factory=dict)

    def add_ranks(self, scores: np.ndarray, targets: np.ndarray, num_items: int) -> None:
        """The targets' ranks under `scores`; a target scored -inf is a miss at any k <= N."""
        ranks = target_ranks(scores, targets)
        ranks[~(scores[np.arange(len(targets)), targets] > -np.inf)] = num_items
        self.ranks.append(ranks)

    def add_share(self, metric: str, top: np.ndarray, members: np.ndarray) -> None:
        """Per row, the share of the top-k list (`top`) that is in `members` (rows with an
        empty list are left out)."""
        listed = top.sum(axis=1)
        kept = listed > 0
        has = (top & members).sum(axis=1)
        self.share_sums[metric] = self.share_sums.get(metric, 0.0) + float(
            (has[kept] / listed[kept]).sum())
        self.share_rows[metric] = self.share_rows.get(metric, 0) + int(kept.sum())


def purpose_rng(seed: int, purpose: str) -> np.random.Generator:
    """An rng per purpose, so one protocol's draws don't depend on which others run."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def history_shares(histories: Sequence[np.ndarray], attributes: np.ndarray) -> np.ndarray:
    """(n, V) share of each history's items having each value; 0 for an empty history."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    shares = np.zeros((len(histories), attributes.shape[1]), dtype=np.float64)
    if lengths.sum() == 0:
        return shares
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    case_of = np.repeat(np.arange(len(histories)), lengths)
    has = attributes[flat]
    for v in range(attributes.shape[1]):
        shares[:, v] = np.bincount(case_of, weights=has[:, v], minlength=len(histories))
    return shares / np.maximum(lengths, 1)[:, None]


def pick_by_key(candidates: np.ndarray, key: np.ndarray, rng: np.random.Generator, *, lowest: bool
          ) -> np.ndarray:
    """Per row, the candidate column with the lowest (or highest) key; rng breaks ties."""
    if candidates.shape[1] == 0:  # an attribute with no values at all
        return np.full(len(candidates), NO_GENRE)
    fill = np.inf if lowest else -np.inf
    keyed = np.where(candidates, key, fill)
    best = keyed.min(axis=1) if lowest else keyed.max(axis=1)
    tied = candidates & (keyed == best[:, None])
    draw = rng.random(candidates.shape)  # drawn in full whatever the data: stable streams
    draw[~tied] = -1.0
    choice = draw.argmax(axis=1)
    choice[~candidates.any(axis=1)] = NO_GENRE
    return choice


def choose_positive_genres(shares: np.ndarray, target_attributes: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray:
    """Per case, the target's genre that the history under-represents most (NO_GENRE if none)."""
    return pick_by_key(target_attributes, shares, rng, lowest=True)


def choose_avoided_genres(top_counts: np.ndarray, target_attributes: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
    """Per case, the genre the target lacks that most of its top-k items carry (NO_GENRE if none).

    `top_counts` (n, V) counts the top-k items having each genre.
    """
    candidates = ~target_attributes & (top_counts > 0)
    return pick_by_key(candidates, top_counts.astype(np.float64), rng, lowest=False)


def top_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, C) True for each row's top-k columns with a finite score.

    Columns tied with the k-th best score are all in, so the list is a set independent of
    tie-breaking order (and may hold a few more than k items when scores tie).
    """
    k = min(k, scores.shape[1])
    kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k]
    return (scores >= kth[:, None]) & (scores > -np.inf)


class Scorer:
    """Scores user vectors against the catalogue with padding and history masked."""

    def __init__(self, cases: SteeringCases, mask_history: bool) -> None:
        self.cases = cases
        self.items = np.ascontiguousarray(np.asarray(cases.item_vectors, dtype=np.float32).T)
        self.mask_history = mask_history

    def history_mask(self, rows: np.ndarray) -> np.ndarray:
        """(B, N+1) True where the item is masked for that row: padding and history, not target."""
        mask = np.zeros((len(rows), self.items.shape[1]), dtype=bool)
        mask[:, PADDING] = True
        if self.mask_history:
            histories = [np.asarray(self.cases.histories[r], dtype=np.int64) for r in rows]
            lengths = [len(h) for h in histories]
            if sum(lengths):
                mask[np.repeat(np.arange(len(rows)), lengths), np.concatenate(histories)] = True
            mask[np.arange(len(rows)), self.cases.targets[rows]] = False
        return mask

    def __call__(self, vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, N+1) float32 scores (as served); masked entries and NaN are -inf."""
        scores = np.asarray(vectors, dtype=np.float32) @ self.items
        scores[mask | np.isnan(scores)] = -np.inf
        return scores


def _select(cases: SteeringCases, scorer: Scorer, attributes: np.ndarray, k: int, seed: int,
            batch_size: int, need_avoid: bool) -> _Selection:
    """Choose each case's positive, negative and compound-avoid genres (see module docstring)."""
    target_attrs = attributes[cases.targets]
    shares = history_shares(cases.histories, attributes)
    positive = choose_positive_genres(shares, target_attrs, purpose_rng(seed, "select positive"))
    n = len(cases)
    if not need_avoid:
        none = np.full(n, NO_GENRE)
        return _Selection(positive, none, none.copy())
    plain_counts = np.zeros((n, attributes.shape[1]), dtype=np.float32)
    genre_counts = np.zeros_like(plain_counts)
    by_value = attributes.T
    as_float = attributes.astype(np.float32)
    none = np.full(n, NO_GENRE)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        base = scorer(cases.user_vectors[rows], scorer.history_mask(rows))
        plain_counts[rows] = top_mask(base, k) @ as_float
        allowed = _allowed(by_value, positive[rows], none[rows])
        genre_counts[rows] = top_mask(np.where(allowed, base, -np.inf), k) @ as_float
    negative = choose_avoided_genres(plain_counts, target_attrs,
                                     purpose_rng(seed, "select negative"))
    avoid = choose_avoided_genres(genre_counts, target_attrs, purpose_rng(seed, "select compound"))
    avoid[positive == NO_GENRE] = NO_GENRE
    return _Selection(positive, negative, avoid)


def evaluate_steering(cases: SteeringCases, steerers: dict[str, Steerer], *, render: Render,
                      k: int = 10, seed: int = 0, post_filter_depth: int = 100,
                      mask_history: bool = True, protocols: Sequence[str] = PROTOCOLS,
                      auto: dict[str, AutoExclude] | None = None,
                      overrules: dict[str, Overrules] | None = None, batch_size: int = 1024
                      ) -> dict[str, Any]:
    """Run the steering protocols over `cases` for the baselines and every steerer S.

    Methods per protocol:
    - standard: "backbone", "S" (empty prompt), "S neutral" (a neutral prompt);
    - positive: "backbone", "pre-filter" (restricted to the genre over the whole catalogue),
      "post-filter" (the backbone's top-`post_filter_depth` kept where it has the genre; a
      target outside that list is a miss), "S soft" (steered, all items), "S hybrid" (steered,
      restricted to the genre);
    - negative: "backbone", "hard filter" (forbidden genre removed everywhere), "S soft",
      "S hybrid" (steered, forbidden genre removed);
    - compound: "backbone", "filter" (has the genre and not the avoided one), "S soft",
      "S hybrid" (steered under the same filter);
    - with `auto[S]` (the values `mode="auto"` refuses for each prompt): "S auto" (steered,
      those values' items removed; in standard, for the neutral prompt: "S auto neutral").
    - with `overrules[S]`, S's hybrid and auto rows whose reading their exclusions overrule
      rank by the backbone, as the engine does.
    Metrics: "ndcg@k", "recall@k"; outside standard also "genre_share@k" (share of the top-k
    in the asked genre — for negative, the forbidden one, lower is better) and for compound
    "avoid_share@k" (share in the avoided genre). Top-k lists hold finite scores only; items
    tied with the k-th score all count; a row with an empty list is left out of the shares.

    Returns {"protocols": {name: {"cases", "skipped", "examples", "methods": {method: {metric:
    value}}}}, "k", "history_masked", "post_filter_depth", "attribute", "seed"}; "examples"
    holds the first three cases' {"prompt", "polarity", "genre", "avoid"} (a negative intent
    carries the forbidden genre in "genre", as in dpr.prompts). Prompts are rendered with
    `render` once per case per protocol from an rng seeded by `seed`, and the same prompts go to
    every steerer, each called once per batch of `batch_size` cases per prompt kind.
    """
    auto, overrules = auto or {}, overrules or {}
    unknown_auto = sorted((set(auto) | set(overrules)) - set(steerers))
    if unknown_auto:
        raise ValueError(f"auto exclusions or overrules for unknown steerers {unknown_auto}")
    num_items = cases.catalogue.num_items
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be in 1..{num_items} (the catalogue size), got {k}")
    if post_filter_depth < 1:
        raise ValueError(f"post_filter_depth must be positive, got {post_filter_depth}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown} (known: {', '.join(PROTOCOLS)})")
    for name in steerers:
        if not name or name in BASELINES:
            raise ValueError(f"steerer name {name!r} is empty or clashes with a baseline")

    attributes, names = cases.catalogue.attribute_matrix(cases.attribute)
    scorer = Scorer(cases, mask_history)
    need_avoid = "negative" in protocols or "compound" in protocols
    selection = _select(cases, scorer, attributes, k, seed, batch_size, need_avoid)
    results: dict[str, Any] = {}
    for protocol in protocols:
        include, exclude = _constraints(protocol, selection, len(cases))
        rows = np.flatnonzero(_active(protocol, selection, len(cases)))
        intents = [_intent(protocol, include[r], exclude[r], names, cases.attribute)
                   for r in rows]
        rng = purpose_rng(seed, f"render {protocol}")
        texts = [render(intent, rng) for intent in intents]
        methods = _run_protocol(protocol, rows, texts, include, exclude, cases, scorer,
                                attributes, steerers, auto, overrules, k, post_filter_depth,
                                batch_size)
        results[protocol] = {
            "cases": len(rows),
            "skipped": len(cases) - len(rows),
            "examples": [_example(intent, prompt)
                         for intent, prompt in zip(intents[:3], texts[:3], strict=True)],
            "methods": methods,
        }
    return {"protocols": results, "k": k, "history_masked": mask_history,
            "post_filter_depth": post_filter_depth, "attribute": cases.attribute, "seed": seed}


def _constraints(protocol: str, selection: _Selection, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per case the genre to include and the genre to exclude (NO_GENRE where none)."""
    none = np.full(n, NO_GENRE)
    if protocol == "positive":
        return selection.positive, none
    if protocol == "negative":
        return none, selection.negative
    if protocol == "compound":
        return selection.positive, selection.compound_avoid
    return none, none


def _active(protocol: str, selection: _Selection, n: int) -> np.ndarray:
    """Which cases a protocol evaluates (the rest are skipped)."""
    if protocol == "positive":
        return selection.positive != NO_GENRE
    if protocol == "negative":
        return selection.negative != NO_GENRE
    if protocol == "compound":
        return (selection.positive != NO_GENRE) & (selection.compound_avoid != NO_GENRE)
    return np.ones(n, dtype=bool)


def _intent(protocol: str, include: int, exclude: int, names: list[str], family: str
            ) -> Intent:
    """The intent a case's prompt expresses; `names` maps genre indices to genre names."""
    if protocol == "positive":
        return Intent("positive", value=names[include], family=family)
    if protocol == "negative":
        return Intent("negative", value=names[exclude], family=family)  # refused value: `value`
    if protocol == "compound":
        return Intent("compound", value=names[include], avoid=names[exclude], family=family)
    return Intent("neutral")


def _example(intent: Intent, prompt: str) -> dict[str, str | None]:
    """A prompt with its intent, as recorded in the results."""
    return {"prompt": prompt, "polarity": intent.polarity, "value": intent.value,
            "avoid": intent.avoid}


def _run_protocol(protocol: str, rows: np.ndarray, texts: list[str], include: np.ndarray,
                  exclude: np.ndarray, cases: SteeringCases, scorer: Scorer,
                  attributes: np.ndarray, steerers: dict[str, Steerer],
                  auto: dict[str, AutoExclude], overrules: dict[str, Overrules], k: int, depth: int,
                  batch_size: int) -> dict[str, dict[str, float]]:
    """Every method's metrics on one protocol's cases, in batches."""
    shares = {"positive": {f"genre_share@{k}": include},
              "negative": {f"genre_share@{k}": exclude},
              "compound": {f"genre_share@{k}": include, f"avoid_share@{k}": exclude},
              }.get(protocol, {})
    tallies: dict[str, Tally] = {}
    by_value = attributes.T
    family = cases.attribute

    def record(method: str, scores: np.ndarray, batch: np.ndarray) -> None:
        tally = tallies.setdefault(method, Tally())
        tally.add_ranks(scores, cases.targets[batch], cases.catalogue.num_items)
        if not shares:
            return
        top = top_mask(scores, k)
        for metric, genres in shares.items():
            tally.add_share(metric, top, by_value[genres[batch]])

    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        batch_prompts = texts[start:start + batch_size]
        h = cases.user_vectors[batch]
        mask = scorer.history_mask(batch)
        base = scorer(h, mask)
        allowed = _allowed(by_value, include[batch], exclude[batch])
        excluded = _one_hot(exclude[batch], by_value.shape[0])
        record("backbone", base, batch)
        if protocol != "standard":
            record(_FILTER_NAME[protocol], np.where(allowed, base, -np.inf), batch)
        if protocol == "positive":
            record("post-filter", _post_filter(base, allowed, depth), batch)
        for name, steer in steerers.items():
            overrule = overrules.get(name)
            if protocol == "standard":
                record(name, scorer(_steer(name, steer, h, [""] * len(batch)), mask), batch)
                steered = scorer(_steer(name, steer, h, batch_prompts), mask)
                record(f"{name} neutral", steered, batch)
                if name in auto:
                    record(f"{name} auto neutral",
                           _auto(steered, base, auto[name], overrule, batch_prompts, by_value,
                                 family), batch)
            else:
                steered = scorer(_steer(name, steer, h, batch_prompts), mask)
                record(f"{name} soft", steered, batch)
                hybrid = overruled(steered, base, overrule, batch_prompts, {family: excluded})
                record(f"{name} hybrid", np.where(allowed, hybrid, -np.inf), batch)
                if name in auto:
                    record(f"{name} auto", _auto(steered, base, auto[name], overrule,
                                                 batch_prompts, by_value, family), batch)
    return {method: summarise(tally, k) for method, tally in tallies.items()}


def overruled(steered: np.ndarray, base: np.ndarray, overrule: Overrules | None,
            prompts: Sequence[str], excluded: dict[str, np.ndarray]) -> np.ndarray:
    """`steered` scores, with the rows whose reading `excluded` overrules (`Overrules`) taken from
    `base` (the backbone's scores under the same mask)."""
    if overrule is None or not any(e.any() for e in excluded.values()):
        return steered
    rows = np.asarray(overrule(prompts, excluded), dtype=bool)
    if rows.shape != (len(prompts),):
        raise ValueError(f"overrules gave shape {rows.shape}, expected ({len(prompts)},)")
    return np.where(rows[:, None], base, steered)


def _one_hot(values: np.ndarray, count: int) -> np.ndarray:
    """(B, count) bool: True at each row's value (none for NO_GENRE)."""
    out = np.zeros((len(values), count), dtype=bool)
    has = values != NO_GENRE
    out[np.flatnonzero(has), values[has]] = True
    return out


def _auto(steered: np.ndarray, base: np.ndarray, exclude: AutoExclude, overrule: Overrules | None,
          prompts: list[str], by_value: np.ndarray, family: str) -> np.ndarray:
    """Auto mode's scores: the items of every value the prompt's reading refuses removed, and
    the rows whose reading those exclusions overrule ranked by `base`."""
    refused = np.asarray(exclude(prompts), dtype=bool)  # (B, V)
    if refused.shape != (len(prompts), by_value.shape[0]):
        raise ValueError(f"auto exclusions have shape {refused.shape}, expected "
                         f"({len(prompts)}, {by_value.shape[0]})")
    scores = overruled(steered, base, overrule, prompts, {family: refused})
    dropped = (refused.astype(np.float32) @ by_value.astype(np.float32)) > 0
    return np.where(dropped, -np.inf, scores)


def _allowed(by_value: np.ndarray, include: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """(B, N+1) True where an item passes the row's include/exclude genre constraint."""
    allowed = np.ones((len(include), by_value.shape[1]), dtype=bool)
    has_include = include != NO_GENRE
    allowed[has_include] = by_value[include[has_include]]
    has_exclude = exclude != NO_GENRE
    allowed[has_exclude] &= ~by_value[exclude[has_exclude]]
    return allowed


def _post_filter(scores: np.ndarray, allowed: np.ndarray, depth: int) -> np.ndarray:
    """A re-ranker: the backbone's top-`depth` items that pass the filter; all else unrankable."""
    return np.where(top_mask(scores, depth) & allowed, scores, -np.inf)


def _steer(name: str, steer: Steerer, h: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Call a steerer and check it kept the shape."""
    steered = np.asarray(steer(h, prompts))
    if steered.shape != h.shape:
        raise ValueError(f"steerer {name!r} returned shape {steered.shape} for input {h.shape}")
    return steered


def summarise(tally: Tally, k: int) -> dict[str, float]:
    """Mean NDCG@k, Recall@k and top-k shares (over rows with a non-empty list)."""
    metrics = ranking_metrics(np.concatenate(tally.ranks), k)
    out = {f"ndcg@{k}": metrics[f"ndcg@{k}"], f"recall@{k}": metrics[f"recall@{k}"]}
    for metric, total in tally.share_sums.items():
        rows = tally.share_rows[metric]
        out[metric] = total / rows if rows else math.nan
    return out


def ratios(results: dict[str, Any], protocol: str, numerator: str, denominator: str,
           metric: str = "ndcg@10") -> float:
    """`metric` of method `numerator` over that of `denominator` in one protocol (NaN if 0/0)."""
    try:
        methods = results["protocols"][protocol]["methods"]
    except KeyError:
        raise KeyError(f"no protocol {protocol!r} in the results") from None
    for method in (numerator, denominator):
        if method not in methods:
            raise KeyError(f"no method {method!r} in protocol {protocol!r} "
                           f"(known: {', '.join(methods)})")
    top, bottom = methods[numerator][metric], methods[denominator][metric]
    if bottom == 0:
        return math.nan if top == 0 else math.inf
    return top / bottom
