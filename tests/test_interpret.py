"""The intent read-out (bundle version 2) served by the Rust core: prompt inputs, `interpret`
and `mode="auto"` against the PyTorch model on the same bundle; bundles without a head.

The parity tests (`bundle`: a model with a purpose-built head, exported here) and those on a
bundle without a head (`plain_bundles`) need torch and are skipped without it; the API,
thread, auto-mode edge and damaged-section tests run on the committed tiny bundles (`tiny`,
`tiny_rec` in conftest.py, both with an intent head; tiny_gru4rec's low refuse threshold is
crossed for some prompts) with numpy and the extension alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dpr
from conftest import tiny_bundle
from dpr import Reading, Recommender
from dpr.cli import main
from test_hardening import SURROGATE, _copy, _rehash
from test_recommender import (
    GENRES,
    MAX_LEN,
    N,
    _catalogue,
    _histories,
    _model,
    _same_up_to_ties,
    _tiny_histories,
)

if TYPE_CHECKING:
    from conftest import TinyBundle
    from dpr.encoder import PromptEncoder
    from dpr.models.dpr import DPR

INTENT_VALUES = [("genre", g) for g in GENRES] + [("decade", "2000s")]
V = len(INTENT_VALUES)
REFUSE = 0.6
DETECT = 0.5
PROMPTS = ["", "   ", "something funny tonight", "no horror please", "a romantic drama",
           "I want action, but nothing too scary", "anything", "no comedy, no romance",
           "not a drama", "scary movies only", "old films from the nineties", "Sci-Fi",
           "kids movies!!", "😂🤣 funny", "面白い映画が見たい", "películas de terror sin romance",
           "Ужасы", "nothing from the 2000s please", "an action-packed thriller",
           "i hate horror", "love stories", "heist movie"]
BORDER = 1e-3
"""Reference probabilities this close to a threshold are not compared (float32 rounding may
put the two sides on different sides of it)."""


def _intent_model() -> DPR:
    import torch

    from dpr.models.dpr import DPR
    from dpr.models.intent import ASKED, REFUSED, IntentHead
    from dpr.models.sasrec import SASRec
    from dpr.models.steering import DPRSteering

    torch.manual_seed(11)
    backbone = SASRec(N, dim=32, max_len=MAX_LEN, num_blocks=2, num_heads=2, ffn_dim=48,
                      positions="from_end")
    steering = DPRSteering(32, attribute_dim=len(GENRES), prompt_dim=384 + 2 * V,
                           projector_hidden=64, expert_hidden=48, router_hidden=32,
                           positive_experts=2, negative_experts=2, attribute_scale=10.0)
    intent = IntentHead(INTENT_VALUES, 384, 64)
    with torch.no_grad():  # larger than the init: confident readings, visible steering
        steering.experts.out_weight.normal_(std=0.3)
        steering.experts.out_bias.normal_(std=0.1)
        for parameter in intent.parameters():
            parameter.normal_(std=0.5)
        # These weights mostly read genres as asked; swapping the last value's asked and
        # refused rows makes "decade 2000s" mostly refused, so that auto mode also excludes a
        # value of another family than the steering attribute.
        last = 3 * (V - 1)
        for tensor in (intent.output_layer.weight, intent.output_layer.bias):
            tensor[[last + ASKED, last + REFUSED]] = tensor[[last + REFUSED, last + ASKED]].clone()
    return DPR(backbone, steering, columns=[("genre", g) for g in GENRES], intent=intent,
               refuse_threshold=REFUSE).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from dpr.export import export_bundle

    return export_bundle(_intent_model(), _catalogue(),
                         tmp_path_factory.mktemp("intent") / "bundle", encoder_dtype="float32")


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    return Recommender.load(bundle)


@pytest.fixture(scope="module")
def reference(bundle: Path) -> DPR:
    """The PyTorch model the bundle holds (as read back from it)."""
    from dpr.export import model_from_bundle

    return model_from_bundle(bundle)[0]


@pytest.fixture(scope="module")
def torch_encoder(bundle: Path) -> PromptEncoder:
    from dpr.encoder import PromptEncoder

    return PromptEncoder(bundle / "prompt_encoder")


@pytest.fixture(scope="module")
def torch_inputs(reference: DPR, torch_encoder: PromptEncoder) -> dict[str, np.ndarray]:
    """Prompt -> the PyTorch prompt input `[e, p_asked, p_refused]`."""
    import torch

    embeddings = torch.from_numpy(torch_encoder.encode(PROMPTS))
    with torch.inference_mode():
        inputs = reference.prompt_input(embeddings).numpy()
    return dict(zip(PROMPTS, inputs, strict=True))


def _asked(vector: np.ndarray) -> np.ndarray:
    return vector[384:384 + V]


def _refused(vector: np.ndarray) -> np.ndarray:
    return vector[384 + V:]


def _item_table(model: DPR, catalogue: dict[str, Any]) -> np.ndarray:
    import torch

    attributes = np.zeros((N, len(GENRES)), dtype=np.float32)
    for i, genres in enumerate(catalogue["attributes"]["genre"]):
        attributes[i, [GENRES.index(g) for g in genres]] = 1
    with torch.no_grad():
        return model.item_vectors(torch.from_numpy(attributes)).numpy()


def _has_value(catalogue: dict[str, Any], family: str, value: str) -> np.ndarray:
    """(N,) bool: items having `family=value`."""
    return np.array([value in values for values in catalogue["attributes"][family]])


def _ids(hits: list[dpr.Hit]) -> list[Any]:
    return [h.item_id for h in hits]


def _intent(tiny: TinyBundle) -> dict[str, Any]:
    """The tiny bundle's dpr.json `intent` section (its values, thresholds, widths)."""
    return json.loads((tiny.path / "dpr.json").read_text(encoding="utf-8"))["intent"]


