"""A seeded synthetic movie catalogue with learnable sequential structure.

Items get readable titles ("The Silent Harbor (1987)"), 1–3 MovieLens-spelled genres and a
skewed popularity. Some items form series (sequels follow their predecessor), and every item
has a few fixed "related" items of its main genre, the titles people tend to watch next.
Each user likes a mix of genres that drifts towards a second mix over their history, and
picks the next item by, in turn: the sequel of the last item, an item related to a recent
one, or a popular item of the current taste. A model that reads the recent items can thus
predict the next one far better than popularity alone. Same seed, same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpr.data.dataset import Interactions, ItemMetadata, SequenceDataset
from dpr.data.preprocess import build_dataset

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation",
          "Children's", "Documentary", "Fantasy", "Crime", "Musical", "War", "Western", "Mystery")
"""Genre names, spelled as MovieLens spells them."""

_SHARE = np.array([12, 16, 18, 6, 8, 6, 9, 3, 4, 2, 4, 6, 2, 2, 1, 3], dtype=np.float64)
_SHARE /= _SHARE.sum()  # how common each genre is as an item's main genre

_AFFINITY = {
    "Action": ("Thriller", "Sci-Fi", "Crime", "War", "Western"),
    "Comedy": ("Romance", "Children's", "Musical", "Drama"),
    "Drama": ("Romance", "War", "Crime", "Thriller"),
    "Horror": ("Thriller", "Sci-Fi", "Mystery"),
    "Romance": ("Comedy", "Drama", "Musical"),
    "Sci-Fi": ("Action", "Thriller", "Horror", "Fantasy"),
    "Thriller": ("Crime", "Mystery", "Action", "Horror"),
    "Animation": ("Children's", "Comedy", "Fantasy", "Musical"),
    "Children's": ("Animation", "Comedy", "Fantasy"),
    "Documentary": ("War", "Musical", "Drama"),
    "Fantasy": ("Sci-Fi", "Children's", "Animation", "Action"),
    "Crime": ("Thriller", "Drama", "Mystery"),
    "Musical": ("Comedy", "Romance", "Animation"),
    "War": ("Drama", "Action"),
    "Western": ("Action", "Drama", "Comedy"),
    "Mystery": ("Thriller", "Crime", "Horror"),
}
"""Genres that often accompany a main genre (the source of second and third genres)."""

_MOOD = {"Horror": "dark", "Thriller": "dark", "Crime": "dark", "Mystery": "dark", "War": "dark",
         "Comedy": "light", "Romance": "light", "Children's": "light", "Animation": "light",
         "Musical": "light"}  # every other genre is "epic"

_WORDS = {
    "dark": (("Silent", "Hollow", "Crimson", "Broken", "Cold", "Midnight", "Forgotten", "Black",
              "Bitter", "Buried", "Last", "Shadowed", "Drowned", "Quiet", "Burning", "Pale"),
             ("Harbor", "House", "Witness", "Shadow", "Alley", "Verdict", "Cellar", "Frontier",
              "Bridge", "Stranger", "Signal", "Orchard", "Ward", "Winter", "Debt", "Tide")),
    "light": (("Sunny", "Little", "Lucky", "Crazy", "Sweet", "Happy", "Golden", "Dancing",
               "Summer", "Merry", "Wild", "Tiny", "Jolly", "Bright", "Funny", "Starry"),
              ("Picnic", "Wedding", "Parade", "Holiday", "Garden", "Puppy", "Bakery", "Song",
               "Weekend", "Circus", "Neighbor", "Kite", "Road Trip", "Party", "Heart", "Dream")),
    "epic": (("Iron", "Distant", "Rising", "Endless", "Lost", "Great", "Eternal", "Savage",
              "Northern", "Hidden", "Final", "Thunder", "Red", "Ancient", "Steel", "Wandering"),
             ("Kingdom", "Planet", "River", "Empire", "Mountain", "Voyage", "Storm", "Legend",
              "Horizon", "Desert", "Crown", "Machine", "Fortress", "Star", "Valley", "Odyssey")),
}
_PATTERNS = ("The {a} {n}", "{a} {n}", "The {n} of the {n2}", "A {a} {n}", "{n} in the {n2}",
             "Return to the {a} {n}")
_SEQUEL = ("", " II", " III", " IV", " V", " VI")
_SERIES_SIZES = (1, 2, 3, 4, 5)
_SERIES_SHARE = (0.55, 0.2, 0.14, 0.07, 0.04)
FIRST_ITEM_ID = 1001
"""External item ids are FIRST_ITEM_ID.. (deliberately unlike the internal ids 1..N)."""


@dataclass
class _Items:
    """The generated catalogue, indexed 0..N-1."""

    genres: list[tuple[str, ...]]
    weights: np.ndarray       # (N, G): 1 for the main genre, 0.5 for the others
    popularity: np.ndarray    # (N,)
    successor: np.ndarray     # (N,): next item of the series, -1 if none
    related: list[np.ndarray] # per item, the items often watched next
    titles: list[str]


def generate_catalogue(
    num_users: int = 1000,
    num_items: int = 500,
    *,
    seed: int = 0,
    min_length: int = 20,
    max_length: int = 80,
    series_follow: float = 0.6,
    related_follow: float = 0.45,
    taste_drift: float = 0.6,
) -> tuple[Interactions, ItemMetadata]:
    """Generate users' histories and the item catalogue, deterministically from `seed`.

    Histories have between `min_length` and `max_length` distinct items (capped at half the
    catalogue), skewed towards short. `series_follow` is the chance of watching the sequel
    of the last item next, `related_follow` that of an item related to a recent one;
    `taste_drift` (0..1) is how far a user's genre mix moves over their history.
    User ids are 1..num_users, item ids FIRST_ITEM_ID..; timestamps are int seconds,
    strictly increasing per user; ratings 1..5 reflect how well an item fits the user's taste.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need at least 1 user and 2 items, got {num_users} and {num_items}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    rng = np.random.default_rng(seed)
    items = _make_items(rng, num_items)
    longest = min(max_length, max(2, num_items // 2))
    lengths = _lengths(rng, num_users, min(min_length, longest), longest)
    interactions = _make_histories(rng, items, lengths, series_follow, related_follow,
                                   taste_drift)
    interactions.source = f"synthetic(seed={seed})"
    ids = list(range(FIRST_ITEM_ID, FIRST_ITEM_ID + num_items))
    metadata = ItemMetadata(ids, items.titles, {"genre": items.genres},
                            source=interactions.source)
    return interactions, metadata


def synthetic_dataset(
    num_users: int = 1000,
    num_items: int = 500,
    *,
    seed: int = 0,
    min_length: int = 20,
    max_length: int = 80,
    min_rating: float | None = None,
    k_core: int = 5,
) -> SequenceDataset:
    """`generate_catalogue` through `build_dataset`; the defaults lose (almost) nothing to the
    k-core filter and train a small model in well under a minute on a laptop CPU."""
    interactions, metadata = generate_catalogue(num_users, num_items, seed=seed,
                                                min_length=min_length, max_length=max_length)
    return build_dataset(interactions, metadata, name="synthetic", min_rating=min_rating,
                         k_core=k_core)


# --- the catalogue -------------------------------------------------------------------------

def _make_items(rng: np.random.Generator, n: int) -> _Items:
    main = rng.choice(len(GENRES), size=n, p=_SHARE)
    genres = [_item_genres(rng, int(g)) for g in main]
    weights = np.zeros((n, len(GENRES)))
    for i, values in enumerate(genres):
        weights[i, [GENRES.index(v) for v in values]] = 0.5
        weights[i, main[i]] = 1.0
    popularity = 0.3 + rng.lognormal(0.0, 1.0, size=n)
    series = _series(rng, main)
    successor = np.full(n, -1, dtype=np.int64)
    for members in series:
        successor[members[:-1]] = members[1:]
        popularity[members[1:]] *= 0.8  # sequels are a little less popular than the original
        for sequel in members[1:]:  # and have the original's genres
            genres[sequel], weights[sequel] = genres[members[0]], weights[members[0]]
    titles = _titles(rng, series, main, n)
    related = _related(rng, main, weights, popularity, per_item=6)
    return _Items(genres, weights, popularity, successor, related, titles)


def _item_genres(rng: np.random.Generator, main: int) -> tuple[str, ...]:
    """Main genre first, then 0–2 more, mostly ones that often go with it."""
    values = [GENRES[main]]
    extra = rng.choice(3, p=(0.45, 0.4, 0.15))
    while len(values) < 1 + extra:
        pool = _AFFINITY[GENRES[main]] if rng.random() < 0.8 else GENRES
        candidate = pool[rng.integers(len(pool))]
        if candidate not in values:
            values.append(candidate)
    return tuple(values)


def _series(rng: np.random.Generator, main: np.ndarray) -> list[np.ndarray]:
    """Partition items into series (most of size 1) of the same main genre, in watch order."""
    series = []
    for g in range(len(GENRES)):
        members = rng.permutation(np.flatnonzero(main == g))
        start = 0
        while start < len(members):
            size = int(rng.choice(_SERIES_SIZES, p=_SERIES_SHARE))
            series.append(members[start:start + size])
            start += size
    return series


def _titles(rng: np.random.Generator, series: list[np.ndarray], main: np.ndarray,
            n: int) -> list[str]:
    """'Base Title (year)'; a series shares its base title, sequels numbered II, III, ..."""
    titles = [""] * n
    used: set[str] = set()
    for members in series:
        base = _base_title(rng, _MOOD.get(GENRES[main[members[0]]], "epic"), used)
        year = 1950 + int(50 * rng.beta(2.5, 1.0))
        for k, item in enumerate(members):
            titles[item] = f"{base}{_SEQUEL[k] if k < len(_SEQUEL) else f' {k + 1}'} ({year})"
            year += int(rng.integers(2, 5))
    return titles


def _base_title(rng: np.random.Generator, mood: str, used: set[str]) -> str:
    """A title from the word lists of a mood (dark, light or epic)."""
    adjectives, nouns = _WORDS[mood]
    title = ""
    for _ in range(20):  # prefer an unused title; large catalogues may repeat some
        pattern = _PATTERNS[rng.integers(len(_PATTERNS))]
        n1, n2 = rng.choice(len(nouns), size=2, replace=False)
        title = pattern.format(a=adjectives[rng.integers(len(adjectives))], n=nouns[n1],
                               n2=nouns[n2])
        if title not in used:
            break
    used.add(title)
    return title


def _related(rng: np.random.Generator, main: np.ndarray, weights: np.ndarray,
             popularity: np.ndarray, per_item: int) -> list[np.ndarray]:
    """Per item, `per_item` other items having its main genre, drawn by popularity."""
    n = len(main)
    having = [np.flatnonzero(weights[:, g] > 0) for g in range(weights.shape[1])]
    related = []
    for i in range(n):
        pool = having[main[i]]
        pool = pool[pool != i]
        if len(pool) == 0:
            pool = np.delete(np.arange(n), i)
        related.append(pool[_weighted_sample(rng, popularity[pool], per_item)])
    return related


# --- the histories -------------------------------------------------------------------------

def _lengths(rng: np.random.Generator, num_users: int, shortest: int, longest: int) -> np.ndarray:
    spread = rng.beta(1.2, 2.5, size=num_users) * (longest - shortest + 1)
    return np.minimum(shortest + spread.astype(np.int64), longest)


def _taste(rng: np.random.Generator, keep: int | None = None) -> np.ndarray:
    """A genre mix concentrated on 2–4 genres (one of them `keep`, if given)."""
    liked = _weighted_sample(rng, _SHARE, int(rng.integers(2, 5)))
    if keep is not None and keep not in liked:
        liked[0] = keep
    taste = np.full(len(GENRES), 0.02)
    taste[liked] += rng.dirichlet(np.ones(len(liked)))
    return taste / taste.sum()


def _weighted_sample(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """`k` distinct indices drawn in turn with probability proportional to `weights`
    (the Gumbel top-k trick: one vectorised draw instead of k renormalisations)."""
    keys = np.log(weights) + rng.gumbel(size=len(weights))
    return np.argsort(-keys, kind="stable")[:k]


def _make_histories(rng: np.random.Generator, items: _Items, lengths: np.ndarray,
                    series_follow: float, related_follow: float,
                    taste_drift: float) -> Interactions:
    users, picked, ratings, times = [], [], [], []
    for user, length in enumerate(lengths.tolist(), start=1):
        history, rating = _history(rng, items, length, series_follow, related_follow,
                                   taste_drift)
        start = 946_684_800 + int(rng.integers(0, 3 * 365 * 86_400))  # 2000–2002
        gaps = 1 + rng.exponential(2 * 86_400, size=length).astype(np.int64)
        users.append(np.full(length, user, dtype=np.int64))
        picked.append(history + FIRST_ITEM_ID)
        ratings.append(rating)
        times.append(start + np.cumsum(gaps))
    return Interactions(np.concatenate(users), np.concatenate(picked), np.concatenate(ratings),
                        np.concatenate(times))


@dataclass
class _Taste:
    """How well each item fits a user at a point of their history: first + mix * shift."""

    first: np.ndarray
    shift: np.ndarray

    def at(self, mix: float, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            return self.first + mix * self.shift
        return self.first[rows] + mix * self.shift[rows]


def _history(rng: np.random.Generator, items: _Items, length: int, series_follow: float,
             related_follow: float, taste_drift: float) -> tuple[np.ndarray, np.ndarray]:
    """One user's items (0-based, distinct) and ratings."""
    first = _taste(rng)
    second = _taste(rng, keep=int(np.argmax(first)))
    taste = _Taste(items.weights @ first, items.weights @ (second - first))
    mixes = taste_drift * np.arange(length) / max(length - 1, 1)
    available = items.popularity.copy()  # popularity, zeroed once an item is seen
    history = np.empty(length, dtype=np.int64)
    draws = rng.random((length, 4))
    for t in range(length):
        item = _next_item(items, history[:t], available, taste, float(mixes[t]), draws[t],
                          series_follow, related_follow)
        history[t], available[item] = item, 0.0
    return history, _ratings(rng, taste, mixes, history)


def _ratings(rng: np.random.Generator, taste: _Taste, mixes: np.ndarray,
             history: np.ndarray) -> np.ndarray:
    """1..5 stars: higher the better the item fits the taste of the moment, plus noise."""
    fits = taste.first[None, :] + mixes[:, None] * taste.shift[None, :]  # (length, N)
    relative = fits[np.arange(len(history)), history] / fits.max(axis=1)
    noise = rng.normal(0.0, 0.7, size=len(history))
    return np.clip(np.rint(1.5 + 3.5 * relative + noise), 1, 5)


def _next_item(items: _Items, history: np.ndarray, available: np.ndarray, taste: _Taste,
               mix: float, draw: np.ndarray, series_follow: float,
               related_follow: float) -> int:
    """Sequel of the last item, else an item related to a recent one, else a popular fit."""
    if len(history):
        sequel = items.successor[history[-1]]
        if sequel >= 0 and available[sequel] > 0 and draw[0] < series_follow:
            return int(sequel)
        recent = history[-3:]
        anchor = recent[-1] if draw[1] < 0.7 else recent[int(draw[1] * 10) % len(recent)]
        pool = items.related[anchor]
        pool = pool[available[pool] > 0]
        if len(pool) and draw[2] < related_follow:
            return _weighted_pick(pool, available[pool] * taste.at(mix, pool), draw[3])
    fit = taste.at(mix)
    return _weighted_pick(None, available * fit * fit, draw[3])


def _weighted_pick(candidates: np.ndarray | None, weights: np.ndarray, u: float) -> int:
    """The candidate (or index, without candidates) at quantile `u` of the weights;
    an item of zero weight is never picked."""
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    if index >= len(weights):  # u * total rounded up to total
        index = int(np.flatnonzero(weights > 0)[-1])
    return index if candidates is None else int(candidates[index])
