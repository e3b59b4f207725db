"""Steering episodes for stage 3, drawn from the training prefixes only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dpr.data.dataset import ItemCatalogue, LeaveOneOutSplit
from dpr.prompts.grammar import Grammar
from dpr.prompts.intent import POLARITIES, Intent


@dataclass(frozen=True)
class ValueRange:
    """A range of one family's values a prompt can name at once ("older than 1980"), as
    indices into the steered columns, with the polarities the grammar can render it in."""

    columns: tuple[int, ...]
    asked: bool
    refused: bool


def value_ranges(grammar: Grammar, columns: Sequence[tuple[str, str]], split: str = "train"
                 ) -> list[ValueRange]:
    """Every range of `split`'s forms over the steered `columns` ((family, value) pairs)."""
    index = {pair: j for j, pair in enumerate(columns)}
    found: dict[tuple[int, ...], set[str]] = {}
    for family in dict.fromkeys(f for f, _ in columns):
        for polarity in ("asked", "refused"):
            for values in grammar.ranges_of(family, split, polarity):
                if all((family, v) in index for v in values):
                    key = tuple(index[family, v] for v in values)
                    found.setdefault(key, set()).add(polarity)
    return [ValueRange(key, "asked" in p, "refused" in p) for key, p in found.items()]


@dataclass
class Episodes:
    """Steering episodes for training, as equal-length numpy arrays.

    Episode i: user `user[i]` (a row of `split.train`), history
    `split.train[user][:position]`, target `split.train[user][position]` (= `target[i]`),
    polarity index into `POLARITIES`, and `value` / `avoid` / `also` indices into `columns`,
    the steered (family, value) pairs (-1 where the polarity has none: `value` for neutral,
    `avoid` unless compound; `also`, a second asked value of a later family, for some positive
    and compound episodes: `Intent.also`). `span`, where >= 0, indexes `ranges`: the episode's
    prompt names that whole range (asked for a positive, refused for a negative episode), of
    which `value` is one member.
    """

    user: np.ndarray
    position: np.ndarray
    target: np.ndarray
    polarity: np.ndarray
    value: np.ndarray
    avoid: np.ndarray
    also: np.ndarray
    columns: list[tuple[str, str]]
    span: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ranges: list[ValueRange] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.span) != len(self.user):
            self.span = np.full(len(self.user), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.user)


def intent_of(episodes: Episodes, i: int) -> Intent:
    """The intent of episode `i`."""
    polarity = POLARITIES[int(episodes.polarity[i])]
    g, a, x = int(episodes.value[i]), int(episodes.avoid[i]), int(episodes.also[i])
    family, value = episodes.columns[g] if g >= 0 else (episodes.columns[0][0], None)
    avoid_family, avoid = episodes.columns[a] if a >= 0 else (None, None)
    r = int(episodes.span[i])
    span = (tuple(episodes.columns[c][1] for c in episodes.ranges[r].columns) if r >= 0
            else ())
    return Intent(polarity, value, avoid, family=family,
                  avoid_family=avoid_family if avoid_family != family else None,
                  also=episodes.columns[x] if x >= 0 else None, values=span)


DEFAULT_MIX = {"positive": 0.35, "negative": 0.3, "compound": 0.2, "neutral": 0.15}
"""Share of each polarity among steering episodes."""
ALSO_SHARE = 0.3
"""Share of positive and compound episodes (whose target has a value in a family after the
asked one's) that also ask for that value ("a 90s comedy")."""
RANGE_SHARE = 0.3
"""Share of the other positive and negative episodes that name a range holding the value
instead of the value alone, where one fits (`steering_episodes`' `ranges`)."""

_POS, _NEG, _NEU, _COM = (POLARITIES.index(p) for p in ("positive", "negative", "neutral",
                                                         "compound"))
_CHUNK = 1 << 16  # episodes handled at once, to bound the (episodes x values) temporaries


def _mix_probabilities(mix: dict[str, float] | None) -> np.ndarray:
    mix = DEFAULT_MIX if mix is None else mix
    unknown = sorted(set(mix) - set(POLARITIES))
    if unknown:
        raise ValueError(f"mix has unknown polarities {unknown} (expected {POLARITIES})")
    p = np.array([float(mix.get(k, 0.0)) for k in POLARITIES])
    if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"mix must hold non-negative shares with a positive sum, got {mix}")
    return p / p.sum()