# ------------------------------------------------------------------------------------------
# Parity with PyTorch


def test_the_bundle_is_version_3_with_an_intent_section(bundle: Path, rec: Recommender) -> None:
    config = json.loads((bundle / "dpr.json").read_text())
    assert config["version"] == 4
    assert config["intent"]["values"] == [list(v) for v in INTENT_VALUES]
    assert config["steer"]["prompt_dim"] == 384 + 2 * V
    assert rec.refuse_threshold == REFUSE
    assert rec.prompt_dim == 384 + 2 * V
    assert rec._engine.intent_values == INTENT_VALUES
    assert rec._engine.detect_threshold == DETECT


def test_reference_model_round_trip(bundle: Path, reference: DPR) -> None:
    import torch

    original = _intent_model()
    for (name, a), (_, b) in zip(original.state_dict().items(),
                                 reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    assert reference.intent is not None and reference.refuse_threshold == REFUSE


def test_prompt_inputs_match_pytorch(rec: Recommender,
                                     torch_inputs: dict[str, np.ndarray]) -> None:
    worst = 0.0
    for prompt in PROMPTS:
        want = torch_inputs[prompt]
        got = rec.encode_prompt(prompt)
        assert got.shape == (384 + 2 * V,) and got.dtype == np.float32
        if not prompt.strip():
            assert not got.any() and not want.any(), prompt
            continue
        cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
        assert cosine >= 0.9999, (prompt, cosine)
        assert abs(float(np.linalg.norm(got[:384])) - 1.0) < 1e-4
        worst = max(worst, float(np.abs(got[384:] - want[384:]).max()))
        # A value's asked and refused probabilities leave room for "none".
        assert np.all(_asked(got) + _refused(got) <= 1.0 + 1e-6)
    assert worst < 1e-4, f"max |rust - torch| over the readings = {worst}"


def test_interpret_lists_what_the_torch_probabilities_put_above_the_threshold(
        rec: Recommender, torch_inputs: dict[str, np.ndarray]) -> None:
    listed = 0
    for prompt in PROMPTS:
        want_vector = torch_inputs[prompt]
        readings = rec.interpret(prompt)
        assert all(isinstance(r, Reading) for r in readings)
        confidences = [r.confidence for r in readings]
        assert confidences == sorted(confidences, reverse=True), prompt
        got = {(r.attribute, r.value): r for r in readings}
        assert len(got) == len(readings), "one reading per value"
        for j, (family, value) in enumerate(INTENT_VALUES):
            asked, refused = _asked(want_vector)[j], _refused(want_vector)[j]
            best = max(asked, refused)
            if abs(best - DETECT) < BORDER:
                continue
            if best >= DETECT:
                reading = got.get((family, value))
                assert reading is not None, (prompt, family, value, asked, refused)
                assert reading.polarity == ("refused" if refused >= asked else "asked")
                assert abs(reading.confidence - best) < 1e-4
                listed += 1
            else:
                assert (family, value) not in got, (prompt, family, value, asked, refused)
    assert listed >= 5, "the test weights should make the head read several values"


def _torch_scores(model: DPR, rows: list[list[int]], prompt_input: np.ndarray,
                  table: np.ndarray, strength: float = 1.0) -> np.ndarray:
    import torch

    from dpr.models.backbone import user_vectors
    from dpr.train.batches import history_batch

    items, lengths = history_batch([np.array(r or [0], dtype=np.int64) for r in rows], MAX_LEN)
    prompts = torch.from_numpy(np.repeat(prompt_input[None], len(rows), 0))
    with torch.inference_mode():
        h = user_vectors(model.backbone, items, lengths)
        steered = model.steering(h, prompts, strength).steered.numpy()
    return steered @ table.T


def test_auto_mode_matches_the_torch_reference(rec: Recommender, reference: DPR,
                                               torch_inputs: dict[str, np.ndarray]) -> None:
    catalogue = _catalogue()
    table = _item_table(reference, catalogue)
    ids = catalogue["item_ids"]
    histories = _histories(np.random.default_rng(3), 12)
    excluded_somewhere = changed = 0
    for prompt in PROMPTS:
        prompt_input = torch_inputs[prompt]
        refused = _refused(prompt_input)
        if np.any(np.abs(refused - REFUSE) < BORDER):
            continue
        drop = np.zeros(N, dtype=bool)
        for j, (family, value) in enumerate(INTENT_VALUES):
            if refused[j] >= REFUSE:
                drop |= _has_value(catalogue, family, value)
        excluded_somewhere += bool(drop.any())
        all_scores = _torch_scores(reference, histories, prompt_input, table)
        for history, scores in zip(histories, all_scores, strict=True):
            masked = scores.copy()
            masked[np.array(history, dtype=np.int64) - 1] = -np.inf
            masked[drop] = -np.inf
            want = [int(i) for i in np.argsort(-masked, kind="stable")[:10]]
            external = [ids[r - 1] for r in history]
            hits = rec.query(external, prompt, k=10)               # default: auto
            assert hits == rec.query(external, prompt, k=10, mode="auto")
            got = [ids.index(h.item_id) for h in hits]
            assert _same_up_to_ties(got, scores, want, 1e-4), (prompt, got, want)
            np.testing.assert_allclose([h.score for h in hits], scores[got], atol=1e-4)
            soft = rec.query(external, prompt, k=10, mode="soft")
            changed += _ids(soft) != _ids(hits)
            if not drop.any():
                assert hits == soft
    assert excluded_somewhere >= 2, "the test weights should make some prompts refuse values"
    assert changed > 0, "the automatic exclusion should change some rankings"


def test_empty_prompt_and_zero_strength_are_exactly_the_backbone() -> None:
    # The tiny GRU4Rec bundle: its refuse threshold (0.525) is crossed for some prompts.
    tiny = tiny_bundle("gru4rec")
    rec, intent = Recommender.load(tiny.path), _intent(tiny)
    threshold, width = float(intent["refuse_threshold"]), int(intent["embedding_dim"])
    values = len(intent["values"])
    refusing = next(p for p in PROMPTS if p.strip() and rec.encode_prompt(p)[
        width + values:].max() >= threshold + BORDER)   # auto mode excludes a value for it
    assert any(r.polarity == "refused" and r.confidence >= threshold
               for r in rec.interpret(refusing))
    history = tiny.ids[:12]
    backbone = rec.query(history, "", k=20, mode="hard")
    for prompt, strength in [("", None), ("  \t", None), (refusing, 0.0)]:
        for mode in (None, "auto", "soft"):
            hits = rec.query(history, prompt, k=20, strength=strength, mode=mode)
            assert hits == backbone, (prompt, strength, mode)
        ids, scores = rec.query_batch([history], prompt, k=20, strength=strength)
        assert list(ids[0]) == _ids(backbone)
        assert np.array_equal(scores[0], np.array([h.score for h in backbone], np.float32))
    assert np.array_equal(rec.user_vector(history, ""), rec.user_vector(history, refusing, 0.0))
    assert not rec.user_vector(history, "")[tiny.dim:].any()
    assert rec.interpret("") == [] and rec.interpret(" \n ") == []


def test_auto_combines_with_explicit_filters() -> None:
    # The tiny GRU4Rec bundle: its refuse threshold (0.525) is crossed for some prompts.
    tiny = tiny_bundle("gru4rec")
    rec, intent = Recommender.load(tiny.path), _intent(tiny)
    threshold, width = float(intent["refuse_threshold"]), int(intent["embedding_dim"])
    values = [tuple(v) for v in intent["values"]]
    prompt = next(p for p in PROMPTS if p.strip() and (
        rec.encode_prompt(p)[width + len(values):] >= threshold + BORDER).any())
    refused = [values[j] for j in np.flatnonzero(
        rec.encode_prompt(prompt)[width + len(values):] >= threshold)]
    assert refused
    history = tiny.ids[20:30]
    extra = {"decade": ["1990s"]} if ("decade", "2000s") not in refused else {"genre": ["Drama"]}
    auto = rec.query(history, prompt, k=30, mode="auto", include=extra)
    explicit: dict[str, list[str]] = {}
    for family, value in refused:
        explicit.setdefault(family, []).append(value)
    hybrid = rec.query(history, prompt, k=30, mode="hybrid", include=extra, exclude=explicit)
    assert auto == hybrid and len(auto) > 0
    for hit in auto:
        assert not any(value in hit.attributes[family] for family, value in refused)
        assert any(v in hit.attributes[f] for f, vs in extra.items() for v in vs)
    # An explicit exclude adds to the automatic one; hard mode never excludes automatically.
    also = rec.query(history, prompt, k=30, mode="auto", exclude={"genre": ["Comedy"]})
    assert all("Comedy" not in h.attributes["genre"] for h in also)
    assert all(not any(v in h.attributes[f] for f, v in refused) for h in also)
    hard = rec.query(history, prompt, k=tiny.num_items, mode="hard", exclude={"genre": []})
    assert hard == rec.query(history, "", k=tiny.num_items, mode="hard")


def test_query_batch_auto_and_soft_match_single_queries(tiny: TinyBundle,
                                                         tiny_rec: Recommender) -> None:
    rec = tiny_rec
    histories = _tiny_histories(tiny, np.random.default_rng(9), 16)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(histories))]
    pad = -1 if isinstance(tiny.ids[0], int) else None
    for mode in ("auto", "soft"):
        found, scores = rec.query_batch(histories, prompts, k=10, mode=mode)
        for i, (history, prompt) in enumerate(zip(histories, prompts, strict=True)):
            hits = rec.query(history, prompt, k=10, mode=mode)
            assert list(found[i][:len(hits)]) == _ids(hits), (mode, prompt)
            assert list(found[i][len(hits):]) == [pad] * (10 - len(hits))
            np.testing.assert_array_equal(scores[i][:len(hits)],
                                          np.array([h.score for h in hits], np.float32))
    default, _ = rec.query_batch(histories, prompts, k=10)
    assert np.array_equal(default, rec.query_batch(histories, prompts, k=10, mode="auto")[0])
    with pytest.raises(ValueError, match="mode must be 'auto' or 'soft'"):
        rec.query_batch(histories, prompts, mode="hybrid")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Bad prompts, threads


