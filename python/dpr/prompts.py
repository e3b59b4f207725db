"""Intents, prompt templates and steering episodes.

A prompt expresses an *intent* about an item attribute (genre): ask for a value (positive),
forbid one (negative), both at once (compound), or nothing in particular (neutral). Intents are
rendered into text from templates with `{genre}` / `{avoid}` slots, filled with one of the
value's surface forms ("Sci-Fi" -> "sci-fi", "science fiction", "scifi"). Training uses
`TRAIN_WORDINGS`; `HELDOUT_WORDINGS` uses other verbs and sentence forms and is never trained on,
so it measures whether steering generalises beyond the templates.

`steering_episodes` draws the training episodes for stage 3 from the training prefixes only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dpr.data.dataset import ItemCatalogue, LeaveOneOutSplit

POLARITIES = ("positive", "negative", "neutral", "compound")
"""Intent kinds; `Episodes.polarity` indexes this tuple."""

_SLOTS = ("genre", "avoid")
_SLOT = re.compile(r"\{([^{}]*)\}")
# An indefinite article right before a slot is fixed to fit the value ("an action movie").
_FILL = re.compile(r"(?:\b([Aa])n? )?\{(genre|avoid)\}")


@dataclass(frozen=True)
class Intent:
    """What a prompt asks for.

    `genre` is the attribute value asked for (positive, compound) or forbidden (negative), in
    the dataset's spelling ("Sci-Fi", "Children's"); `avoid` is the forbidden value of a
    compound intent. Neutral intents carry no value (a given `genre` is ignored).
    """

    polarity: str
    genre: str | None = None
    avoid: str | None = None

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ValueError(f"intent polarity must be one of {POLARITIES}, got {self.polarity!r}")
        if self.polarity in ("positive", "negative", "compound") and not self.genre:
            raise ValueError(f"a {self.polarity} intent needs a genre")
        if self.polarity == "compound" and not self.avoid:
            raise ValueError("a compound intent needs an avoid genre")


@dataclass(frozen=True)
class Wordings:
    """Prompt templates per polarity; `{genre}` and `{avoid}` are the slots.

    Positive and negative templates contain `{genre}`, compound ones `{genre}` and `{avoid}`,
    neutral ones no slot. A slot is always used as a modifier ("a {genre} movie",
    "no {genre} stuff") so that every surface form reads naturally.
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    neutral: tuple[str, ...]
    compound: tuple[str, ...]

    def of(self, polarity: str) -> tuple[str, ...]:
        """The templates of one polarity."""
        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
        return getattr(self, polarity)


