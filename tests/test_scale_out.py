"""The hand-off to another vector engine (`item_vectors`, `user_vector`, `auto_exclusions`,
docs/scale-out.md) and the cache of backbone vectors per history.

faiss's exact inner-product index over `item_vectors()` must return `query`'s top-k for
prompted queries in soft, auto and hybrid mode, with `auto_exclusions`, the caller's exclusions
and the seen items passed as faiss's own ID filter.
"""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from conftest import TinyBundle
from dpr import CacheStats, Recommender

PROMPTS = ["", "something funny tonight", "no horror please", "a romantic drama",
           "I want action, but nothing too scary"]


def _histories(tiny: TinyBundle) -> list[list[int | str]]:
    ids = tiny.ids
    return [[], ids[:1], ids[3:9], ids[::-3][:tiny.max_len + 4]]


def _lowered_threshold(tiny: TinyBundle, folder: Path, threshold: float) -> Path:
    """A copy of `tiny` whose `auto` mode fires: the committed bundles' threshold (0.9) is
    above every refused probability their small heads give."""
    path = tiny.copy_to(folder)
    config = json.loads((path / "dpr.json").read_text("utf-8"))
    config["intent"]["refuse_threshold"] = threshold
    (path / "dpr.json").write_text(json.dumps(config), "utf-8")
    return path


def test_item_vectors_are_a_read_only_view_of_the_served_table(tiny: TinyBundle) -> None:
    rec = Recommender.load(tiny.path)
    vectors = rec.item_vectors()
    assert vectors.dtype == np.float32
    assert vectors.shape == (tiny.num_items, len(tiny.golden["item_vectors"][0]))
    np.testing.assert_allclose(vectors, np.array(tiny.golden["item_vectors"], np.float32),
                               atol=tiny.tolerance["vector"])
    assert rec.item_ids == tiny.ids
    assert not vectors.flags.writeable
    with pytest.raises(ValueError):
        vectors[0, 0] = 1.0
    assert np.shares_memory(vectors, rec.item_vectors()), "a copy, not a view"
    expected = vectors.copy()
    del rec
    gc.collect()
    np.testing.assert_array_equal(vectors, expected)  # the view keeps the engine alive


@pytest.mark.parametrize("prompt", PROMPTS)
def test_faiss_over_item_vectors_returns_the_query_top_k(tiny: TinyBundle, tmp_path: Path,
                                                         prompt: str) -> None:
    rec = Recommender.load(_lowered_threshold(tiny, tmp_path, 0.4))
    vectors = rec.item_vectors()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    fired = False
    for history in _histories(tiny):
        for mode, exclude in (("soft", None), ("auto", None), ("hybrid", {"genre": ["Horror"]})):
            hits = rec.query(history, prompt, k=5, mode=mode, exclude=exclude)
            user = rec.user_vector(history, prompt, mode=mode, exclude=exclude)
            refused = rec.auto_exclusions(prompt) if mode == "auto" else {}
            assert set(refused) <= {"genre"}, refused
            fired |= bool(refused)
            banned = np.concatenate([rec.item_rows(history)]
                                    + [rec.rows_with(a, v) for a, v in refused.items()]
                                    + [rec.rows_with(a, v) for a, v in (exclude or {}).items()])
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(banned.astype(np.int64)))
            scores, rows = index.search(user[None], 5, params=faiss.SearchParameters(sel=selector))
            found = [rec.item_ids[r] for r in rows[0] if r >= 0]
            assert found == [h.item_id for h in hits], (history, prompt, mode)
            np.testing.assert_allclose(scores[0][: len(hits)], [h.score for h in hits],
                                       rtol=1e-5, atol=1e-5)
    # The lowered threshold makes the committed heads refuse a value for every prompt, so the
    # auto case above exercised the exclusions.
    assert fired == bool(prompt)