BAD_PROMPTS: list[tuple[str, object, type[Exception], str]] = [
    ("bytes", b"no horror", TypeError, "prompt must be a str"),
    ("None", None, TypeError, "prompt must be a str"),
    ("int", 3, TypeError, "prompt must be a str"),
    ("list", ["no horror"], TypeError, "prompt must be a str"),
    ("lone surrogate", SURROGATE, ValueError, "prompt is not valid text"),
    ("lone surrogate alone", "\udcff", ValueError, "prompt is not valid text"),
]


@pytest.mark.parametrize(("prompt", "error", "match"), [b[1:] for b in BAD_PROMPTS],
                         ids=[b[0] for b in BAD_PROMPTS])
def test_interpret_rejects_bad_prompts_as_query_does(tiny_rec: Recommender, prompt: object,
                                                     error: type[Exception], match: str) -> None:
    rec = tiny_rec
    with pytest.raises(error, match=match) as from_interpret:
        rec.interpret(prompt)  # type: ignore[arg-type]
    with pytest.raises(error) as from_query:
        rec.query([], prompt)  # type: ignore[arg-type]
    assert str(from_interpret.value) == str(from_query.value)


def test_interpret_reads_any_text(tiny: TinyBundle, tiny_rec: Recommender) -> None:
    rec, intent = tiny_rec, _intent(tiny)
    values = [tuple(v) for v in intent["values"]]
    for prompt in ["😂🤣", "😀", "面白い映画が見たい", "películas de terror sin romance", "Ужасы",
                   "abc\x00def", "\ufeffcomedy", "x" * 5000, "\ufffd\ufffd"]:
        readings = rec.interpret(prompt)
        for r in readings:
            assert (r.attribute, r.value) in values
            assert r.polarity in ("asked", "refused")
            assert intent["detect_threshold"] <= r.confidence <= 1.0
        assert len(rec.query([], prompt, k=5)) == 5
    # 1 MB: truncated to the encoder's window, so read like any prefix longer than it.
    huge = "no horror please " * 62_000
    assert len(huge.encode()) >= 1_000_000
    prefix = "no horror please " * 300
    assert rec.interpret(huge) == rec.interpret(prefix)
    assert np.array_equal(rec.encode_prompt(huge), rec.encode_prompt(prefix))


