"""A filter overrules a contradicting reading: the query then ranks like the filter alone.

When the query's exclusions (given, or added by mode "auto") cover every value the intent
read-out finds in a prompt and at least one of those values is read as asked for, the filter
contradicts the reading (a misread refusal) and says everything else the prompt says: the
engine ranks the allowed items by the unsteered backbone, exactly `mode="hard"` with those
exclusions. A prompt read as refusals only, or with a reading the filters leave open, steers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import TinyBundle
from dpr import Recommender

PROMPTS = ["no horror please", "something funny tonight", "a romantic drama",
           "I want action, but nothing too scary", "spare me the comedies", "hold the westerns",
           "a comedy, no romance"]


def _thresholds(tiny: TinyBundle, folder: Path, detect: float, refuse: float) -> Recommender:
    """`tiny` with thresholds low enough that its small head reads values in every prompt."""
    path = tiny.copy_to(folder)
    config = json.loads((path / "dpr.json").read_text("utf-8"))
    config["intent"]["detect_threshold"] = detect
    config["intent"]["refuse_threshold"] = refuse
    (path / "dpr.json").write_text(json.dumps(config), "utf-8")
    return Recommender.load(path)


def _filters(readings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for reading in readings:
        out.setdefault(reading.attribute, []).append(reading.value)
    return out


def _scores(hits) -> list[tuple[object, float]]:
    return [(h.item_id, h.score) for h in hits]


def test_excluding_every_value_read_when_one_is_asked_gives_the_filter_alone(
        tiny: TinyBundle, tmp_path: Path) -> None:
    rec = _thresholds(tiny, tmp_path, detect=0.2, refuse=0.99)
    history = tiny.ids[3:9]
    outcomes = set()
    for prompt in PROMPTS:
        readings = rec.interpret(prompt)
        if not readings:
            continue
        every = _filters(readings)
        contradicted = any(r.polarity == "asked" for r in readings)
        hard = rec.query(history, prompt, k=8, exclude=every, mode="hard")
        hybrid = rec.query(history, prompt, k=8, exclude=every)
        assert (_scores(hybrid) == _scores(hard)) == contradicted, prompt
        vector = rec.user_vector(history, prompt, exclude=every, mode="hybrid")
        assert np.array_equal(vector, rec.user_vector(history, "")) == contradicted, prompt
        outcomes.add(contradicted)
        # Leave one value read out of the filter: the prompt steers.
        partial = _filters(readings[1:])
        if partial:
            hybrid = rec.query(history, prompt, k=8, exclude=partial)
            assert _scores(hybrid) != _scores(rec.query(history, prompt, k=8, exclude=partial,
                                                        mode="hard")), prompt
    assert True in outcomes, "the lowered threshold should make the head read requests"


def test_auto_exclusions_count_towards_the_cover(tiny: TinyBundle, tmp_path: Path) -> None:
    # Thresholds between a prompt's second and third readings: auto excludes the refused ones
    # among the top two, an explicit exclusion of the asked ones completes the cover, and the
    # reading is contradicted when one of the two is asked for.
    history = tiny.ids[2:7]
    rec = _thresholds(tiny, tmp_path / "low", detect=0.05, refuse=1.0)
    checked = set()
    for n, prompt in enumerate(PROMPTS):
        readings = rec.interpret(prompt)
        if len(readings) < 3 or readings[1].confidence - readings[2].confidence < 2e-3:
            continue
        cut = (readings[1].confidence + readings[2].confidence) / 2
        tuned = _thresholds(tiny, tmp_path / str(n), detect=cut, refuse=cut)
        top = readings[:2]
        asked = [r for r in top if r.polarity == "asked"]
        refused = {(r.attribute, r.value) for r in top if r.polarity == "refused"}
        assert {(a, v) for a, vs in tuned.auto_exclusions(prompt).items() for v in vs} == refused
        explicit = _filters(asked) or None
        auto = tuned.query(history, prompt, k=6, mode="auto", exclude=explicit)
        hard = tuned.query(history, prompt, k=6, mode="hard", exclude=_filters(top))
        assert (_scores(auto) == _scores(hard)) == bool(asked), prompt
        # Auto alone never contradicts a reading: it excludes refused values only.
        np.testing.assert_array_equal(tuned.user_vector(history, prompt, mode="auto"),
                                      tuned.user_vector(history, prompt, mode="soft"))
        checked.add(bool(asked))
    assert True in checked


def test_include_filters_and_blank_prompts_never_overrule(tiny: TinyBundle,
                                                          tmp_path: Path) -> None:
    rec = _thresholds(tiny, tmp_path, detect=0.2, refuse=0.99)
    history = tiny.ids[1:6]
    prompt = next(p for p in PROMPTS if any(r.polarity == "asked" for r in rec.interpret(p)))
    read = _filters(rec.interpret(prompt))
    # An include filter never overrules a reading: a request it matches still steers.
    include = {family: values[:1] for family, values in read.items()}
    hybrid = rec.query(history, prompt, k=5, include=include)
    assert _scores(hybrid) != _scores(rec.query(history, prompt, k=5, include=include,
                                                mode="hard"))
    # Nothing read (blank prompt): the ranking is the backbone's under the filter anyway.
    blank = rec.query(history, "", k=5, exclude=read)
    assert _scores(blank) == _scores(rec.query(history, "", k=5, exclude=read, mode="hard"))
