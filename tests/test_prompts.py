"""Prompt templates, intents and steering episodes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dpr.data.dataset import ItemCatalogue, LeaveOneOutSplit
from dpr.data.synthetic import GENRES
from dpr.prompts import (
    GENRE_SYNONYMS,
    HELDOUT_WORDINGS,
    POLARITIES,
    TRAIN_WORDINGS,
    Episodes,
    Intent,
    Wordings,
    all_prompts,
    intent_of,
    load_wordings,
    render,
    steering_episodes,
    surface_forms,
)

MOVIELENS_GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                    "Romance", "Sci-Fi", "Thriller", "War", "Western")
ALL_GENRES = sorted(set(MOVIELENS_GENRES) | set(GENRES))
WORDINGS = {"train": TRAIN_WORDINGS, "heldout": HELDOUT_WORDINGS}
POS, NEG, NEU, COM = (POLARITIES.index(p) for p in ("positive", "negative", "neutral",
                                                     "compound"))


def _clean(text: str) -> bool:
    """No leftover slot, no doubled blank, no 'a' before a vowel, no 'an' before a consonant."""
    return ("{" not in text and "}" not in text and "  " not in text
            and not re.search(r"\b[Aa] [aeiouAEIOU]", text)
            and not re.search(r"\b[Aa]n [^aeiouAEIOU]", text))


# --- templates and surface forms ---------------------------------------------------------------

@pytest.mark.parametrize("name", WORDINGS)
def test_enough_wordings_per_polarity(name: str) -> None:
    wordings = WORDINGS[name]
    for polarity in ("positive", "negative", "neutral"):
        assert len(set(wordings.of(polarity))) >= 10, polarity
    assert len(set(wordings.compound)) >= 5


def test_train_and_heldout_wordings_are_disjoint() -> None:
    for polarity in POLARITIES:
        train = {t.lower() for t in TRAIN_WORDINGS.of(polarity)}
        heldout = {t.lower() for t in HELDOUT_WORDINGS.of(polarity)}
        assert not train & heldout, polarity
    every_train = {t.lower() for p in POLARITIES for t in TRAIN_WORDINGS.of(p)}
    every_heldout = {t.lower() for p in POLARITIES for t in HELDOUT_WORDINGS.of(p)}
    assert not every_train & every_heldout


def test_template_slots_fit_their_polarity() -> None:
    for wordings in WORDINGS.values():
        for t in wordings.positive + wordings.negative:
            assert "{genre}" in t and "{avoid}" not in t, t
        for t in wordings.compound:
            assert "{genre}" in t and "{avoid}" in t, t
        for t in wordings.neutral:
            assert "{" not in t, t


def test_every_genre_has_surface_forms() -> None:
    for genre in ALL_GENRES:
        forms = GENRE_SYNONYMS[genre]
        assert forms, genre
        assert forms[0] == genre.lower().replace("-", " ") or forms[0] == genre.lower(), genre
        assert len(set(forms)) == len(forms)
    assert set(surface_forms("Sci-Fi")) >= {"sci-fi", "science fiction", "scifi"}
    assert set(surface_forms("Children's")) >= {"children's", "kids", "family"}
    assert set(surface_forms("Comedy")) >= {"comedy", "funny"}
    assert surface_forms("Film-Noir") == ("film noir", "noir")
    assert surface_forms("IMAX") == ("imax",)


@pytest.mark.parametrize("name", WORDINGS)
def test_every_template_renders_cleanly_with_every_form(name: str) -> None:
    prompts = all_prompts(WORDINGS[name], ALL_GENRES)
    bad = [p for p in prompts if not _clean(p)]
    assert not bad, bad[:5]
    # Every template with every surface form gives its own prompt: nothing collapses or is lost.
    wordings = WORDINGS[name]
    forms = {g: len(surface_forms(g)) for g in ALL_GENRES}
    single = (len(wordings.positive) + len(wordings.negative)) * sum(forms.values())
    pairs = sum(forms[g] * forms[a] for g in ALL_GENRES for a in ALL_GENRES if g != a)
    assert len(prompts) == len(wordings.neutral) + single + len(wordings.compound) * pairs


def test_all_prompts_is_complete_and_distinct() -> None:
    wordings = Wordings(positive=("a {genre} movie",), negative=("no {genre} stuff",),
                        neutral=("anything",), compound=("a {genre} movie, not {avoid}",))
    prompts = all_prompts(wordings, ["Comedy", "Horror"])
    assert len(prompts) == len(set(prompts))
    assert set(prompts) == {
        "anything",
        "a comedy movie", "a funny movie", "a comedic movie", "a horror movie", "a scary movie",
        "no comedy stuff", "no funny stuff", "no comedic stuff", "no horror stuff",
        "no scary stuff",
        *(f"a {g} movie, not {a}" for g in ("comedy", "funny", "comedic")
          for a in ("horror", "scary")),
        *(f"a {g} movie, not {a}" for g in ("horror", "scary")
          for a in ("comedy", "funny", "comedic")),
    }


def test_articles_follow_the_surface_form() -> None:
    wordings = Wordings(positive=("A {genre} movie, a {genre} one",), negative=("no {genre}",),
                        neutral=("x",), compound=("an {genre} movie, not a {avoid} one",))
    rng = np.random.default_rng(0)
    assert render(Intent("positive", "Action"), wordings, rng).startswith("An action")
    texts = {render(Intent("compound", "Horror", "Animation"), wordings, rng) for _ in range(40)}
    assert all(t.startswith("a ") and _clean(t) for t in texts)
    assert any(" an animated one" in t for t in texts) and any(" a cartoon one" in t for t in texts)


def test_sentences_opening_with_a_slot_are_capitalised() -> None:
    wordings = Wordings(positive=("{genre} movies, please.",), negative=("no {genre}",),
                        neutral=("x",), compound=("{genre} yes, {avoid} no",))
    rng = np.random.default_rng(0)
    assert render(Intent("positive", "Sci-Fi"), wordings, rng)[0] == "S"


# --- intents and rendering -----------------------------------------------------------------------

def test_intent_validates() -> None:
    with pytest.raises(ValueError, match="polarity"):
        Intent("sideways", "Comedy")
    with pytest.raises(ValueError, match="genre"):
        Intent("positive")
    with pytest.raises(ValueError, match="avoid"):
        Intent("compound", "Comedy")
    assert Intent("neutral").genre is None


def test_render_uses_the_right_polarity_and_forms() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        text = render(Intent("negative", "Horror"), TRAIN_WORDINGS, rng)
        assert any(text.lower().startswith(t.split("{")[0].lower())
                   for t in TRAIN_WORDINGS.negative)
        assert "horror" in text.lower() or "scary" in text.lower()
        both = render(Intent("compound", "Comedy", "Romance"), HELDOUT_WORDINGS, rng).lower()
        assert any(f in both for f in surface_forms("Comedy"))
        assert any(f in both for f in surface_forms("Romance"))
        neutral = render(Intent("neutral", "Comedy"), TRAIN_WORDINGS, rng)
        assert neutral in TRAIN_WORDINGS.neutral


def test_render_is_deterministic_and_varied() -> None:
    intent = Intent("positive", "Sci-Fi")
    a = [render(intent, TRAIN_WORDINGS, np.random.default_rng(5)) for _ in range(3)]
    assert len(set(a)) == 1
    rng = np.random.default_rng(5)
    seen = {render(intent, TRAIN_WORDINGS, rng) for _ in range(300)}
    assert len(seen) > 20
    assert {f for f in surface_forms("Sci-Fi") if any(f in s.lower() for s in seen)} == set(
        surface_forms("Sci-Fi"))


# --- loading wordings ----------------------------------------------------------------------------

def test_load_wordings_reads_and_falls_back(tmp_path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"positive": ["give me a {genre} movie"],
                                "negative": ["no {genre} please"]}))
    wordings = load_wordings(path)
    assert wordings.positive == ("give me a {genre} movie",)
    assert wordings.negative == ("no {genre} please",)
    assert wordings.neutral == TRAIN_WORDINGS.neutral
    assert wordings.compound == TRAIN_WORDINGS.compound
    path.write_text(json.dumps({"positive": ["{genre}!"], "negative": ["no {genre}"],
                                "neutral": ["hi"], "compound": ["{genre} not {avoid}"]}))
    assert load_wordings(str(path)).compound == ("{genre} not {avoid}",)


@pytest.mark.parametrize("content, message", [
    ({"positive": ["a movie"], "negative": ["no {genre}"]}, "lacks"),
    ({"positive": ["a {genre} movie"], "negative": ["nothing scary"]}, "lacks"),
    ({"positive": ["a {genre}"], "negative": ["no {genre}"], "compound": ["a {genre}"]}, "avoid"),
    ({"positive": ["a {genre}"], "negative": ["no {genre}"], "neutral": ["a {genre}"]},
     "unexpected"),
    ({"positive": ["a {genre} {mood}"], "negative": ["no {genre}"]}, "unexpected"),
    ({"positive": ["a {genre}"]}, "negative"),
    ({"positive": [], "negative": ["no {genre}"]}, "non-empty"),
    ({"positive": "a {genre}", "negative": ["no {genre}"]}, "list"),
    ({"positive": ["a {genre}"], "negative": ["no {genre}"], "sideways": ["x"]}, "unknown"),
    (["a {genre}"], "object"),
])
def test_load_wordings_rejects_bad_templates(tmp_path, content, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as info:
        load_wordings(path)
    assert "bad.json" in str(info.value)


def test_load_wordings_errors_on_missing_file_and_bad_json(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_wordings(tmp_path / "nope.json")
    path = tmp_path / "broken.json"
    path.write_text('{"positive": ["a {genre}"')
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_wordings(path)


# --- steering episodes ---------------------------------------------------------------------------

def _tiny() -> tuple[LeaveOneOutSplit, ItemCatalogue]:
    """Six items; items 5 and 6 appear only as validation/test targets."""
    genres = [("Comedy",), ("Horror", "Thriller"), ("Comedy", "Romance"), ("Drama",),
              ("Comedy",), ("Horror",)]
    catalogue = ItemCatalogue([101, 102, 103, 104, 105, 106], list("abcdef"), {"genre": genres})
    train = [np.array([1, 2, 3, 4, 1, 2], dtype=np.int64), np.array([3], dtype=np.int64),
             np.array([4, 3], dtype=np.int64), np.array([2, 2, 1, 3, 4, 4, 3, 1, 2],
                                                       dtype=np.int64)]
    split = LeaveOneOutSplit(train, np.array([5, 0, 5, 6]), np.array([6, 0, 6, 5]))
    return split, catalogue


def _random_data(num_users: int, mean_length: int, num_items: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    genres = list(ALL_GENRES)
    attrs = [tuple(str(g) for g in rng.choice(genres, size=rng.integers(1, 4), replace=False))
             for _ in range(num_items)]
    catalogue = ItemCatalogue(list(range(num_items)), [""] * num_items, {"genre": attrs})
    lengths = rng.integers(3, 2 * mean_length - 3, size=num_users)
    train = [rng.integers(1, num_items + 1, size=n).astype(np.int64) for n in lengths]
    targets = rng.integers(1, num_items + 1, size=num_users)
    return LeaveOneOutSplit(train, targets, targets), catalogue


def _check_episodes(episodes: Episodes, split: LeaveOneOutSplit, catalogue: ItemCatalogue) -> None:
    n = len(episodes)
    for name in ("user", "position", "target", "polarity", "genre", "avoid"):
        assert len(getattr(episodes, name)) == n, name
    assert episodes.polarity.dtype == np.int8
    for name in ("user", "position", "target", "genre", "avoid"):
        assert getattr(episodes, name).dtype == np.int64, name
    assert episodes.genres == catalogue.attribute_values("genre")
    for i in range(n):
        u, p = int(episodes.user[i]), int(episodes.position[i])
        assert 1 <= p < len(split.train[u])  # a training position, never valid/test
        assert episodes.target[i] == split.train[u][p]
        has = set(catalogue.values_of("genre", int(episodes.target[i])))
        intent = intent_of(episodes, i)
        assert intent.polarity == POLARITIES[episodes.polarity[i]]
        if intent.polarity == "positive":
            assert intent.genre in has and episodes.avoid[i] == -1
        elif intent.polarity == "negative":
            assert intent.genre not in has and episodes.avoid[i] == -1
        elif intent.polarity == "compound":
            assert intent.genre in has and intent.avoid not in has
        else:
            assert episodes.genre[i] == -1 and episodes.avoid[i] == -1


def test_episodes_cover_every_training_position_and_nothing_else() -> None:
    split, catalogue = _tiny()
    episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(0))
    _check_episodes(episodes, split, catalogue)
    pairs = sorted(zip(episodes.user.tolist(), episodes.position.tolist(), strict=True))
    expected = [(u, p) for u, t in enumerate(split.train) for p in range(1, len(t))]
    assert pairs == expected
    assert not set(episodes.target.tolist()) & {5, 6}  # only ever validation/test items


def test_episodes_respect_genres_on_random_data() -> None:
    split, catalogue = _random_data(num_users=60, mean_length=20, num_items=200, seed=4)
    episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(1),
                                 positions_per_user=7)
    _check_episodes(episodes, split, catalogue)


def test_positions_per_user_samples_without_replacement() -> None:
    split, catalogue = _random_data(num_users=80, mean_length=10, num_items=100, seed=2)
    episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(3),
                                 positions_per_user=5)
    for u, train in enumerate(split.train):
        mine = episodes.position[episodes.user == u]
        assert len(mine) == min(5, len(train) - 1)
        assert len(set(mine.tolist())) == len(mine)
    with pytest.raises(ValueError, match="positions_per_user"):
        steering_episodes(split, catalogue, rng=np.random.default_rng(3), positions_per_user=0)


def test_episodes_are_deterministic_per_seed() -> None:
    split, catalogue = _random_data(num_users=50, mean_length=15, num_items=150, seed=1)

    def draw(seed: int) -> Episodes:
        return steering_episodes(split, catalogue, rng=np.random.default_rng(seed),
                                 positions_per_user=6)

    a, b, c = draw(7), draw(7), draw(8)
    for name in ("user", "position", "target", "polarity", "genre", "avoid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not (np.array_equal(a.position, c.position) and np.array_equal(a.genre, c.genre))


def test_mix_is_roughly_honoured() -> None:
    split, catalogue = _random_data(num_users=400, mean_length=30, num_items=300, seed=5)
    for mix in (None, {"positive": 0.5, "negative": 0.5},
                {"compound": 0.2, "neutral": 0.3, "positive": 0.3, "negative": 0.2}):
        episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(0), mix=mix)
        share = np.bincount(episodes.polarity, minlength=4) / len(episodes)
        want = mix or {"positive": 0.35, "negative": 0.3, "compound": 0.2, "neutral": 0.15}
        for polarity, p in want.items():
            assert abs(share[POLARITIES.index(polarity)] - p) < 0.02, (mix, polarity)
        for polarity in set(POLARITIES) - set(want):
            assert share[POLARITIES.index(polarity)] == 0
    with pytest.raises(ValueError, match="unknown"):
        steering_episodes(split, catalogue, rng=np.random.default_rng(0), mix={"posi": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        steering_episodes(split, catalogue, rng=np.random.default_rng(0), mix={"positive": 0})


def test_preferred_genres_follow_the_history() -> None:
    # Target (item 3: Comedy, Romance) after a history of comedies: the under-represented asked
    # genre is Romance; among genres the target lacks the most frequent recent one is Horror.
    genres = [("Comedy",), ("Horror",), ("Comedy", "Romance"), ("Drama",)]
    catalogue = ItemCatalogue([1, 2, 3, 4], list("abcd"), {"genre": genres})
    train = [np.array([1, 1, 2, 2, 2, 4, 1, 3], dtype=np.int64)]
    split = LeaveOneOutSplit(train, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    names = catalogue.attribute_values("genre")
    for polarity in ("positive", "negative", "compound"):
        for seed in range(5):
            episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(seed),
                                         mix={polarity: 1.0}, prefer=1.0)
            last = int(np.flatnonzero(episodes.position == 7)[0])
            intent = intent_of(episodes, last)
            assert intent.polarity == polarity
            if polarity == "positive":
                assert intent.genre == "Romance"
            elif polarity == "negative":
                assert intent.genre == "Horror"
            else:
                assert (intent.genre, intent.avoid) == ("Romance", "Horror")
    assert names == ["Comedy", "Drama", "Horror", "Romance"]


def test_compound_avoids_what_comes_with_the_asked_genre() -> None:
    # Asked: Romance (the target's only genre). The user watches Horror most, but Comedy is what
    # romances come with, so a compound intent avoids Comedy while a negative one forbids Horror.
    genres = [("Comedy", "Romance"), ("Horror",), ("Romance",), ("Drama",)]
    catalogue = ItemCatalogue([1, 2, 3, 4], list("abcd"), {"genre": genres})
    train = [np.array([4, 2, 2, 2, 1, 3], dtype=np.int64)]
    split = LeaveOneOutSplit(train, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    for polarity, expected in (("compound", ("Romance", "Comedy")), ("negative", ("Horror", None))):
        episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(0),
                                     mix={polarity: 1.0}, prefer=1.0)
        last = int(np.flatnonzero(episodes.position == 5)[0])
        intent = intent_of(episodes, last)
        assert (intent.genre, intent.avoid) == expected


def test_impossible_polarities_fall_back() -> None:
    # Item 1 has no genre (cannot be asked for), item 2 every genre (cannot be forbidden).
    genres = [(), ("Comedy", "Horror"), ("Comedy",)]
    catalogue = ItemCatalogue([1, 2, 3], list("abc"), {"genre": genres})
    train = [np.array([3, 1, 2, 1, 2, 1, 2], dtype=np.int64)]
    split = LeaveOneOutSplit(train, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    for polarity in POLARITIES:
        episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(0),
                                     mix={polarity: 1.0})
        _check_episodes(episodes, split, catalogue)
        no_genre = episodes.target == 1
        if polarity != "neutral":
            assert (episodes.polarity[no_genre] == NEG).all()
            assert (episodes.polarity[~no_genre] == POS).all()


def test_episodes_cover_every_position_at_movielens_scale() -> None:
    split, catalogue = _random_data(num_users=6040, mean_length=95, num_items=3700, seed=0)
    episodes = steering_episodes(split, catalogue, rng=np.random.default_rng(0))
    assert len(episodes) == sum(len(t) - 1 for t in split.train) > 500_000