def test_interpret_from_eight_threads_equals_serial(tiny_rec: Recommender) -> None:
    rec = tiny_rec
    prompts = [f"{p} #{i}" for i in range(6) for p in PROMPTS]
    serial = [rec.interpret(p) for p in prompts]
    results: dict[int, list[list[Reading]]] = {}
    errors: list[BaseException] = []
    ticks = [0]
    stop = threading.Event()

    def ticker() -> None:  # runs only while the GIL is free
        while not stop.is_set():
            ticks[0] += 1

    def work(worker: int) -> None:
        try:
            fresh = Recommender.load(rec.path) if worker == 0 else rec
            results[worker] = [fresh.interpret(p) for p in prompts[worker:] + prompts[:worker]]
        except BaseException as e:
            errors.append(e)

    tick_thread = threading.Thread(target=ticker, daemon=True)
    tick_thread.start()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stop.set()
    tick_thread.join(timeout=60)
    assert not errors, errors[0]
    for w in range(8):
        assert results[w] == serial[w:] + serial[:w], w
    assert ticks[0] > 0


def test_auto_queries_from_eight_threads_equal_serial(tiny: TinyBundle,
                                                      tiny_rec: Recommender) -> None:
    rec, ids, n = tiny_rec, tiny.ids, tiny.num_items
    rng = np.random.default_rng(13)
    cases: list[dict[str, Any]] = []
    for i in range(1600):
        case: dict[str, Any] = {
            "history": [ids[j] for j in rng.integers(0, n, size=int(rng.integers(0, n)))],
            "prompt": PROMPTS[i % len(PROMPTS)], "k": int(rng.choice([1, 10, n])),
            "strength": float(rng.choice([0.0, 1.0, 2.0]))}
        if i % 3 == 1:
            case.update(mode="auto", exclude={"genre": ["Drama"]})
        elif i % 3 == 2:
            case.update(mode="soft")
        cases.append(case)

    def answer(case: dict[str, Any]) -> list[tuple[Any, float]]:
        return [(h.item_id, h.score) for h in rec.query(**case)]

    serial = [answer(c) for c in cases]
    threaded: list[list[tuple[Any, float]] | None] = [None] * len(cases)

    def work(worker: int) -> None:
        for i in range(worker, len(cases), 8):
            threaded[i] = answer(cases[i])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert threaded == serial


