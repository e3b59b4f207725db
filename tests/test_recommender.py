"""Serving parity and API: the Rust core against the PyTorch model on the same bundle.

The parity tests (`served`: bundles exported here from PyTorch models) need torch and are
skipped without it; the API tests run on the committed tiny bundles (`tiny`, `tiny_rec` in
conftest.py) with numpy and the extension alone.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import dpr
from dpr import Recommender, _core
from dpr._core import INDEX_FILE

if TYPE_CHECKING:
    from conftest import TinyBundle
    from dpr.encoder import PromptEncoder
    from dpr.models.dpr import DPR

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
N = 300
MAX_LEN = 24
PROMPTS = ["", "something funny tonight", "no horror please", "a romantic drama",
           "I want action, but nothing too scary", "anything"]


def _model(kind: str) -> DPR:
    """kind: "sasrec" (positions counted from the most recent item), "sasrec-from-start"
    (the layout of bundles written before that) or "gru4rec"."""
    import torch

    from dpr.models.dpr import DPR
    from dpr.models.gru4rec import GRU4Rec
    from dpr.models.sasrec import SASRec
    from dpr.models.steering import DPRSteering

    torch.manual_seed(4 if kind == "gru4rec" else 3)
    positions = "from_start" if kind == "sasrec-from-start" else "from_end"
    backbone = (GRU4Rec(N, dim=32, max_len=MAX_LEN, num_layers=2) if kind == "gru4rec" else
                SASRec(N, dim=32, max_len=MAX_LEN, num_blocks=2, num_heads=2, ffn_dim=48,
                       positions=positions))
    steering = DPRSteering(32, attribute_dim=len(GENRES), projector_hidden=64,
                           expert_hidden=48, router_hidden=32, positive_experts=2,
                           negative_experts=2, attribute_scale=10.0)
    with torch.no_grad():  # larger than the init so that steering visibly moves rankings
        steering.experts.out_weight.normal_(std=0.3)
        steering.experts.out_bias.normal_(std=0.1)
    return DPR(backbone, steering, columns=[("genre", g) for g in GENRES]).eval()


def _catalogue() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    genres = [sorted({GENRES[i % 5], *rng.choice(GENRES, size=rng.integers(0, 2))})
              for i in range(N)]
    return {"item_ids": [1000 + 7 * i for i in range(N)],
            "titles": [f"Film {i}" for i in range(N)],
            "attributes": {"genre": genres,
                           "decade": [["1990s" if i % 3 else "2000s"] for i in range(N)]}}


@pytest.fixture(scope="module", params=["sasrec", "sasrec-from-start", "gru4rec"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[DPR, Recommender, dict[str, Any]]:
    pytest.importorskip("torch")
    from dpr.export import export_bundle

    kind = request.param
    model = _model(kind)
    catalogue = _catalogue()
    path = export_bundle(model, catalogue, tmp_path_factory.mktemp(kind) / "bundle",
                         encoder_dtype="float32")
    return model, Recommender.load(path), catalogue


@pytest.fixture(scope="module")
def torch_encoder() -> PromptEncoder:
    pytest.importorskip("torch")
    from dpr.encoder import PromptEncoder

    return PromptEncoder()


def _histories(rng: np.random.Generator, count: int) -> list[list[int]]:
    lengths = [0, 1, 2, MAX_LEN - 1, MAX_LEN, MAX_LEN + 7, 3 * MAX_LEN]
    lengths += list(rng.integers(1, 2 * MAX_LEN, size=count - len(lengths)))
    return [list(rng.choice(np.arange(1, N + 1), size=n, replace=False)) for n in lengths]


def _torch_steered(model: DPR, rows: list[list[int]], prompts: np.ndarray,
                   strength: float = 1.0) -> np.ndarray:
    import torch

    from dpr.models.backbone import user_vectors
    from dpr.train.batches import history_batch

    # An empty history is served as the lone padding item (what PyTorch computes for length 0).
    items, lengths = history_batch([np.array(r or [0], dtype=np.int64) for r in rows], MAX_LEN)
    with torch.inference_mode():
        h = user_vectors(model.backbone, items, lengths)
        return model.steering(h, torch.from_numpy(prompts), strength).steered.numpy()


def _item_table(model: DPR, catalogue: dict[str, Any]) -> np.ndarray:
    import torch

    attributes = np.zeros((N, len(GENRES)), dtype=np.float32)
    for i, genres in enumerate(catalogue["attributes"]["genre"]):
        attributes[i, [GENRES.index(g) for g in genres]] = 1
    with torch.no_grad():
        return model.item_vectors(torch.from_numpy(attributes)).numpy()


def test_user_vectors_match_pytorch(served: tuple[DPR, Recommender, dict[str, Any]],
                                    torch_encoder: PromptEncoder) -> None:
    model, rec, catalogue = served
    rng = np.random.default_rng(1)
    histories = _histories(rng, 24)
    ids = catalogue["item_ids"]
    worst = 0.0
    for prompt in PROMPTS:
        embedding = torch_encoder.encode([prompt])
        for strength in (0.0, 0.5, 1.0, 2.0):
            expected = _torch_steered(model, histories, np.repeat(embedding, len(histories), 0),
                                      strength)
            for history, want in zip(histories, expected, strict=True):
                rows, _ = rec._engine.rows([ids[r - 1] for r in history])
                got = rec._engine.user_vector_for(rows, embedding[0], strength)
                worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-4, f"max |rust - torch| = {worst}"


def test_empty_prompt_is_exactly_the_backbone(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    rec, history = tiny_rec, tiny.ids[:10]
    plain = rec.user_vector(history, "")
    steered_zero = rec.user_vector(history, "no horror please", strength=0.0)
    assert np.array_equal(plain, steered_zero)
    assert np.all(plain[tiny.dim:] == 0.0)
    hits = rec.query(history, "", k=10)
    hard = rec.query(history, "no horror please", k=10, mode="hard", exclude={"decade": []})
    assert [h.item_id for h in hits] == [h.item_id for h in hard]


def test_prompt_vectors_match_pytorch(served: tuple[DPR, Recommender, dict[str, Any]],
                                      torch_encoder: PromptEncoder) -> None:
    _, rec, _ = served
    prompts = [p for p in PROMPTS if p] + ["Sci-Fi", "kids movies!!", "No ROMANCE."]
    want = torch_encoder.encode(prompts)
    got = np.stack([rec.encode_prompt(p) for p in prompts])
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert np.array_equal(rec.encode_prompt("   "), np.zeros(384, dtype=np.float32))


def _same_up_to_ties(got: list[int], scores: np.ndarray, want: list[int], tol: float) -> bool:
    """Lists agree, except where the reference scores of the differing items tie within tol."""
    if got == want:
        return True
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g != w and abs(scores[g] - scores[w]) > tol:
            return False
    return abs(scores[got].min() - scores[want].min()) <= tol


def test_top_k_matches_pytorch(served: tuple[DPR, Recommender, dict[str, Any]],
                               torch_encoder: PromptEncoder) -> None:
    model, rec, catalogue = served
    rng = np.random.default_rng(2)
    table = _item_table(model, catalogue)
    ids = catalogue["item_ids"]
    histories = _histories(rng, 20)
    for prompt in PROMPTS:
        embedding = torch_encoder.encode([prompt])
        steered = _torch_steered(model, histories, np.repeat(embedding, len(histories), 0))
        for history, vector in zip(histories, steered, strict=True):
            scores = table @ vector
            seen = np.array(history, dtype=np.int64) - 1
            masked = scores.copy()
            masked[seen] = -np.inf
            want = list(np.argsort(-masked, kind="stable")[:10])
            hits = rec.query([ids[r - 1] for r in history], prompt, k=10)
            got = [ids.index(h.item_id) for h in hits]
            assert _same_up_to_ties(got, scores, want, 1e-4), (prompt, got, want)
            np.testing.assert_allclose([h.score for h in hits], scores[got], atol=1e-4)


def test_filters_and_modes(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    rec, ids = tiny_rec, tiny.ids
    genres, decades = tiny.values("genre"), tiny.values("decade")
    history = ids[10:20]
    eligible = {ids[i] for i in range(tiny.num_items) if "Comedy" in genres[i]
                and decades[i] == ["1990s"] and ids[i] not in history}
    assert len(eligible) > 4
    for k in (4, tiny.num_items):  # fewer than pass the filters, and all of them
        hybrid = rec.query(history, "something funny", k=k, include={"genre": ["Comedy"]},
                           exclude={"decade": "2000s"})
        assert len(hybrid) == min(k, len(eligible))
        for hit in hybrid:
            assert "Comedy" in hit.attributes["genre"] and hit.attributes["decade"] == ["1990s"]
            assert hit.item_id not in history
    hard = rec.query(history, "something funny", k=15, include={"genre": ["Comedy"]},
                     mode="hard")
    plain = [h for h in rec.query(history, "", k=tiny.num_items)
             if "Comedy" in h.attributes["genre"]]
    assert [h.item_id for h in hard] == [h.item_id for h in plain[:15]]
    with pytest.raises(ValueError, match="soft"):
        rec.query(history, "x", include={"genre": ["Comedy"]}, mode="soft")
    with pytest.raises(KeyError, match="unknown attribute"):
        rec.query(history, "x", include={"mood": ["happy"]})
    with pytest.raises(KeyError, match="no value"):
        rec.query(history, "x", exclude={"genre": ["Western"]})
    # A filter that matches nothing gives no hits, not an error.
    nothing = rec.query(history, "", include={"genre": ["Comedy"]}, exclude={"genre": ["Comedy"]})
    assert nothing == []


def test_ids_titles_and_unknown_ids(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    rec, ids = tiny_rec, tiny.ids
    hits = rec.query(ids[:5], "", k=3)
    assert len(hits) == 3
    for hit in hits:
        assert hit.title == tiny.titles[ids.index(hit.item_id)]
        assert isinstance(hit.item_id, type(ids[0])) and isinstance(hit.score, float)
    with pytest.raises(KeyError, match="unknown item id 5"):
        rec.query([ids[0], 5], "")
    ignored = rec.query([ids[0], 5], "", unknown="ignore")
    assert [h.item_id for h in ignored] == [h.item_id for h in rec.query([ids[0]], "")]
    with pytest.raises(TypeError):
        rec.query([1.5], "")
    with pytest.raises(ValueError, match="k must be"):
        rec.query([], "", k=-1)
    with pytest.raises(ValueError, match="strength"):
        rec.query([], "x", strength=float("nan"))


def _tiny_histories(tiny: TinyBundle, rng: np.random.Generator, count: int) -> list[list[Any]]:
    """Histories of dataset ids: empty, short, around max_len, longer, then random lengths."""
    n, max_len = tiny.num_items, tiny.max_len
    lengths = [0, 1, 2, max_len - 1, max_len, max_len + 3, n // 2]
    lengths += list(rng.integers(1, n // 2, size=count - len(lengths)))
    return [[tiny.ids[i] for i in rng.choice(n, size=length, replace=False)]
            for length in lengths]


def test_query_batch_matches_single_queries(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    rec, ids = tiny_rec, tiny.ids
    histories = _tiny_histories(tiny, np.random.default_rng(5), 30)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(histories))]
    found, scores = rec.query_batch(histories, prompts, k=10)
    assert found.shape == scores.shape == (len(histories), 10)
    assert scores.dtype == np.float32
    assert found.dtype == (np.int64 if isinstance(ids[0], int) else object)
    for i, (history, prompt) in enumerate(zip(histories, prompts, strict=True)):
        hits = rec.query(history, prompt, k=10)
        assert list(found[i]) == [h.item_id for h in hits]
        np.testing.assert_array_equal(scores[i], np.array([h.score for h in hits], np.float32))
    one_prompt, _ = rec.query_batch(histories[:3], "no horror please", k=5)
    for i in range(3):
        assert list(one_prompt[i]) == [h.item_id for h in
                                       rec.query(histories[i], "no horror please", k=5)]
    padded, padded_scores = rec.query_batch([ids[:tiny.num_items - 2]], "", k=5)
    pad = -1 if isinstance(ids[0], int) else None
    assert list(padded[0][2:]) == [pad] * 3 and np.isneginf(padded_scores[0][2:]).all()


def test_shared_between_threads(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    rec = tiny_rec
    cases = [(h, PROMPTS[i % len(PROMPTS)])
             for i, h in enumerate(_tiny_histories(tiny, np.random.default_rng(6), 40))]
    serial = [[h.item_id for h in rec.query(h, p)] for h, p in cases]
    results: dict[int, list[list[Any]]] = {}

    def work(worker: int) -> None:
        results[worker] = [[h.item_id for h in rec.query(h, p)] for h, p in cases]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[w] == serial for w in range(8))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Recommender.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dpr\.json"):
        Recommender.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dpr.json").write_text('{"format": "dpr-bundle", "version": 99}')
    with pytest.raises(dpr.BundleFormatError, match="version"):
        Recommender.load(tmp_path / "bad")


def test_reference_model_round_trip(served: tuple[DPR, Recommender, dict[str, Any]]) -> None:
    import torch

    from dpr.export import model_from_bundle

    model, rec, _ = served
    rebuilt, config = model_from_bundle(rec.path)
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    assert config["backbone"]["kind"] == model.backbone.kind


def test_hnsw_index_agrees_with_exact(tiny: TinyBundle, tiny_rec: Recommender,
                                      tmp_path: Path) -> None:
    exact, ids, genres = tiny_rec, tiny.ids, tiny.values("genre")
    graph = Recommender.load(tiny.path, index="hnsw")
    assert graph.uses_hnsw and not exact.uses_hnsw
    histories = _tiny_histories(tiny, np.random.default_rng(7), 40)
    overlap = []
    for i, history in enumerate(histories):
        prompt = PROMPTS[i % len(PROMPTS)]
        want = {h.item_id for h in exact.query(history, prompt, k=10)}
        got = graph.query(history, prompt, k=10)
        assert not {h.item_id for h in got} & set(history)
        overlap.append(len(want & {h.item_id for h in got}) / max(len(want), 1))
        filtered = graph.query(history, prompt, k=10, include={"genre": ["Horror"]})
        assert all("Horror" in h.attributes["genre"] for h in filtered)
        assert len(filtered) == min(10, sum("Horror" in g and ids[j] not in history
                                            for j, g in enumerate(genres)))
    assert np.mean(overlap) >= 0.98, np.mean(overlap)
    saved = graph.save_index(tmp_path / "index.usearch")
    assert saved.is_file() and saved.stat().st_size > 0


def test_saved_index_is_served_and_can_be_replaced_while_open(tiny: TinyBundle,
                                                              tmp_path: Path) -> None:
    """A saved graph is memory-mapped by later loads; saving again replaces the file without
    disturbing a process that has the old one open."""
    bundle = tiny.copy_to(tmp_path)
    built = Recommender.load(bundle, index="hnsw")
    built.save_index()
    viewing = Recommender.load(bundle, index="hnsw")
    history = tiny.ids[:5]
    before = viewing.query(history, PROMPTS[0], k=10)
    assert before == built.query(history, PROMPTS[0], k=10)
    viewing.save_index()  # rewrites the file this Recommender is viewing
    assert viewing.query(history, PROMPTS[0], k=10) == before
    assert Recommender.load(bundle, index="hnsw").query(history, PROMPTS[0], k=10) == before
    assert not list(bundle.glob("*.partial")), "no partial file left behind"


def test_calibrate_index_measures_on_user_vectors_and_the_saved_file_keeps_it(
        tiny: TinyBundle, tmp_path: Path) -> None:
    """`calibrate_index` measures recall on the steered vectors of the histories and prompts
    given, against the exact scan; `save_index` keeps the breadth for later loads."""
    bundle = tiny.copy_to(tmp_path)
    rec = Recommender.load(bundle, index="hnsw")
    histories = _tiny_histories(tiny, np.random.default_rng(8), 30)
    ef, recall = rec.calibrate_index(histories, PROMPTS[0], k=10, target=0.9)
    assert recall >= 0.9 or ef == 1024
    path = rec.save_index()
    items = np.vstack([np.zeros((1, rec.item_vectors().shape[1]), np.float32),
                       rec.item_vectors()])
    assert _core.HnswIndex.load(str(path), items).expansion_search == ef
    per_history = [PROMPTS[i % len(PROMPTS)] for i in range(len(histories))]
    assert rec.calibrate_index(histories, per_history, k=5, target=0.5)[1] >= 0.5
    with pytest.raises(ValueError, match="prompts for"):
        rec.calibrate_index(histories, per_history[:3])
    with pytest.raises(ValueError, match="at least one history"):
        rec.calibrate_index([])
    with pytest.raises(ValueError, match="target"):
        rec.calibrate_index(histories, target=2.0)


def test_an_exact_recommender_stays_exact_after_saving_or_calibrating_a_graph(
        tiny: TinyBundle, tmp_path: Path) -> None:
    """`save_index` and `calibrate_index` on a Recommender answering by the exact scan build a
    graph for the file only: its own queries keep the exact answers, and a later load with
    index="hnsw" serves the saved graph at the calibrated breadth."""
    bundle = tiny.copy_to(tmp_path)
    rec = Recommender.load(bundle, index="exact")
    histories = _tiny_histories(tiny, np.random.default_rng(9), 12)
    before = [rec.query(h, PROMPTS[0], k=10) for h in histories]
    ef, _ = rec.calibrate_index(histories, PROMPTS[0], k=10, target=0.99)
    path = rec.save_index()
    assert not rec.uses_hnsw
    assert [rec.query(h, PROMPTS[0], k=10) for h in histories] == before
    items = np.vstack([np.zeros((1, rec.item_vectors().shape[1]), np.float32),
                       rec.item_vectors()])
    assert _core.HnswIndex.load(str(path), items).expansion_search == ef
    assert Recommender.load(bundle, index="hnsw").uses_hnsw


def test_a_bundle_with_an_old_usearch_index_is_served_from_a_fresh_graph(
        tiny: TinyBundle, tmp_path: Path) -> None:
    """Bundles saved before dpr built its own graph carry `index.usearch` and `index.flat`:
    those files are not read (the graph is built at load) and a new save writes INDEX_FILE."""
    bundle = tiny.copy_to(tmp_path)
    (bundle / "index.usearch").write_bytes(b"usearch file of an earlier dpr" * 100)
    (bundle / "index.flat").write_bytes(b"DPRFLAT1" + bytes(64))
    history = tiny.ids[:5]
    old = Recommender.load(bundle, index="hnsw")
    fresh = Recommender.load(tiny.path, index="hnsw")
    for prompt in PROMPTS:
        assert old.query(history, prompt, k=10) == fresh.query(history, prompt, k=10)
    assert old.save_index() == bundle / INDEX_FILE
    assert INDEX_FILE == "index.hnsw"
    again = Recommender.load(bundle, index="hnsw")
    assert again.query(history, PROMPTS[0], k=10) == old.query(history, PROMPTS[0], k=10)


def test_missing_demo_bundle_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr("dpr.recommender.DEMO_BUNDLE", tmp_path / "demo_bundle")
    with pytest.raises(FileNotFoundError, match="dpr build-demo"):
        Recommender.load()


def test_filtered_queries_never_return_seen_items(tiny: TinyBundle,
                                                  tiny_rec: Recommender) -> None:
    ids, genres = tiny.ids, tiny.values("genre")
    # Seen items both passing and failing the filter, interleaved in row order.
    history = ids[:20]
    assert sum("Horror" not in g for g in genres[20:]) > 10
    for mode in ("hard", "hybrid"):
        hits = tiny_rec.query(history, "something funny", k=10, exclude={"genre": ["Horror"]},
                              mode=mode)
        assert len(hits) == 10
        assert not {h.item_id for h in hits} & set(history)
        assert all("Horror" not in genres[ids.index(h.item_id)] for h in hits)


def test_default_mode_is_auto_which_is_soft_without_an_intent_head(
        served: tuple[DPR, Recommender, dict[str, Any]]) -> None:
    _, rec, catalogue = served
    assert rec.refuse_threshold is None and rec.prompt_dim == 384
    history = catalogue["item_ids"][5:25]
    for prompt in PROMPTS:
        soft = rec.query(history, prompt, k=10, mode="soft")
        assert rec.query(history, prompt, k=10) == soft
        assert rec.query(history, prompt, k=10, mode="auto") == soft
    with pytest.raises(ValueError, match="no intent read-out"):
        rec.interpret("no horror please")
