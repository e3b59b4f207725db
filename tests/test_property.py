"""Property tests over the query API: for random histories (unknown ids included), prompts,
filters, modes and k, the hits are k or every item that passes, never seen or filtered out,
best first, and the same on every call and in a batch.

They run on the committed tiny GRU4Rec bundle (tests/fixtures/tiny_gru4rec: 40 items with
string ids "m000".."m039"), without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_bundle
from dpr import Recommender
from test_recommender import GENRES

if TYPE_CHECKING:
    from conftest import TinyBundle

TINY: TinyBundle = tiny_bundle("gru4rec")
IDS: list[str] = TINY.ids  # type: ignore[assignment]
N = TINY.num_items
MAX_LEN = TINY.max_len
DIM = TINY.dim
VALUES = {a: TINY.values(a) for a in ("genre", "decade")}
ATTRIBUTES = {"genre": GENRES, "decade": ["1990s", "2000s"]}
# A few fixed prompts plus free text: the encoder's cache keeps the run short.
PROMPTS = st.one_of(
    st.sampled_from(["", "  ", "something funny tonight", "no horror please", "romance",
                     "😂", "ホラー映画", "x" * 3000]),
    st.text(max_size=40),
)
# Known ids, ids of the catalogue's form past its end ("m040".."m060") and integers (not
# ids of a string catalogue): unknown ones are ignored.
HISTORIES = st.lists(st.one_of(st.sampled_from(IDS), st.integers(0, 60).map(lambda i: f"m{i:03d}"),
                               st.integers(-10, 2000)),
                     max_size=3 * MAX_LEN)
FILTERS = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(sorted(ATTRIBUTES)),
                    st.lists(st.sampled_from([*GENRES, "1990s", "2000s"]), max_size=3),
                    max_size=2).map(lambda f: {a: [v for v in vs if v in ATTRIBUTES[a]]
                                               for a, vs in f.items()} or None),
)
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def rec() -> Recommender:
    return Recommender.load(TINY.path)


def _passes(row: int, include: dict[str, list[str]] | None,
            exclude: dict[str, list[str]] | None) -> bool:
    attributes = {a: set(v[row]) for a, v in VALUES.items()}
    return (all(attributes[a] & set(vs) for a, vs in (include or {}).items())
            and not any(attributes[a] & set(vs) for a, vs in (exclude or {}).items()))


@SETTINGS
@given(history=HISTORIES, prompt=PROMPTS, k=st.integers(0, N + 20),
       strength=st.sampled_from([0.0, 0.3, 1.0, 2.5]), exclude_seen=st.booleans(),
       include=FILTERS, exclude=FILTERS, hard=st.booleans())
def test_query_invariants(rec: Recommender, history: list[str | int], prompt: str, k: int,
                          strength: float, exclude_seen: bool, include: Any, exclude: Any,
                          hard: bool) -> None:
    filtered = bool(include or exclude)
    mode = ("hard" if hard else "hybrid") if filtered else "soft"
    args: dict[str, Any] = dict(k=k, strength=strength, exclude_seen=exclude_seen,
                                include=include, exclude=exclude, mode=mode, unknown="ignore")
    hits = rec.query(history, prompt, **args)
    known = {i for i in history if i in set(IDS)}
    eligible = [row for row, item in enumerate(IDS)
                if _passes(row, include, exclude) and not (exclude_seen and item in known)]
    assert len(hits) == min(k, len(eligible))
    got = [h.item_id for h in hits]
    assert len(set(got)) == len(got)
    assert set(got) <= {IDS[row] for row in eligible}       # no seen or filtered-out item
    scores = [h.score for h in hits]
    assert all(np.isfinite(scores))
    assert scores == sorted(scores, reverse=True)
    again = rec.query(history, prompt, **args)
    assert [(h.item_id, h.score) for h in again] == [(h.item_id, h.score) for h in hits]
    if len(hits) < len(eligible) and hits:                  # nothing better left out
        rest = rec.query(history, prompt, **{**args, "k": len(eligible)})
        assert [h.item_id for h in rest[: len(hits)]] == got
    if not filtered:
        # mode="soft" as the single query (the bundle has an intent head: the default, "auto",
        # would also exclude refused values).
        ids, batch_scores = rec.query_batch([history], [prompt], k=k, strength=strength,
                                            exclude_seen=exclude_seen, unknown="ignore",
                                            mode="soft")
        assert list(ids[0][: len(hits)]) == got
        np.testing.assert_array_equal(batch_scores[0][: len(hits)], np.float32(scores))


@SETTINGS
@given(history=HISTORIES, prompt=PROMPTS)
def test_user_vector_invariants(rec: Recommender, history: list[str | int], prompt: str) -> None:
    vector = rec.user_vector(history, prompt, unknown="ignore")
    assert vector.shape == (DIM + len(GENRES),) and np.isfinite(vector).all()
    known = [i for i in history if i in set(IDS)]
    assert np.array_equal(vector, rec.user_vector(known[-MAX_LEN:], prompt))
    if not prompt.strip(" \t\n\r"):
        assert not vector[DIM:].any()                        # no steering: backbone exactly


def test_bundle_fixture_is_gru4rec(rec: Recommender) -> None:
    assert Path(rec.path, "dpr.json").is_file() and rec.num_items == N
    assert json.loads(Path(rec.path, "dpr.json").read_text())["backbone"]["kind"] == "gru4rec"
