"""`dpr.Recommender` (the Rust core) against outputs the PyTorch side computed, without torch.

The committed tiny bundles (tests/fixtures/, see its README) come with `golden.json`, written
by `tests/fixtures/make_tiny_bundles.py` from the PyTorch models: prompt inputs (sentence
embedding and intent read-out), backbone and steered user vectors, full-catalogue scores, the
exact top-k and the top-k over all items. Tolerances (golden.json `tolerance`): 1e-4 on scores
and vector entries, cosine >= 0.9999 on vectors, identical top-k (soft and auto mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import dpr
from dpr import Recommender
from dpr._core import HnswIndex

if TYPE_CHECKING:
    from conftest import TinyBundle


def _assert_close(got: np.ndarray, want: Any, tiny: TinyBundle, what: str) -> None:
    """Entries within `vector`, cosine at least `cosine` (two zero vectors agree)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    diff = float(np.abs(got - want).max())
    norms = np.linalg.norm(got) * np.linalg.norm(want)
    cosine = 1.0 if norms == 0 and not got.any() and not want.any() else got @ want / norms
    assert diff <= tiny.tolerance["vector"], f"{what}: max |rust - torch| = {diff}"
    assert cosine >= tiny.tolerance["cosine"], f"{what}: cosine {cosine}"


def _cases(tiny: TinyBundle) -> list[tuple[list[Any], str, float, dict[str, Any]]]:
    """(history ids, prompt, strength, golden case) of every golden case."""
    golden = tiny.golden
    return [(golden["histories"][c["history"]]["ids"], golden["prompts"][c["prompt"]]["text"],
             c["strength"], c) for c in golden["cases"]]


