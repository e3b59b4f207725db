"""Ranges of an ordered family ("older than 1980", "a recent film"): the grammar, episodes, the
stage-3 refusal mask and the range protocols."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dpr.data.dataset import ItemCatalogue, LeaveOneOutSplit
from dpr.evaluate.protocols import SteeringCases
from dpr.evaluate.ranges import evaluate_ranges
from dpr.prompts import (
    POLARITIES,
    SPLITS,
    Grammar,
    Intent,
    intent_of,
    steering_episodes,
    value_ranges,
)
from dpr.train.steering import episode_keys, refused_columns

DECADES = [f"{d}s" for d in range(1910, 2010, 10)]
GRAMMAR = Grammar.load().with_values("decade", DECADES)
NEG = POLARITIES.index("negative")


def test_relative_frames_pick_the_values_their_words_say() -> None:
    rng = np.random.default_rng(0)
    cases = {  # frame id -> (boundary named in the text, expected set)
        "rel-older-than": ("1980", DECADES[:7]),       # older than 1980: up to the 1970s
        "rel-up-to": ("80s", DECADES[:8]),             # up to the 80s: the 80s included
        "rel-since": ("1980", DECADES[7:]),            # made since 1980
        "rel-newer-than": ("80s", DECADES[8:]),        # newer than the 80s: from the 90s
        "rel-nothing-older": ("80s", DECADES[:7]),     # refused: everything before the 80s
    }
    for frame_id, (named, values) in cases.items():
        frame = GRAMMAR.frame(frame_id)
        kind = "positive" if frame.polarity == "asked" else "negative"
        for _ in range(200):
            r = GRAMMAR.render(Intent(kind, values[0], family="decade", values=tuple(values)),
                               rng)
            if r.frame == frame_id:
                break
        else:
            pytest.fail(f"{frame_id} never rendered {values}")
        names = ("1980",) if named == "1980" else ("80s", "eighties")
        assert any(n in r.text for n in names), r.text
        assert r.labels == tuple(("decade", v, frame.polarity) for v in values)


def test_eras_render_in_generic_frames_and_label_every_value() -> None:
    rng = np.random.default_rng(1)
    recent = ("1990s", "2000s")
    texts = set()
    for _ in range(300):
        r = GRAMMAR.render(Intent("negative", "1990s", family="decade", values=recent), rng)
        assert r.labels == (("decade", "1990s", "refused"), ("decade", "2000s", "refused"))
        texts.add(r.text)
        if "/" in r.frame:  # an era in a frame
            era, frame = r.frame.split("/")
            assert era == "era-recent" and not GRAMMAR.frame(frame).families
            assert "from the recent" not in r.text.lower()
    assert len(texts) > 50


def test_ranges_follow_the_catalogue_and_every_split_has_its_own() -> None:
    for split in SPLITS:
        for polarity in ("asked", "refused"):
            ranges = GRAMMAR.ranges_of("decade", split, polarity)
            assert ranges, (split, polarity)
            assert all(2 <= len(r) < len(DECADES) for r in ranges)
            assert all(list(r) == sorted(r) for r in ranges)
    # a catalogue from the 1920s to the 1990s: ranges stay inside it
    small = Grammar.load().with_values("decade", DECADES[1:-1])
    for r in small.ranges_of("decade", "train", "asked"):
        assert set(r) <= set(DECADES[1:-1])
    assert small.ranges_of("genre", "train", "asked") == []  # genres have no order


def test_heldout_range_forms_share_no_cue_with_training_ones() -> None:
    train = [f.text.lower() for f in (*GRAMMAR.frames, *GRAMMAR.clauses, *GRAMMAR.connectors,
                                      *GRAMMAR.ranges) if f.split == "train"]
    heldout = [f for f in GRAMMAR.ranges if f.split == "heldout"]
    assert len(heldout) >= 6
    for frame in heldout:
        cue = re.compile(rf"\b{re.escape(frame.cue.lower())}\b")
        assert not any(cue.search(t) for t in train), frame.id
    eras = GRAMMAR.families["decade"].eras
    train_words = {w for e in eras if e.split == "train" for phrase in (*e.names, *e.nouns)
                   for w in phrase.lower().split()}
    for era in (e for e in eras if e.split == "heldout"):
        assert not set(era.names[0].lower().split()) & train_words, era.id


def test_a_range_intent_validates() -> None:
    Intent("positive", "1990s", family="decade", values=("1990s", "2000s"))
    with pytest.raises(ValueError, match="not in the range"):
        Intent("positive", "1980s", family="decade", values=("1990s", "2000s"))
    with pytest.raises(ValueError, match="range"):
        Intent("compound", "1990s", "Horror", family="decade", values=("1990s", "2000s"))
    with pytest.raises(ValueError, match=r"no .* range|outside"):
        GRAMMAR.render(Intent("positive", "1910s", family="decade",
                              values=("1910s", "1950s")), np.random.default_rng(0))


def _catalogue(seed: int = 0) -> tuple[LeaveOneOutSplit, ItemCatalogue]:
    rng = np.random.default_rng(seed)
    n = 300
    ids = np.arange(1, n + 1)
    genres = [tuple(rng.choice(["Comedy", "Drama", "Horror"], size=rng.integers(1, 3),
                               replace=False)) for _ in range(n)]
    decades = [(str(rng.choice(DECADES)),) if rng.random() < 0.95 else () for _ in range(n)]
    catalogue = ItemCatalogue(ids, [f"t{i}" for i in ids], {"genre": genres, "decade": decades})
    sequences = [rng.integers(1, n + 1, size=int(rng.integers(5, 15))) for _ in range(40)]
    split = LeaveOneOutSplit([s[:-2] for s in sequences], np.array([s[-2] for s in sequences]),
                             np.array([s[-1] for s in sequences]))
    return split, catalogue


def test_range_episodes_fit_the_target_and_refuse_the_whole_range() -> None:
    split, catalogue = _catalogue()
    families = ("genre", "decade")
    grammar = GRAMMAR.with_values("decade", catalogue.attribute_values("decade"))
    _, columns = catalogue.steered_matrix(families)
    ranges = value_ranges(grammar, columns)
    assert ranges and all(columns[c][0] == "decade" for r in ranges for c in r.columns)
    episodes = steering_episodes(split, catalogue, families=families, ranges=ranges,
                                 rng=np.random.default_rng(0))
    named = np.flatnonzero(episodes.span >= 0)
    assert 0.03 < len(named) / len(episodes) < 0.3
    kinds = set()
    for i in named:
        intent = intent_of(episodes, int(i))
        has = set(catalogue.values_of("decade", int(episodes.target[i])))
        kinds.add(intent.polarity)
        if intent.polarity == "positive":
            assert has & set(intent.values)
        else:
            assert intent.polarity == "negative" and not has & set(intent.values)
        grammar.render(intent, np.random.default_rng(0))  # renderable
    assert kinds == {"positive", "negative"}
    keys = episode_keys(episodes, named)
    assert all(k[1] == -1 and k[4] >= 0 for k in keys)
    refused = refused_columns(episodes, named, len(columns)).numpy()
    for row, i in enumerate(named):
        expected = (set(episodes.ranges[episodes.span[i]].columns)
                    if episodes.polarity[i] == NEG else set())
        assert set(np.flatnonzero(refused[row])) == expected


def test_range_protocols_on_hand_made_scores() -> None:
    split, catalogue = _catalogue(1)
    _, names = catalogue.attribute_matrix("decade")
    rng = np.random.default_rng(3)
    items = rng.normal(size=(catalogue.num_items + 1, 8)).astype(np.float32)
    users = rng.normal(size=(len(split.test_targets), 8)).astype(np.float32)
    cases = SteeringCases(histories=[np.asarray(h) for h in split.train],
                          targets=split.test_targets, user_vectors=users, item_vectors=items,
                          catalogue=catalogue, attribute="decade")
    grammar = GRAMMAR.with_values("decade", names)
    results = evaluate_ranges(cases, {"id": lambda h, prompts: h}, grammar, split="heldout")
    positive = results["protocols"]["range positive"]["methods"]
    negative = results["protocols"]["range negative"]["methods"]
    # a steerer that ignores the prompt is the backbone; its hybrid is the filter
    for methods in (positive, negative):
        assert methods["id soft"] == methods["backbone"]
    assert positive["id hybrid"] == positive["pre-filter"]
    assert negative["id hybrid"] == negative["hard filter"]
    assert positive["pre-filter"]["genre_share@10"] == 1.0
    assert negative["hard filter"]["genre_share@10"] == 0.0
    assert negative["backbone"]["genre_share@10"] > 0.0
    # the pre-filter never misses a target it keeps: NDCG at least the backbone's
    assert positive["pre-filter"]["ndcg@10"] >= positive["backbone"]["ndcg@10"]


def test_range_interpret_scores_exact_sets_and_partial_overlap() -> None:
    split, catalogue = _catalogue(2)
    _, names = catalogue.attribute_matrix("decade")
    rng = np.random.default_rng(4)
    cases = SteeringCases(histories=[np.asarray(h) for h in split.train],
                          targets=split.test_targets,
                          user_vectors=rng.normal(size=(len(split.test_targets), 4)),
                          item_vectors=rng.normal(size=(catalogue.num_items + 1, 4)),
                          catalogue=catalogue, attribute="decade")
    columns = [("decade", v) for v in names]

    def everything_asked(prompts):  # reads every decade as asked, whatever the prompt
        probs = np.zeros((len(prompts), len(columns), 3))
        probs[..., 1] = 1.0
        return probs

    results = evaluate_ranges(cases, {"id": lambda h, prompts: h},
                              GRAMMAR.with_values("decade", names), split="train",
                              read=everything_asked, columns=columns)
    positive = results["protocols"]["range positive"]
    negative = results["protocols"]["range negative"]
    assert positive["interpret"] == 0.0 and negative["interpret"] == 0.0
    assert 0.2 < positive["interpret_overlap"] < 1.0  # the asked range is part of the reading
    assert negative["interpret_overlap"] == 0.0  # a refused range read as asked: no credit