# ------------------------------------------------------------------------------------------
# Bundles without a head


@pytest.fixture(scope="module")
def plain_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A version-4 bundle without an intent section, and the same relabelled as versions 1, 2
    and 3 (one steered family stated as `steer.attribute` and `steer.values`)."""
    pytest.importorskip("torch")
    from dpr.export import export_bundle

    root = tmp_path_factory.mktemp("plain")
    v4 = export_bundle(_model("sasrec"), _catalogue(), root / "v4", encoder_dtype="float32")
    bundles = {"v4": v4}
    for version in (1, 2, 3):
        relabelled = _copy(v4, root / f"v{version}")
        config = json.loads((relabelled / "dpr.json").read_text())
        assert "intent" not in config and config["version"] == 4
        config["version"] = version  # dpr.json is not in `files`: no rehash needed
        [family] = config["steer"].pop("families")
        config["steer"].update(attribute=family["name"], values=family["values"])
        (relabelled / "dpr.json").write_text(json.dumps(config))
        bundles[f"v{version}"] = relabelled
    return bundles


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4"])
def test_bundles_without_a_head_serve_auto_as_soft(plain_bundles: dict[str, Path],
                                                   version: str) -> None:
    rec = Recommender.load(plain_bundles[version])
    assert rec.refuse_threshold is None and rec._engine.intent_values is None
    assert rec.prompt_dim == 384 and rec.encode_prompt("no horror please").shape == (384,)
    with pytest.raises(ValueError, match="no intent read-out"):
        rec.interpret("no horror please")
    with pytest.raises(ValueError, match="no intent read-out"):
        rec.interpret("")
    with pytest.raises(TypeError, match="prompt must be a str"):
        rec.interpret(b"x")  # type: ignore[arg-type]
    ids = _catalogue()["item_ids"]
    histories = [[ids[r - 1] for r in h] for h in _histories(np.random.default_rng(4), 10)]
    for history, prompt in zip(histories, PROMPTS, strict=False):
        soft = rec.query(history, prompt, k=10, mode="soft")
        assert rec.query(history, prompt, k=10) == soft
        assert rec.query(history, prompt, k=10, mode="auto") == soft
        hybrid = rec.query(history, prompt, k=10, mode="hybrid", include={"genre": ["Comedy"]})
        assert rec.query(history, prompt, k=10, mode="auto", include={"genre": ["Comedy"]}
                         ) == hybrid
    prompts = PROMPTS[:len(histories)]
    auto_ids, auto_scores = rec.query_batch(histories, prompts, k=10, mode="auto")
    soft_ids, soft_scores = rec.query_batch(histories, prompts, k=10, mode="soft")
    assert np.array_equal(auto_ids, soft_ids) and np.array_equal(auto_scores, soft_scores)


# ------------------------------------------------------------------------------------------
# Damaged intent sections


def _edit_config(path: Path, edit: Any) -> None:
    config = json.loads((path / "dpr.json").read_text())
    edit(config)
    (path / "dpr.json").write_text(json.dumps(config))


def _edit_weights(path: Path, edit: Any) -> None:
    tensors = load_file(path / "weights.safetensors")
    edit(tensors)
    save_file(tensors, path / "weights.safetensors")
    _rehash(path, "weights.safetensors")


def _set(section: str, **fields: Any) -> Any:
    return lambda c: c[section].update(fields)


# The damage tests damage a copy of the committed tiny SASRec bundle: its intent section's
# values, embedding width E and hidden width H give the numbers in the messages.
TINY = tiny_bundle("sasrec")
TINY_INTENT: dict[str, Any] = json.loads((TINY.path / "dpr.json").read_text("utf-8"))["intent"]
TINY_VALUES = [list(v) for v in TINY_INTENT["values"]]
TV = len(TINY_VALUES)
E, H = int(TINY_INTENT["embedding_dim"]), int(TINY_INTENT["hidden"])
LAST_VALUE = TINY_VALUES[-1][1]


DAMAGE: list[tuple[str, Any, str]] = [
    ("unknown value", lambda p: _edit_config(p, _set("intent", values=[
        ["genre", "Western"], *TINY_VALUES[1:]])),
     r"dpr\.json: intent\.values\[0\] = \[\"genre\", \"Western\"\]: items\.json "
     r"attributes\.genre\.values has no value \"Western\""),
    ("unknown family", lambda p: _edit_config(p, _set("intent", values=[
        *TINY_VALUES[:-1], ["mood", LAST_VALUE]])),
     rf"dpr\.json: intent\.values\[{TV - 1}\] = \[\"mood\", \"{LAST_VALUE}\"\]: items\.json "
     r"has no attribute \"mood\""),
    ("refuse threshold 0", lambda p: _edit_config(p, _set("intent", refuse_threshold=0)),
     r"dpr\.json: intent\.refuse_threshold must lie in \(0, 1\], got 0"),
    ("refuse threshold 2", lambda p: _edit_config(p, _set("intent", refuse_threshold=2.0)),
     r"dpr\.json: intent\.refuse_threshold must lie in \(0, 1\], got 2"),
    ("detect threshold NaN", lambda p: (p / "dpr.json").write_text(
        (p / "dpr.json").read_text().replace('"detect_threshold": 0.5', '"detect_threshold": NaN')),
     r"dpr\.json: not valid JSON"),
    ("prompt_dim without the features", lambda p: _edit_config(p, _set("steer", prompt_dim=E)),
     rf"dpr\.json: steer\.prompt_dim {E} differs from intent\.embedding_dim \+ 2 x {TV} intent "
     rf"values = {E + 2 * TV}"),
    ("a value dropped", lambda p: _edit_config(p, _set("intent", values=TINY_VALUES[:-1])),
     rf"dpr\.json: steer\.prompt_dim {E + 2 * TV} differs"),
    ("hidden width", lambda p: _edit_config(p, _set("intent", hidden=H + 1)),
     rf"weights\.safetensors: tensor 'intent\.hidden_layer\.bias' has shape \({H},\), "
     rf"dpr\.json implies \({H + 1},\)"),
    ("intent in version 1", lambda p: _edit_config(p, lambda c: c.update(version=1)),
     r"dpr\.json: intent: the intent section needs version 2"),
    ("section removed", lambda p: _edit_config(p, lambda c: c.pop("intent")),
     r"dpr\.json: steer\.prompt_dim differs from prompt_encoder\.dim"),
    ("section and width removed", lambda p: _edit_config(
        p, lambda c: (c.pop("intent"), c["steer"].update(prompt_dim=E))),
     r"weights\.safetensors: unexpected tensor 'intent\.hidden_layer\.bias' \(dpr\.json has "
     r"no intent section\)"),
    ("tensor missing", lambda p: _edit_weights(p, lambda t: t.pop("intent.output_layer.bias")),
     r"weights\.safetensors: missing tensor 'intent\.output_layer\.bias'"),
    ("tensor transposed", lambda p: _edit_weights(p, lambda t: t.update({
        "intent.hidden_layer.weight": np.ascontiguousarray(t["intent.hidden_layer.weight"].T)})),
     rf"weights\.safetensors: tensor 'intent\.hidden_layer\.weight' has shape \({E}, {H}\), "
     rf"dpr\.json implies \({H}, {E}\)"),
    ("unexpected tensor", lambda p: _edit_weights(p, lambda t: t.update({
        "intent.extra.bias": np.zeros(3, np.float32)})),
     r"weights\.safetensors: unexpected tensor 'intent\.extra\.bias'"),
    ("NaN weight", lambda p: _edit_weights(p, lambda t: t["intent.output_layer.weight"]
                                           .__setitem__((2, 3), np.nan)),
     r"weights\.safetensors: tensor 'intent\.output_layer\.weight' holds NaN or Inf"),
]


@pytest.mark.parametrize(("damage", "match"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_intent_sections_raise(tmp_path: Path, damage: Any, match: str) -> None:
    path = _copy(TINY.path, tmp_path / "b")
    damage(path)
    with pytest.raises(dpr.BundleFormatError, match=match):
        Recommender.load(path)


# ------------------------------------------------------------------------------------------
# Command line


def test_query_explain_prints_the_reading_before_the_hits(
        bundle: Path, plain_bundles: dict[str, Path], rec: Recommender,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompt = max(PROMPTS, key=lambda p: len(rec.interpret(p)))
    readings = rec.interpret(prompt)
    assert readings
    argv = ["query", str(bundle), "--history", "1000,1007,1014", "--prompt", prompt, "-k", "4",
            "--explain"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"reading of {prompt!r}: {len(readings)} value")
    for line, r in zip(lines[1:], readings, strict=False):
        assert f"{r.attribute}={r.value}" in line and r.polarity in line
        assert f"{r.confidence:.3f}" in line
        refused_enough = r.polarity == "refused" and r.confidence >= REFUSE
        assert ("excluded" in line) == refused_enough, line
    hits = lines[1 + len(readings):]
    assert hits[0].lstrip().startswith("#") and len(hits) == 5
    assert main([*argv, "--mode", "auto"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines
    assert not any("contradict" in line for line in lines)
    # Excluding every value read, one of them asked for: the exclusions overrule the reading.
    assert any(r.polarity == "asked" for r in readings)
    every = [arg for r in readings for arg in ("--exclude", f"{r.attribute}={r.value}")]
    assert main([*argv, *every]) == 0
    overruled = capsys.readouterr().out.strip().splitlines()
    assert "ranked by the unsteered backbone" in overruled[1 + len(readings)]
    assert main(["query", str(bundle), "--prompt", "", "--explain", "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "reading of '': no values detected"
    assert main(["query", str(plain_bundles["v2"]), "--prompt", "x", "--explain", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "no intent read-out" in out[0] and len(out) == 4


def test_the_evaluation_overrules_the_readings_the_engine_overrules(
        rec: Recommender, reference: DPR, torch_inputs: dict[str, np.ndarray]) -> None:
    from dpr.train.pipeline import dpr_overrules

    overrules = dpr_overrules(reference,
                              lambda prompts: np.stack([torch_inputs[p] for p in prompts]))
    catalogue = _catalogue()
    history = [catalogue["item_ids"][r - 1] for r in _histories(np.random.default_rng(5), 12)[5]]
    backbone = rec.user_vector(history, "")
    outcomes = set()
    for prompt in PROMPTS:
        if not prompt.strip():
            continue
        vector = torch_inputs[prompt]
        if np.any(np.abs(np.maximum(_asked(vector), _refused(vector)) - DETECT) < BORDER):
            continue
        # Exclude every value the read-out finds but the first (never overruled), then all
        # (when it finds any).
        read = [(r.attribute, r.value) for r in rec.interpret(prompt)]
        for excluded in (read[1:], read):
            filters: dict[str, list[str]] = {}
            order = {f: reference.values_of(f) or [v for g, v in INTENT_VALUES if g == f]
                     for f, _ in INTENT_VALUES}
            masks = {f: np.zeros((1, len(values)), dtype=bool) for f, values in order.items()}
            for family, value in excluded:
                filters.setdefault(family, []).append(value)
                masks[family][0, order[family].index(value)] = True
            python_rule = bool(overrules([prompt], masks)[0])
            served = rec.user_vector(history, prompt, exclude=filters or None,
                                     mode="hybrid" if filters else "soft")
            assert python_rule == np.array_equal(served, backbone), (prompt, excluded)
            outcomes.add(python_rule)
    assert outcomes == {True, False}