def test_prompt_inputs_and_intent_read_out(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    assert tiny_rec.prompt_dim == len(tiny.golden["prompts"][0]["prompt_input"])
    for prompt in tiny.golden["prompts"]:
        what = f"{tiny.kind} {prompt['text']!r}"
        got = tiny_rec.encode_prompt(prompt["text"])
        e = len(prompt["embedding"])
        _assert_close(got[:e], prompt["embedding"], tiny, f"{what}: embedding")
        probabilities = np.array(prompt["intent_probabilities"])  # (V, 3): none, asked, refused
        v = len(probabilities)
        np.testing.assert_allclose(got[e:e + v], probabilities[:, 1], rtol=0,
                                   atol=tiny.tolerance["score"], err_msg=f"{what}: asked")
        np.testing.assert_allclose(got[e + v:], probabilities[:, 2], rtol=0,
                                   atol=tiny.tolerance["score"], err_msg=f"{what}: refused")
        _assert_close(got, prompt["prompt_input"], tiny, f"{what}: prompt input")
    assert not tiny_rec.encode_prompt(" \n ").any()


def test_interpret_reads_the_golden_probabilities(tiny: TinyBundle,
                                                  tiny_rec: Recommender) -> None:
    intent = json.loads((tiny.path / "dpr.json").read_text("utf-8"))["intent"]
    threshold = intent.get("detect_threshold", 0.5)
    for prompt in tiny.golden["prompts"]:
        probabilities = np.array(prompt["intent_probabilities"])
        want = {(family, value, polarity): probabilities[v, column]
                for v, (family, value) in enumerate(intent["values"])
                for polarity, column in (("asked", 1), ("refused", 2))
                if probabilities[v, column] >= threshold}
        readings = tiny_rec.interpret(prompt["text"])
        got = {(r.attribute, r.value, r.polarity): r.confidence for r in readings}
        assert set(got) == set(want), (tiny.kind, prompt["text"], got, want)
        for key, confidence in got.items():
            assert abs(confidence - want[key]) <= tiny.tolerance["score"], (key, confidence)


def test_backbone_user_vectors(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    d = tiny.dim
    for history in tiny.golden["histories"]:
        what = f"{tiny.kind} history {history['ids']}"
        plain = tiny_rec.user_vector(history["ids"], "")
        _assert_close(plain[:d], history["user_vector"], tiny, what)
        assert not plain[d:].any(), f"{what}: the unsteered vector is [h, 0]"
        unsteered = tiny_rec.user_vector(history["ids"], "no horror please", strength=0.0)
        assert np.array_equal(unsteered, plain), what


def test_steered_vectors(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    for ids, prompt, strength, case in _cases(tiny):
        got = tiny_rec.user_vector(ids, prompt, strength=strength)
        _assert_close(got, case["steered"], tiny, f"{tiny.kind} {ids} {prompt!r} x{strength}")


def test_exact_top_k_and_catalogue_scores(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    k, tol = tiny.golden["k"], tiny.tolerance["score"]
    for ids, prompt, strength, case in _cases(tiny):
        what = f"{tiny.kind} {ids} {prompt!r} x{strength}"
        hits = tiny_rec.query(ids, prompt, k=k, strength=strength, mode="soft")
        assert [h.item_id for h in hits] == case["top_k_ids"], what
        np.testing.assert_allclose([h.score for h in hits], case["top_k_scores"], rtol=0,
                                   atol=tol, err_msg=what)
        auto = tiny_rec.query(ids, prompt, k=k, strength=strength, mode="auto")
        assert [h.item_id for h in auto] == case["auto_top_k_ids"], f"{what}: auto"
        everything = tiny_rec.query(ids, prompt, k=tiny.num_items, strength=strength,
                                    exclude_seen=False, mode="soft")
        scores = {h.item_id: h.score for h in everything}
        np.testing.assert_allclose([scores[i] for i in tiny.ids], case["scores"], rtol=0,
                                   atol=tol, err_msg=what)


def test_query_batch_matches_golden(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    k = tiny.golden["k"]
    for strength in sorted({c["strength"] for c in tiny.golden["cases"]}):
        cases = [c for c in _cases(tiny) if c[2] == strength]
        histories, prompts = [c[0] for c in cases], [c[1] for c in cases]
        found, scores = tiny_rec.query_batch(histories, prompts, k=k, strength=strength,
                                             mode="soft")
        auto, _ = tiny_rec.query_batch(histories, prompts, k=k, strength=strength, mode="auto")
        for row, (ids, prompt, _, case) in enumerate(cases):
            what = (tiny.kind, ids, prompt, strength)
            assert list(found[row]) == case["top_k_ids"], what
            np.testing.assert_allclose(scores[row], case["top_k_scores"], rtol=0,
                                       atol=tiny.tolerance["score"])
            assert list(auto[row]) == case["auto_top_k_ids"], what


def test_hnsw_graph_walk_returns_the_exact_top_k(tiny: TinyBundle) -> None:
    vectors = np.array(tiny.golden["item_vectors"], dtype=np.float32)
    items = np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors])  # row 0: padding
    index = HnswIndex(items, skip_first_row=True)
    k = tiny.golden["k"]
    for case in tiny.golden["cases"]:
        rows, scores = index.search(np.array(case["steered"], np.float32), k)
        assert list(rows) == case["all_items_top_k_rows"], (tiny.kind, case["history"])
        want = np.array(case["scores"])[np.array(case["all_items_top_k_rows"]) - 1]
        np.testing.assert_allclose(scores, want, rtol=0, atol=tiny.tolerance["score"])


def test_recommender_with_an_hnsw_index_matches_golden(tiny: TinyBundle) -> None:
    rec = Recommender.load(tiny.path, index="hnsw")
    assert rec.uses_hnsw
    for ids, prompt, strength, case in _cases(tiny):
        hits = rec.query(ids, prompt, k=tiny.golden["k"], strength=strength, mode="soft")
        assert [h.item_id for h in hits] == case["top_k_ids"], (tiny.kind, ids, prompt)


def test_serving_never_imports_torch(tiny: TinyBundle) -> None:
    """Load, encode, steer and rank in a fresh interpreter: torch is never imported."""
    script = (
        "import sys; from dpr import Recommender; "
        f"rec = Recommender.load({str(tiny.path)!r}); "
        f"rec.query({tiny.ids[:3]!r}, 'no horror please', k=3); "
        "rec.query_batch([[]], 'something funny', k=3); rec.interpret('a romantic drama'); "
        "assert 'torch' not in sys.modules, 'serving imported torch'"
    )
    python_dir = str(Path(dpr.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [python_dir, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
