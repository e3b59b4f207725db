"""The prompt grammar, its renderings, intents and steering episodes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dpr.data.dataset import ItemCatalogue, LeaveOneOutSplit
from dpr.data.synthetic import GENRES
from dpr.prompts import POLARITIES, SPLITS, Episodes, Grammar, Intent, intent_of, steering_episodes
from dpr.prompts.grammar import DEFAULT_GRAMMAR as GRAMMAR_PATH

MOVIELENS_GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                    "Romance", "Sci-Fi", "Thriller", "War", "Western")
ALL_GENRES = sorted(set(MOVIELENS_GENRES) | set(GENRES))
POS, NEG, NEU, COM = (POLARITIES.index(p) for p in ("positive", "negative", "neutral",
                                                     "compound"))
GRAMMAR = Grammar.load()


def _clean(text: str) -> bool:
    """No leftover slot, no doubled blank, no 'a' before a vowel, no 'an' before a consonant."""
    return ("{" not in text and "}" not in text and "  " not in text
            and not re.search(r"\b[Aa] [aeiouAEIOU]", text)
            and not re.search(r"\b[Aa]n [^aeiouAEIOU]", text))


def _phrase(cue: str) -> re.Pattern[str]:
    """A cue as a word-bounded pattern; "..." in a cue stands for any gap."""
    parts = [re.escape(p.strip()) for p in cue.lower().split("...") if p.strip()]
    return re.compile(r"\b" + r"\b.*\b".join(parts) + r"\b")


# --- the grammar ------------------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_every_split_has_every_kind_of_form(split: str) -> None:
    for polarity in ("asked", "refused", "neutral"):
        assert GRAMMAR.frames_of(split, polarity), (split, polarity)
    assert GRAMMAR.frames_of(split, "asked", "description")
    assert GRAMMAR.frames_of(split, "refused", "description")
    assert GRAMMAR.connectors_of(split)
    assert GRAMMAR.clauses_of(split, "asked") and GRAMMAR.clauses_of(split, "refused")


def test_heldout_frames_share_no_cue_with_training_frames() -> None:
    train = [f for f in (*GRAMMAR.frames, *GRAMMAR.connectors) if f.split == "train"]
    train_texts = [f.text.lower() for f in train] + [
        c.text.lower() for c in GRAMMAR.clauses if c.split == "train"]
    heldout = [f for f in (*GRAMMAR.frames, *GRAMMAR.connectors)
               if f.split == "heldout" and f.cue and f.polarity != "neutral"]
    assert len(heldout) >= 30
    for frame in heldout:
        pattern = _phrase(frame.cue)
        assert not any(pattern.search(t) for t in train_texts), frame.id
    # and no multi-word training cue turns up in a held-out frame
    heldout_texts = [f.text.lower() for f in heldout]
    for frame in train:
        if len(frame.cue.split()) >= 2 and not frame.cue.startswith("("):
            pattern = _phrase(frame.cue)
            assert not any(pattern.search(t) for t in heldout_texts), frame.id
    train_cues = {f.cue.lower() for f in train}
    assert not train_cues & {f.cue.lower() for f in heldout}


def test_few_training_words_carry_one_polarity_only() -> None:
    """Contrast twins (docs/prompts.md): a word many training frames use appears in frames of
    both polarities, so the read-out cannot take the word for the polarity."""
    uses: dict[str, dict[str, int]] = {}
    for frame in GRAMMAR.frames:
        if frame.split != "train" or frame.kind != "frame" or frame.polarity == "neutral":
            continue
        words = set(re.findall(r"[a-z']+", re.sub(r"\{\w+\}", "", frame.text.lower())))
        for word in words:
            count = uses.setdefault(word, {"asked": 0, "refused": 0})
            count[frame.polarity] += 1
    one_sided = [w for w, c in uses.items() if sum(c.values()) >= 3 and min(c.values()) == 0]
    assert len(one_sided) <= 20, sorted(one_sided)
    for word in ("not", "no", "don't", "want", "keep", "enough", "give", "tired"):
        assert min(uses[word].values()) > 0, word


def test_descriptions_never_name_their_value() -> None:
    for family in GRAMMAR.families.values():
        for value, forms in family.values.items():
            words = {value.lower(), *(n.lower() for n in forms.names),
                     *(n.lower() for n in forms.nouns)}
            for description in forms.descriptions:
                for word in words:
                    assert not re.search(r"\b" + re.escape(word) + r"\b",
                                         description.lower()), (value, description)
            assert GRAMMAR.describable(family.name, value), value


def test_every_frame_renders_cleanly_for_every_value() -> None:
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for polarity, kind in (("positive", "frame"), ("negative", "frame"),
                               ("positive", "description"), ("negative", "description")):
            frames = GRAMMAR.frames_of(split, "asked" if polarity == "positive" else "refused",
                                       kind)
            for frame in frames:
                for value in MOVIELENS_GENRES:
                    r = GRAMMAR.render(Intent(polarity, value), rng, split=split, frame=frame.id,
                                       style="description" if kind == "description" else "name")
                    assert _clean(r.text), r.text
                    assert r.frame == frame.id
                    assert r.labels == (("genre", value, "asked" if polarity == "positive"
                                         else "refused"),)
        for connector in GRAMMAR.connectors_of(split):
            for value, avoid in (("Comedy", "Romance"), ("Sci-Fi", "Horror")):
                r = GRAMMAR.render(Intent("compound", value, avoid), rng, split=split,
                                   frame=connector.id)
                assert _clean(r.text), r.text
                assert r.labels == (("genre", value, "asked"), ("genre", avoid, "refused"))


def test_renderings_use_the_value_forms_and_descriptions_of_their_split() -> None:
    rng = np.random.default_rng(1)
    comedy = GRAMMAR.families["genre"].values["Comedy"]
    forms = [*comedy.names, *comedy.nouns]
    for _ in range(30):
        text = GRAMMAR.render(Intent("positive", "Comedy"), rng, split="train").text.lower()
        assert any(f in text for f in forms), text
    heldout = GRAMMAR.descriptions("genre", "Comedy", "heldout")
    train = GRAMMAR.descriptions("genre", "Comedy", "train")
    assert heldout and train and not set(heldout) & set(train)
    for _ in range(10):
        text = GRAMMAR.render(Intent("positive", "Comedy"), rng, split="heldout",
                              style="description").text.lower()
        assert any(d.lower() in text for d in heldout), text
        assert not any(f in text for f in comedy.names), text


def test_render_is_deterministic_and_varied() -> None:
    def draw(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [GRAMMAR.render(Intent("negative", "Horror"), rng).text for _ in range(40)]

    assert draw(3) == draw(3)
    assert len(set(draw(3))) > 25


def test_neutral_renderings_have_no_labels() -> None:
    rng = np.random.default_rng(2)
    for split in SPLITS:
        r = GRAMMAR.render(Intent("neutral"), rng, split=split)
        assert r.labels == () and r.text


def test_unknown_values_fall_back_to_their_spelling() -> None:
    grammar = GRAMMAR.with_values("genre", ["Space Opera"])
    r = grammar.render(Intent("positive", "Space Opera"), np.random.default_rng(0))
    assert "space opera" in r.text.lower()
    assert not grammar.describable("genre", "Space Opera")
    with pytest.raises(KeyError, match="family"):
        GRAMMAR.render(Intent("positive", "Swedish", family="language"), np.random.default_rng(0))


def test_intent_validates() -> None:
    with pytest.raises(ValueError, match="polarity"):
        Intent("sideways", "Comedy")
    with pytest.raises(ValueError, match="needs a value"):
        Intent("positive")
    with pytest.raises(ValueError, match="avoid"):
        Intent("compound", "Comedy")
    assert Intent("neutral").value is None


def _write(tmp_path, data) -> str:
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_a_grammar_file_loads_and_bad_ones_name_the_problem(tmp_path) -> None:
    data = json.loads(GRAMMAR_PATH.read_text())
    assert Grammar.load(_write(tmp_path, data)).frames_of("train", "asked")
    with pytest.raises(FileNotFoundError):
        Grammar.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Grammar.load(_write(tmp_path, "{"))
    with pytest.raises(ValueError, match="format"):
        Grammar.load(_write(tmp_path, {"format": "other"}))
    bad = json.loads(json.dumps(data))
    bad["frames"][0]["text"] = "I want something."
    with pytest.raises(ValueError, match="names no value"):
        Grammar.load(_write(tmp_path, bad))
    bad = json.loads(json.dumps(data))
    bad["frames"][0]["split"] = "test"
    with pytest.raises(ValueError, match="split"):
        Grammar.load(_write(tmp_path, bad))
    bad = json.loads(json.dumps(data))
    bad["connectors"][0]["text"] = "{ask} and more"
    with pytest.raises(ValueError, match="refused"):
        Grammar.load(_write(tmp_path, bad))
    bad = json.loads(json.dumps(data))
    bad["frames"][1]["id"] = bad["frames"][0]["id"]
    with pytest.raises(ValueError, match="duplicate"):
        Grammar.load(_write(tmp_path, bad))





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
    for name in ("user", "position", "target", "polarity", "value", "avoid", "also"):
        assert len(getattr(episodes, name)) == n, name
    assert (episodes.also == -1).all()  # one family: nothing else to ask for
    assert episodes.polarity.dtype == np.int8
    for name in ("user", "position", "target", "value", "avoid"):
        assert getattr(episodes, name).dtype == np.int64, name
    assert episodes.columns == [("genre", v) for v in catalogue.attribute_values("genre")]
    for i in range(n):
        u, p = int(episodes.user[i]), int(episodes.position[i])
        assert 1 <= p < len(split.train[u])  # a training position, never valid/test
        assert episodes.target[i] == split.train[u][p]
        has = set(catalogue.values_of("genre", int(episodes.target[i])))
        intent = intent_of(episodes, i)
        assert intent.polarity == POLARITIES[episodes.polarity[i]]
        if intent.polarity == "positive":
            assert intent.value in has and episodes.avoid[i] == -1
        elif intent.polarity == "negative":
            assert intent.value not in has and episodes.avoid[i] == -1
        elif intent.polarity == "compound":
            assert intent.value in has and intent.avoid not in has
        else:
            assert episodes.value[i] == -1 and episodes.avoid[i] == -1


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
    for name in ("user", "position", "target", "polarity", "value", "avoid"):
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
                assert intent.value == "Romance"
            elif polarity == "negative":
                assert intent.value == "Horror"
            else:
                assert (intent.value, intent.avoid) == ("Romance", "Horror")
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
        assert (intent.value, intent.avoid) == expected


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


# --- several steered families ------------------------------------------------------------------

def _two_family_catalogue(seed: int = 0) -> tuple[LeaveOneOutSplit, ItemCatalogue]:
    split, catalogue = _random_data(60, 12, num_items=400, seed=seed)
    rng = np.random.default_rng(seed + 1)
    decades = [(f"{int(d)}s",) if rng.random() < 0.9 else ()  # some items have no year
               for d in rng.choice([1950, 1970, 1990, 2000], size=catalogue.num_items)]
    return split, ItemCatalogue(catalogue.ids, catalogue.titles,
                                {**catalogue.attributes, "decade": decades})


def test_steered_matrix_puts_families_side_by_side() -> None:
    _, catalogue = _two_family_catalogue()
    matrix, columns = catalogue.steered_matrix(["genre", "decade"])
    genres, _ = catalogue.attribute_matrix("genre")
    decades, decade_values = catalogue.attribute_matrix("decade")
    assert columns == ([("genre", v) for v in catalogue.attribute_values("genre")]
                       + [("decade", v) for v in decade_values])
    np.testing.assert_array_equal(matrix, np.concatenate([genres, decades], axis=1))
    with pytest.raises(ValueError, match="twice"):
        catalogue.steered_matrix(["genre", "genre"])


def test_episodes_over_two_families_follow_the_target_and_mix_families() -> None:
    split, catalogue = _two_family_catalogue()
    episodes = steering_episodes(split, catalogue, families=("genre", "decade"),
                                 rng=np.random.default_rng(0))
    families_seen: dict[str, set[str]] = {}
    for i in range(len(episodes)):
        intent = intent_of(episodes, i)
        target = int(episodes.target[i])
        if intent.polarity == "neutral":
            continue
        has = set(catalogue.values_of(intent.family, target))
        if intent.polarity in ("positive", "compound"):
            assert intent.value in has
        else:
            assert intent.value not in has
        families_seen.setdefault(intent.polarity, set()).add(intent.family)
        if intent.also is not None:
            assert intent.family == "genre" and intent.also[0] == "decade"
            assert intent.also[1] in catalogue.values_of("decade", target)
            families_seen.setdefault("also", set()).add(intent.polarity)
        if intent.polarity == "compound":
            avoid_family = intent.avoid_family or intent.family
            assert intent.avoid not in catalogue.values_of(avoid_family, target)
            families_seen.setdefault("avoided", set()).add(avoid_family)
            families_seen.setdefault("pairs", set()).add(f"{intent.family}/{avoid_family}")
    for polarity in ("positive", "negative", "compound", "avoided"):
        assert families_seen[polarity] == {"genre", "decade"}, polarity
    assert {"genre/decade", "decade/genre"} <= families_seen["pairs"]
    assert families_seen["also"] == {"positive", "compound"}


def test_family_forms_only_carry_their_family() -> None:
    decade_only = [f for f in (*GRAMMAR.frames, *GRAMMAR.clauses) if f.families]
    assert decade_only and all(f.families == ("decade",) for f in decade_only)
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for _ in range(200):
            r = GRAMMAR.render(Intent("compound", "Comedy", "Horror"), rng, split=split)
            assert not re.search(r"from the (comedy|horror|funny)", r.text.lower()), r.text
        assert GRAMMAR.frames_of(split, "asked", family="decade")
        assert all(f.suits("genre") for f in GRAMMAR.frames_of(split, "refused", family="genre"))


def test_decade_prompts_name_the_decade_and_never_describe_it_by_name() -> None:
    rng = np.random.default_rng(0)
    for value, forms in GRAMMAR.families["decade"].values.items():
        for description in forms.descriptions:
            for name in forms.names:
                assert name.lower() not in description.lower(), (value, description)
        assert GRAMMAR.describable("decade", value)
        text = GRAMMAR.render(Intent("negative", value, family="decade"), rng).text.lower()
        assert any(name.lower() in text for name in forms.names), text


def test_a_second_asked_value_is_named_and_labelled() -> None:
    rng = np.random.default_rng(0)
    intent = Intent("compound", "Comedy", "Romance", also=("decade", "1990s"))
    for split in SPLITS:
        r = GRAMMAR.render(intent, rng, split=split)
        assert set(r.labels) == {("genre", "Comedy", "asked"), ("decade", "1990s", "asked"),
                                 ("genre", "Romance", "refused")}
        assert re.search(r"90s|nineties", r.text.lower()), r.text
    with pytest.raises(ValueError, match="both"):
        Intent("compound", "Comedy", "1990s", avoid_family="decade", also=("decade", "1990s"))
    with pytest.raises(ValueError, match="another family"):
        Intent("positive", "Comedy", also=("genre", "Drama"))
    with pytest.raises(ValueError, match="description"):
        GRAMMAR.render(Intent("positive", "Comedy", also=("decade", "1990s")), rng,
                       style="description")