TRAIN_WORDINGS = Wordings(
    positive=(
        "I want to watch a {genre} movie.",
        "Recommend me a {genre} movie.",
        "Can you suggest a good {genre} flick?",
        "{genre} movies, please.",
        "In the mood for a {genre} movie tonight.",
        "Show me some {genre} titles.",
        "Looking for {genre} stuff.",
        "Any good {genre} movies?",
        "I would like to see a {genre} movie.",
        "Give me a {genre} pick.",
        "Next up: a {genre} movie.",
        "I'd love a {genre} flick right now.",
        "Find me {genre} movies.",
        "Please recommend {genre} titles for this evening.",
        "Got any {genre} recommendations?",
        "I really feel like watching a {genre} movie.",
        "Let me see your {genre} picks.",
        "I'm into {genre} movies lately.",
        "Suggest a few {genre} flicks.",
        "More {genre} movies, please.",
        "I need a {genre} movie tonight.",
        "Bring on the {genre} movies!",
        "Do you have a {genre} movie for me?",
        "Play a {genre} movie.",
        "I fancy a {genre} movie.",
        "Could you list some {genre} titles?",
        "A {genre} movie would be perfect right now.",
        "My pick tonight: something from the {genre} shelf.",
        "{genre} please.",
        "Some {genre}.",
        "Something {genre}.",
        "{genre} tonight.",
        "yes to {genre}",
        # Contexts that also occur in negative templates, so that polarity is read from the
        # words that carry it and not from "this time", "for me", "stuff" or "nothing".
        "A {genre} movie this time.",
        "This time I want {genre} titles.",
        "{genre} for me, please.",
        "Something with a {genre} vibe.",
        "Add {genre} movies to my suggestions.",
        "Keep the {genre} flicks coming.",
        "I love {genre} movies.",
        "{genre}? Yes, please.",
        "I'm a big fan of {genre} stuff.",
        "Nothing but {genre} movies tonight.",
        "{genre} today, thanks.",
        # Requests for one genre alone, which a sentence encoder easily reads as refusals.
        "Strictly {genre} movies tonight.",
        "Exclusively {genre} titles, please.",
        "{genre} and nothing else.",
        "All {genre} this time.",
        "I want {genre} movies and nothing else this time.",
        "Stick to {genre} movies for me.",
        "Solely {genre} flicks tonight.",
        "I'm sticking with {genre} movies this time.",
    ),
    negative=(
        "No {genre} movies, please.",
        "I don't want a {genre} movie.",
        "Skip the {genre} stuff.",
        "Avoid {genre} movies.",
        "Please don't recommend {genre} titles.",
        "Anything except {genre} movies.",
        "I'm not in the mood for a {genre} movie.",
        "Can you leave out the {genre} stuff?",
        "Not a {genre} movie this time.",
        "Exclude {genre} flicks.",
        "I'd rather not watch {genre} movies tonight.",
        "Keep {genre} titles out of my list.",
        "I hate {genre} movies.",
        "I'm tired of {genre} movies.",
        "No more {genre} flicks.",
        "Recommend something without {genre} in it.",
        "None of that {genre} stuff.",
        "Don't show me {genre} movies.",
        "Stop recommending {genre} titles.",
        "I'm not into {genre} movies.",
        "I'll pass on {genre} movies today.",
        "Keep away from {genre} flicks.",
        "Remove the {genre} movies from my suggestions.",
        "I'm fed up with {genre} stuff.",
        "Not feeling a {genre} movie tonight.",
        "I dislike {genre} movies.",
        "No {genre} please.",
        "no {genre}",
        "Nothing {genre}.",
        "Not {genre}.",
        "Something, but not {genre}.",
        "{genre}? No thanks.",
        "no to {genre}",
        # Contexts that also occur in positive templates (see above).
        "Can you suggest a good movie that isn't a {genre} one?",
        "Find me movies, but no {genre} ones.",
        "Show me some titles, but nothing {genre}.",
        "Recommend me a movie that's not a {genre} movie.",
        "Play something other than a {genre} movie.",
        "I want to watch a movie, not a {genre} one.",
        "Less {genre} stuff, please.",
        "Please, no {genre} flicks this time.",
        "A {genre} movie is the last thing I want tonight.",
        "Give me a pick that isn't {genre}.",
    ),
    neutral=(
        "Recommend me a movie.",
        "What should I watch?",
        "Anything is fine.",
        "Just pick something good.",
        "Show me some movies.",
        "Any suggestions for tonight?",
        "I'm bored, find me something to watch.",
        "Give me a good movie.",
        "Whatever you think I'd like.",
        "Something to watch, please.",
        "Next movie?",
        "What's next on my list?",
    ),
    compound=(
        "A {genre} movie, but no {avoid} stuff.",
        "I want {genre} movies without any {avoid} elements.",
        "Recommend a {genre} flick that isn't a {avoid} movie.",
        "{genre} titles please, but skip the {avoid} ones.",
        "Looking for a {genre} movie; no {avoid} movies though.",
        "Show me {genre} movies and leave out {avoid} titles.",
        "Something {genre}, but no {avoid}.",
        "{genre} but not {avoid}.",
        "{genre}, no {avoid} please.",
        "Something {genre} without {avoid}.",
        "No {avoid}, just {genre}.",
        "I don't want {avoid}; give me {genre}.",
    ),
)
"""Templates used to train the steering modules."""