def test_rows_with_are_the_items_having_a_value(tiny: TinyBundle) -> None:
    rec = Recommender.load(tiny.path)
    values = tiny.values("genre")
    for genre in rec.attributes["genre"]:
        expected = [row for row, v in enumerate(values) if genre in v]
        assert rec.rows_with("genre", [genre]).tolist() == expected
    both = rec.rows_with("genre", ["Comedy", "Drama"]).tolist()
    assert both == [row for row, v in enumerate(values) if {"Comedy", "Drama"} & set(v)]
    assert rec.rows_with("genre", "Comedy").tolist() == rec.rows_with("genre", ["Comedy"]).tolist()
    assert rec.item_rows(tiny.ids[4:7]).tolist() == [4, 5, 6]
    with pytest.raises(KeyError, match="no value"):
        rec.rows_with("genre", ["Western"])
    with pytest.raises(KeyError, match="unknown attribute"):
        rec.rows_with("colour", ["red"])
    missing = 10**9 if isinstance(tiny.ids[0], int) else "no-such-item"
    with pytest.raises(KeyError):
        rec.item_rows([missing])
    with pytest.raises(TypeError):
        rec.item_rows([object()])


def test_auto_exclusions_are_the_values_refused_above_the_threshold(tiny: TinyBundle,
                                                                    tmp_path: Path) -> None:
    threshold = 0.4
    rec = Recommender.load(_lowered_threshold(tiny, tmp_path, threshold))
    values = rec._engine.intent_values
    for prompt in tiny.golden["prompts"]:
        probabilities = np.array(prompt["intent_probabilities"])  # (V, 3): none, asked, refused
        expected: dict[str, list[str]] = {}
        for (attribute, value), p in zip(values, probabilities[:, 2], strict=True):
            if p >= threshold + 1e-4:
                expected.setdefault(attribute, []).append(value)
            elif p > threshold - 1e-4:
                pytest.skip("a golden probability sits on the threshold")
        got = rec.auto_exclusions(prompt["text"])
        assert {a: sorted(v) for a, v in got.items()} == {a: sorted(v) for a, v in expected.items()}
    assert rec.auto_exclusions("") == {}
    with pytest.raises(TypeError):
        rec.auto_exclusions(b"no horror")  # type: ignore[arg-type]


def test_a_new_prompt_on_a_known_history_is_a_cache_hit_with_the_same_answer(
        tiny: TinyBundle) -> None:
    cached = Recommender.load(tiny.path, history_cache=16)
    uncached = Recommender.load(tiny.path, history_cache=0)
    history = tiny.ids[3:9]
    assert cached.history_cache_stats() == CacheStats(0, 0, 0, 16)
    for prompt in PROMPTS:
        assert cached.query(history, prompt, k=5) == uncached.query(history, prompt, k=5)
    stats = cached.history_cache_stats()
    assert (stats.hits, stats.misses, stats.size) == (len(PROMPTS) - 1, 1, 1)
    assert uncached.history_cache_stats() == CacheStats(0, 0, 0, 0)
    # Only the window the backbone reads is the key: older items do not make a new entry.
    longer = tiny.ids[:1] + tiny.ids[-tiny.max_len:]
    cached.query(longer, "", k=5)
    cached.query(tiny.ids[1:2] + tiny.ids[-tiny.max_len:], "", k=5)
    assert cached.history_cache_stats().misses == 2
    with pytest.raises(ValueError, match="history_cache"):
        Recommender.load(tiny.path, history_cache=-1)


def test_the_cache_is_safe_under_many_threads(tiny: TinyBundle) -> None:
    rec = Recommender.load(tiny.path, history_cache=3)  # smaller than the working set
    reference = Recommender.load(tiny.path, history_cache=0)
    histories = [tiny.ids[i:i + 5] for i in range(8)]
    expected = {(i, p): reference.query(h, p, k=5)
                for i, h in enumerate(histories) for p in PROMPTS[:3]}
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            i, p = int(rng.integers(len(histories))), PROMPTS[int(rng.integers(3))]
            if rec.query(histories[i], p, k=5) != expected[(i, p)]:
                errors.append(f"history {i}, prompt {p!r}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    stats = rec.history_cache_stats()
    assert stats.hits + stats.misses == 8 * 200 and stats.size <= 4