def _positions(lengths: np.ndarray, rng: np.random.Generator,
               per_user: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(user, position) of the chosen training positions (position >= 1), sorted."""
    counts = np.maximum(lengths - 1, 0)
    user = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts  # index in `user` where each user's positions begin
    position = np.arange(len(user), dtype=np.int64) - np.repeat(first, counts) + 1
    if per_user is None:
        return user, position
    if per_user < 1:
        raise ValueError(f"positions_per_user must be positive or None, got {per_user}")
    # Sample without replacement per user: random keys, sort within user, keep the first k.
    order = np.lexsort((rng.random(len(user)), user))
    rank = np.arange(len(user)) - np.repeat(first, counts)
    keep = np.sort(order[rank < per_user])
    return user[keep], position[keep]


def _pick(scores: np.ndarray, allowed: np.ndarray, lowest: bool) -> np.ndarray:
    """Per row, the column with the lowest (or highest) score among `allowed` ones."""
    fill = np.inf if lowest else -np.inf
    masked = np.where(allowed, scores, fill)
    return masked.argmin(axis=1) if lowest else masked.argmax(axis=1)


def steering_episodes(split: LeaveOneOutSplit, catalogue: ItemCatalogue, *,
                      families: Sequence[str] = ("genre",), rng: np.random.Generator,
                      positions_per_user: int | None = None,
                      mix: dict[str, float] | None = None,
                      prefer: float = 0.7, recent: int = 20,
                      ranges: Sequence[ValueRange] = ()) -> Episodes:
    """Steering episodes over the training prefixes of `split` (never a validation/test target).

    Positions: every training position >= 1 (`positions_per_user=None`) or that many per user,
    drawn without replacement. Each gets a polarity drawn from `mix` (default `DEFAULT_MIX`), a
    family drawn uniformly from `families` (and, for a compound, a second one for the refused
    value, so compounds mix families), and values of those families as follows:
    - positive: a value of the target; with probability `prefer` the one the history
      `train[u][:position]` holds least often (as the evaluation protocol does), otherwise any;
    - negative: a value the target lacks; with probability `prefer` the one most frequent in
      the last `recent` history items, otherwise any;
    - compound: the asked value as for positive; the avoided one, with probability `prefer`,
      the lacked value that best combines co-occurring with the asked value in the catalogue
      and being frequent in the recent history (the evaluation avoids the value that fills
      the value-filtered top-10), otherwise any the target lacks;
    - neutral: no value.
    A polarity the target cannot carry in the drawn family (an item with no value there, or
    with all of them) falls back to one it can (positive <-> negative, compound -> either, else
    neutral). With several families, `ALSO_SHARE` of the positive and compound episodes also
    ask for one of the target's values in a family listed after the asked value's. Of the
    other positive and negative episodes, `RANGE_SHARE` name one of `ranges` instead: a request
    for a range holding the asked value, a refusal of a range holding the refused value and
    none of the target's. Ties are broken at random. Deterministic for a given `rng` state.
    """
    if not 0.0 <= prefer <= 1.0:
        raise ValueError(f"prefer must lie in [0, 1], got {prefer}")
    if recent < 1:
        raise ValueError(f"recent must be positive, got {recent}")
    if not families:
        raise ValueError("steering episodes need at least one attribute family")
    p = _mix_probabilities(mix)
    families = list(families)
    has, columns = catalogue.steered_matrix(families)  # (N+1, A) bool
    num_columns = len(columns)
    of_family = np.array([[f == family for f, _ in columns] for family in families])
    of_later_family = np.array([[families.index(f) > i for f, _ in columns]
                                for i in range(len(families))])

    lengths = np.array([len(t) for t in split.train], dtype=np.int64)
    flat = (np.concatenate(split.train).astype(np.int64) if len(split.train)
            else np.zeros(0, dtype=np.int64))
    starts = np.cumsum(lengths) - lengths
    # cum[j] = value counts over flat[:j]; a history's counts are differences of two rows.
    cum = np.zeros((len(flat) + 1, num_columns), dtype=np.int32)
    np.cumsum(has[flat], axis=0, out=cum[1:])

    # together[g, v]: share of the items having value g that also have value v.
    counts = has[1:].T.astype(np.int64) @ has[1:].astype(np.int64)
    together = counts / np.maximum(np.diag(counts), 1)[:, None]

    user, position = _positions(lengths, rng, positions_per_user)
    n = len(user)
    at = starts[user] + position  # flat index of each target
    target = flat[at]
    polarity = rng.choice(len(POLARITIES), size=n, p=p).astype(np.int8)
    family = rng.integers(len(families), size=(n, 2))
    value = np.full(n, -1, dtype=np.int64)
    avoid = np.full(n, -1, dtype=np.int64)
    also = np.full(n, -1, dtype=np.int64)
    span = np.full(n, -1, dtype=np.int64)
    ranges = list(ranges)
    in_range = np.zeros((num_columns, len(ranges)), dtype=bool)  # column x range
    for r, value_range in enumerate(ranges):
        in_range[list(value_range.columns), r] = True
    range_asked = np.array([r.asked for r in ranges], dtype=bool)
    range_refused = np.array([r.refused for r in ranges], dtype=bool)

    for lo in range(0, n, _CHUNK):
        s = slice(lo, min(lo + _CHUNK, n))
        target_has = has[target[s]]
        in_family, in_avoid_family = of_family[family[s, 0]], of_family[family[s, 1]]
        askable = target_has & in_family
        forbiddable = ~target_has & in_family
        avoidable = ~target_has & in_avoid_family
        can_ask, can_forbid = askable.any(axis=1), forbiddable.any(axis=1)
        pol = polarity[s]
        pol[(pol == _COM) & can_ask & ~avoidable.any(axis=1)] = _POS
        pol[(pol == _COM) & ~can_ask] = _NEG
        pol[(pol == _POS) & ~can_ask] = _NEG
        pol[(pol == _NEG) & ~can_forbid] = _POS
        pol[((pol == _POS) & ~can_ask) | ((pol == _NEG) & ~can_forbid)] = _NEU

        m = len(pol)
        history = cum[at[s]] - cum[starts[user[s]]]
        recent_counts = cum[at[s]] - cum[starts[user[s]] + np.maximum(position[s] - recent, 0)]
        jitter = rng.random((m, num_columns)) * 0.5  # random tie-break, below one count
        underrepresented = _pick(history + jitter, askable, lowest=True)
        frequent = _pick(recent_counts + jitter, forbiddable, lowest=False)
        noise = rng.random((m, num_columns))
        any_asked = _pick(noise, askable, lowest=False)
        any_forbidden = _pick(noise, forbiddable, lowest=False)
        any_avoided = _pick(noise, avoidable, lowest=False)
        preferred = rng.random((m, 2)) < prefer
        asked = np.where(preferred[:, 0], underrepresented, any_asked)
        forbidden = np.where(preferred[:, 1], frequent, any_forbidden)
        # Compound: avoid what comes along with the asked value and the user watches.
        along = (together[asked] + 0.05) * (recent_counts + 1) + jitter * 1e-3
        companion = _pick(along, avoidable, lowest=False)
        avoided = np.where(preferred[:, 1], companion, any_avoided)

        g = np.full(m, -1, dtype=np.int64)
        a = np.full(m, -1, dtype=np.int64)
        wants = (pol == _POS) | (pol == _COM)
        g[wants] = asked[wants]
        g[pol == _NEG] = forbidden[pol == _NEG]
        a[pol == _COM] = avoided[pol == _COM]
        alsoable = target_has & of_later_family[family[s, 0]]
        second = _pick(rng.random((m, num_columns)), alsoable, lowest=False)
        x = np.where(wants & alsoable.any(axis=1) & (rng.random(m) < ALSO_SHARE), second, -1)
        value[s], avoid[s], also[s] = g, a, x
        if ranges:
            touches = (target_has.astype(np.int32) @ in_range.astype(np.int32)) > 0
            holds = in_range[np.maximum(g, 0)]
            fits = np.where((pol == _POS)[:, None], holds & range_asked,
                            holds & ~touches & range_refused)
            named = (((pol == _POS) | (pol == _NEG)) & (x < 0) & fits.any(axis=1)
                     & (rng.random(m) < RANGE_SHARE))
            picked = _pick(rng.random((m, len(ranges))), fits, lowest=False)
            span[s] = np.where(named, picked, -1)

    return Episodes(user=user, position=position, target=target, polarity=polarity,
                    value=value, avoid=avoid, also=also,
                    columns=[(str(f), str(v)) for f, v in columns], span=span, ranges=ranges)