HELDOUT_WORDINGS = Wordings(
    positive=(
        "What {genre} movie should I watch next?",
        "Feeling like a {genre} movie today.",
        "Craving a {genre} movie.",
        "Put on a {genre} movie for me.",
        "Only {genre} movies this time.",
        "Would love to catch a {genre} movie this weekend.",
        "Surprise me with a {genre} movie.",
        "Hit me with your best {genre} recommendation.",
        "Know a good {genre} movie?",
        "Let's have a {genre} movie night.",
        "I'm up for some {genre} entertainment.",
        "Queue up a few {genre} movies.",
        "Just {genre} for me.",
    ),
    negative=(
        "I'm sick of {genre} movies.",
        "Spare me the {genre} flicks.",
        "Enough with the {genre} movies.",
        "Steer clear of {genre} stuff.",
        "Hold the {genre} movies tonight.",
        "Anything but a {genre} movie.",
        "What can I watch that isn't a {genre} movie?",
        "{genre} movies are off the table.",
        "Please filter out {genre} titles.",
        "Zero {genre} movies, thanks.",
        "I can't stand {genre} movies right now.",
        "Ban {genre} flicks from my feed.",
        "No {genre} for me.",
        "Nothing {genre} tonight, thanks.",
    ),
    neutral=(
        "Surprise me.",
        "Dealer's choice.",
        "I trust your taste.",
        "What's good these days?",
        "Put something on for me.",
        "No preference, really.",
        "Entertain me.",
        "Help me decide what to watch tonight.",
        "Hmm, not sure what I feel like.",
        "Keep the recommendations coming.",
        "The usual, I guess.",
        "Whatever works.",
    ),
    compound=(
        "Craving a {genre} movie minus the {avoid} stuff.",
        "{genre} movies are great, {avoid} movies not so much.",
        "Only {genre} movies, and steer clear of {avoid} flicks.",
        "Could I get a {genre} pick that's free of {avoid} content?",
        "Put on a {genre} movie, just not a {avoid} one.",
        "I'm after a {genre} movie, but I'm sick of {avoid} movies.",
    ),
)
"""Templates never used in training: other verbs and sentence forms, for generalisation tests."""

GENRE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Action": ("action", "action-packed"),
    "Adventure": ("adventure", "adventurous"),
    "Animation": ("animation", "animated", "cartoon"),
    "Children's": ("children's", "kids", "family"),
    "Comedy": ("comedy", "funny", "comedic"),
    "Crime": ("crime", "gangster"),
    "Documentary": ("documentary", "non-fiction"),
    "Drama": ("drama", "dramatic"),
    "Fantasy": ("fantasy", "fairy-tale"),
    "Film-Noir": ("film noir", "noir"),
    "Horror": ("horror", "scary"),
    "Musical": ("musical", "song-and-dance"),
    "Mystery": ("mystery", "whodunit"),
    "Romance": ("romance", "romantic"),
    "Sci-Fi": ("sci-fi", "science fiction", "scifi"),
    "Thriller": ("thriller", "suspense"),
    "War": ("war", "wartime"),
    "Western": ("western", "cowboy"),
}
"""Dataset spelling -> the surface forms a prompt may use for it (first: the plain name).

Every form works as a modifier before a noun ("a {form} movie", "no {form} stuff")."""


def surface_forms(genre: str) -> tuple[str, ...]:
    """The ways a prompt may name `genre`; an unknown genre is named by its lowercased value."""
    return GENRE_SYNONYMS.get(genre, (genre.lower(),))


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill the slots of a template, fixing an indefinite article just before a slot."""

    def one(match: re.Match[str]) -> str:
        value = values[match.group(2)]
        article = match.group(1)
        if article is None:
            return value
        an = value[:1].lower() in "aeiou"
        return f"{article}{'n' if an else ''} {value}"

    text = _FILL.sub(one, template)
    # A sentence that opens with a slot starts with a capital ("Sci-fi movies, please.").
    return text[:1].upper() + text[1:] if template.startswith("{") else text


def render(intent: Intent, wordings: Wordings, rng: np.random.Generator) -> str:
    """One prompt for `intent`: a random template of its polarity and a random surface form per
    slot. Neutral intents ignore `genre`."""
    templates = wordings.of(intent.polarity)
    template = templates[int(rng.integers(len(templates)))]
    values: dict[str, str] = {}
    if intent.polarity != "neutral":
        assert intent.genre is not None
        forms = surface_forms(intent.genre)
        values["genre"] = forms[int(rng.integers(len(forms)))]
    if intent.polarity == "compound":
        assert intent.avoid is not None
        forms = surface_forms(intent.avoid)
        values["avoid"] = forms[int(rng.integers(len(forms)))]
    return _fill(template, values)


_REQUIRED = {"positive": {"genre"}, "negative": {"genre"}, "neutral": set(),
             "compound": {"genre", "avoid"}}


def _check_templates(templates: object, polarity: str, where: str) -> tuple[str, ...]:
    """Validate the templates of one polarity; ValueError naming `where` if they do not fit."""
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{where}: {polarity!r} must be a non-empty list of strings")
    required = _REQUIRED[polarity]
    for template in templates:
        if not isinstance(template, str):
            raise ValueError(f"{where}: {polarity!r} holds a non-string {template!r}")
        slots = set(_SLOT.findall(template))
        if not required <= slots:
            missing = ", ".join("{" + s + "}" for s in sorted(required - slots))
            raise ValueError(f"{where}: {polarity} template {template!r} lacks {missing}")
        if not slots <= required:
            extra = ", ".join("{" + s + "}" for s in sorted(slots - required))
            raise ValueError(f"{where}: {polarity} template {template!r} has unexpected {extra}")
        if template.count("{") != template.count("}"):
            raise ValueError(f"{where}: {polarity} template {template!r} has unbalanced braces")
    return tuple(templates)


def load_wordings(path: str | os.PathLike) -> Wordings:
    """Templates from a JSON file `{"positive": [...], "negative": [...], "neutral": [...],
    "compound": [...]}`; neutral and compound are optional and default to `TRAIN_WORDINGS`'.

    Raises FileNotFoundError if the file is missing and ValueError (naming the file) if it is not
    valid JSON, lacks positive/negative, or a template lacks its slots (`{genre}` for
    positive/negative, `{genre}` and `{avoid}` for compound) or has others.
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"wordings file not found: {where}")
    with open(where, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with polarity keys")
    unknown = sorted(set(data) - set(POLARITIES))
    if unknown:
        raise ValueError(f"{where}: unknown polarity keys {unknown} (expected {POLARITIES})")
    found: dict[str, tuple[str, ...]] = {}
    for polarity in POLARITIES:
        if polarity in data:
            found[polarity] = _check_templates(data[polarity], polarity, where)
        elif polarity in ("positive", "negative"):
            raise ValueError(f"{where}: missing {polarity!r} templates")
        else:
            found[polarity] = TRAIN_WORDINGS.of(polarity)
    return Wordings(**found)


def all_prompts(wordings: Wordings, genres: Sequence[str]) -> list[str]:
    """Every distinct prompt the wordings can produce over `genres` (to encode them all ahead of
    training), in a fixed order; compound prompts cover every ordered pair of distinct genres.
    The empty prompt is not included."""
    out: dict[str, None] = {}
    forms = {g: surface_forms(g) for g in genres}
    for template in wordings.neutral:
        out.setdefault(_fill(template, {}), None)
    for polarity in ("positive", "negative"):
        for template in wordings.of(polarity):
            for g in genres:
                for form in forms[g]:
                    out.setdefault(_fill(template, {"genre": form}), None)
    for template in wordings.compound:
        for g in genres:
            for a in genres:
                if a == g:
                    continue
                for form in forms[g]:
                    for avoid in forms[a]:
                        out.setdefault(_fill(template, {"genre": form, "avoid": avoid}), None)
    return list(out)


@dataclass
class Episodes:
    """Steering episodes for training, as equal-length numpy arrays.

    Episode i: user `user[i]` (a row of `split.train`), history
    `split.train[user][:position]`, target `split.train[user][position]` (= `target[i]`),
    polarity index into `POLARITIES`, and `genre` / `avoid` indices into `genres` (-1 where the
    polarity has none: `genre` for neutral, `avoid` unless compound).
    """

    user: np.ndarray
    position: np.ndarray
    target: np.ndarray
    polarity: np.ndarray
    genre: np.ndarray
    avoid: np.ndarray
    genres: list[str]

    def __len__(self) -> int:
        return len(self.user)


def intent_of(episodes: Episodes, i: int) -> Intent:
    """The intent of episode `i`."""
    polarity = POLARITIES[int(episodes.polarity[i])]
    g, a = int(episodes.genre[i]), int(episodes.avoid[i])
    return Intent(polarity, episodes.genres[g] if g >= 0 else None,
                  episodes.genres[a] if a >= 0 else None)


DEFAULT_MIX = {"positive": 0.35, "negative": 0.3, "compound": 0.2, "neutral": 0.15}
"""Share of each polarity among steering episodes."""

_POS, _NEG, _NEU, _COM = (POLARITIES.index(p) for p in ("positive", "negative", "neutral",
                                                         "compound"))
_CHUNK = 1 << 16  # episodes handled at once, to bound the (episodes x genres) temporaries


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
                      attribute: str = "genre", rng: np.random.Generator,
                      positions_per_user: int | None = None,
                      mix: dict[str, float] | None = None,
                      prefer: float = 0.7, recent: int = 20) -> Episodes:
    """Steering episodes over the training prefixes of `split` (never a validation/test target).

    Positions: every training position >= 1 (`positions_per_user=None`) or that many per user,
    drawn without replacement. Each gets a polarity drawn from `mix` (default `DEFAULT_MIX`) and
    genres as follows:
    - positive: a genre of the target; with probability `prefer` the one the history
      `train[u][:position]` holds least often (as the evaluation protocol does), otherwise any;
    - negative: a genre the target lacks; with probability `prefer` the one most frequent in
      the last `recent` history items, otherwise any;
    - compound: the asked genre as for positive; the avoided one, with probability `prefer`,
      the lacked genre that best combines co-occurring with the asked genre in the catalogue
      and being frequent in the recent history (the evaluation avoids the genre that fills
      the genre-filtered top-10), otherwise any the target lacks;
    - neutral: no genre.
    A polarity the target cannot carry (an item with no genre, or with all of them) falls back
    to one it can (positive <-> negative, compound -> either, else neutral). Ties are broken at
    random. Deterministic for a given `rng` state.
    """
    if not 0.0 <= prefer <= 1.0:
        raise ValueError(f"prefer must lie in [0, 1], got {prefer}")
    if recent < 1:
        raise ValueError(f"recent must be positive, got {recent}")
    p = _mix_probabilities(mix)
    has, genres = catalogue.attribute_matrix(attribute)  # (N+1, V) bool
    num_genres = len(genres)

    lengths = np.array([len(t) for t in split.train], dtype=np.int64)
    flat = (np.concatenate(split.train).astype(np.int64) if len(split.train)
            else np.zeros(0, dtype=np.int64))
    starts = np.cumsum(lengths) - lengths
    # cum[j] = genre counts over flat[:j]; a history's counts are differences of two rows.
    cum = np.zeros((len(flat) + 1, num_genres), dtype=np.int32)
    np.cumsum(has[flat], axis=0, out=cum[1:])

    # together[g, v]: share of the items of genre g that also have genre v.
    counts = has[1:].T.astype(np.int64) @ has[1:].astype(np.int64)
    together = counts / np.maximum(np.diag(counts), 1)[:, None]

    user, position = _positions(lengths, rng, positions_per_user)
    n = len(user)
    at = starts[user] + position  # flat index of each target
    target = flat[at]
    polarity = rng.choice(len(POLARITIES), size=n, p=p).astype(np.int8)
    genre = np.full(n, -1, dtype=np.int64)
    avoid = np.full(n, -1, dtype=np.int64)

    for lo in range(0, n, _CHUNK):
        s = slice(lo, min(lo + _CHUNK, n))
        target_has = has[target[s]]
        can_ask = target_has.any(axis=1)
        can_forbid = ~target_has.all(axis=1)
        pol = polarity[s]
        pol[(pol == _COM) & can_ask & ~can_forbid] = _POS
        pol[(pol == _COM) & ~can_ask] = _NEG
        pol[(pol == _POS) & ~can_ask] = _NEG
        pol[(pol == _NEG) & ~can_forbid] = _POS
        pol[((pol == _POS) & ~can_ask) | ((pol == _NEG) & ~can_forbid)] = _NEU

        m = len(pol)
        history = cum[at[s]] - cum[starts[user[s]]]
        recent_counts = cum[at[s]] - cum[starts[user[s]] + np.maximum(position[s] - recent, 0)]
        jitter = rng.random((m, num_genres)) * 0.5  # random tie-break, below one count
        underrepresented = _pick(history + jitter, target_has, lowest=True)
        frequent = _pick(recent_counts + jitter, ~target_has, lowest=False)
        noise = rng.random((m, num_genres))
        any_asked = _pick(noise, target_has, lowest=False)
        any_forbidden = _pick(noise, ~target_has, lowest=False)
        preferred = rng.random((m, 2)) < prefer
        asked = np.where(preferred[:, 0], underrepresented, any_asked)
        forbidden = np.where(preferred[:, 1], frequent, any_forbidden)
        # Compound: avoid what comes along with the asked genre and the user watches.
        along = (together[asked] + 0.05) * (recent_counts + 1) + jitter * 1e-3
        companion = _pick(along, ~target_has, lowest=False)
        avoided = np.where(preferred[:, 1], companion, any_forbidden)

        g = np.full(m, -1, dtype=np.int64)
        a = np.full(m, -1, dtype=np.int64)
        wants = (pol == _POS) | (pol == _COM)
        g[wants] = asked[wants]
        g[pol == _NEG] = forbidden[pol == _NEG]
        a[pol == _COM] = avoided[pol == _COM]
        genre[s], avoid[s] = g, a

    return Episodes(user=user, position=position, target=target, polarity=polarity,
                    genre=genre, avoid=avoid, genres=[str(g) for g in genres])
