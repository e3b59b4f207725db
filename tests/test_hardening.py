"""Hardening: every bad query and every damaged bundle gets a defined result or a specific
exception (docs/errors.md), a Rust panic becomes a Python exception, and a shared
`Recommender` gives the serial results from many threads with flat memory.

Everything here runs on the committed tiny SASRec bundle (tests/fixtures/tiny_sasrec: 40 items
with the ids, titles, genres and decades of test_recommender's catalogue), without torch; the
damage tests damage a copy of it."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dpr
from conftest import tiny_bundle
from dpr import Recommender
from test_recommender import GENRES

TINY = tiny_bundle("sasrec")
IDS: list[int] = TINY.ids  # type: ignore[assignment]
N = TINY.num_items
MAX_LEN = TINY.max_len
CONFIG: dict[str, Any] = json.loads((TINY.path / "dpr.json").read_text(encoding="utf-8"))
DIM = int(CONFIG["dim"])
PROMPT_DIM = int(CONFIG["prompt_encoder"]["dim"])
STEER_PROMPT_DIM = int(CONFIG["steer"]["prompt_dim"])
"""The prompt input: the sentence embedding and, as this bundle has an intent head, its
reading (p_asked, p_refused per value)."""
ROUTER_HIDDEN = int(CONFIG["steer"]["router_hidden"])
EXPERTS = int(CONFIG["steer"]["positive_experts"]) + int(CONFIG["steer"]["negative_experts"])
PROMPTS = ["", "   ", "something funny tonight", "no horror please", "a romantic drama",
           "I want action, but nothing too scary", "😂🤣 funny", "面白い映画が見たい",
           "películas de terror", "kids movies!!"]


@pytest.fixture(scope="module")
def bundle() -> Path:
    """The committed tiny bundle: read only (the damage tests damage a `_copy`)."""
    return TINY.path


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    return Recommender.load(bundle)


def _ids(hits: list[dpr.Hit]) -> list[Any]:
    return [h.item_id for h in hits]


# ------------------------------------------------------------------------------------------
# 1. Bad queries: a specific exception, naming the argument


SURROGATE = b"funny \xff movie".decode("utf-8", "surrogateescape")

BAD_QUERIES: list[tuple[str, Callable[[Recommender], object], type[Exception], str]] = [
    ("unknown id", lambda r: r.query([IDS[0], 5]), KeyError, "unknown item id 5"),
    ("only unknown ids", lambda r: r.query([1, 2, 3]), KeyError, "unknown item id 1"),
    ("id as str in an int catalogue", lambda r: r.query([str(IDS[0])]), KeyError,
     f"unknown item id {IDS[0]}"),
    ("float id", lambda r: r.query([IDS[0], 1.5]), TypeError, "int or str, got float"),
    ("float array", lambda r: r.query(np.array(IDS[:2], dtype=float)), TypeError,
     "got float64"),
    ("None id", lambda r: r.query([None]), TypeError, "got NoneType"),
    ("bytes id", lambda r: r.query([b"1000"]), TypeError, "got bytes"),
    ("nested list", lambda r: r.query([[IDS[0]]]), TypeError, "got list"),
    ("bool id", lambda r: r.query([True]), TypeError, "got bool"),
    ("history is a str", lambda r: r.query("1000"), TypeError, "not a string"),
    ("history is an int", lambda r: r.query(1000), TypeError, "history must be a sequence"),
    ("unknown= policy", lambda r: r.query([IDS[0]], unknown="skip"), ValueError,
     "unknown must be"),
    ("negative k", lambda r: r.query([IDS[0]], k=-1), ValueError, "k must be >= 0"),
    ("float k", lambda r: r.query([IDS[0]], k=5.0), TypeError, "k must be an int"),
    ("bool k", lambda r: r.query([IDS[0]], k=True), TypeError, "k must be an int"),
    ("bytes prompt", lambda r: r.query([IDS[0]], b"\xff\xfe"), TypeError,
     "prompt must be a str"),
    ("None prompt", lambda r: r.query([IDS[0]], None), TypeError, "prompt must be a str"),
    ("undecodable prompt", lambda r: r.query([IDS[0]], SURROGATE), ValueError,
     "prompt is not valid text"),
    ("NaN strength", lambda r: r.query([IDS[0]], "x", strength=float("nan")), ValueError,
     "strength must be"),
    ("NaN strength, empty prompt", lambda r: r.query([IDS[0]], "", strength=float("nan")),
     ValueError, "strength must be"),
    ("NaN strength, hard mode", lambda r: r.query([IDS[0]], "x", strength=np.float32("nan"),
                                                   mode="hard"), ValueError, "strength must be"),
    ("inf strength", lambda r: r.query([IDS[0]], "x", strength=float("inf")), ValueError,
     "strength must be"),
    ("negative strength", lambda r: r.query([IDS[0]], "x", strength=-0.5), ValueError,
     "strength must be"),
    ("overflowing strength", lambda r: r.query([IDS[0]], "x", strength=3e38), ValueError,
     "strength must be"),
    ("str strength", lambda r: r.query([IDS[0]], "x", strength="1"), TypeError,
     "strength must be a number"),
    ("unknown attribute", lambda r: r.query([IDS[0]], include={"mood": ["happy"]}), KeyError,
     "unknown attribute \"mood\""),
    ("unknown value", lambda r: r.query([IDS[0]], exclude={"genre": ["Western"]}), KeyError,
     "has no value \"Western\""),
    ("filter not a mapping", lambda r: r.query([IDS[0]], include=["genre"]), TypeError,
     "include must be a mapping"),
    ("filter values not str", lambda r: r.query([IDS[0]], include={"genre": [1]}), TypeError,
     "must hold strings"),
    ("filters in soft mode", lambda r: r.query([IDS[0]], include={"genre": "Comedy"},
                                               mode="soft"), ValueError, "mode='soft'"),
    ("unknown mode", lambda r: r.query([IDS[0]], mode="fuzzy"), ValueError, "mode must be"),
    ("exclude_seen not a bool", lambda r: r.query([IDS[0]], exclude_seen="no"), TypeError,
     "exclude_seen must be a bool"),
    ("batch: prompt count", lambda r: r.query_batch([[IDS[0]], [IDS[1]]], ["a", "b", "c"]),
     ValueError, "one prompt per history"),
    ("batch: no prompts", lambda r: r.query_batch([[IDS[0]]], []), ValueError,
     "one prompt per history"),
    ("batch: bytes prompt", lambda r: r.query_batch([[IDS[0]]], [b"x"]), TypeError,
     r"prompts\[0\] must be a str"),
    ("batch: undecodable prompt", lambda r: r.query_batch([[IDS[0]]], ["a", SURROGATE][1:]),
     ValueError, r"prompts\[0\] is not valid text"),
    ("batch: histories a str", lambda r: r.query_batch("abc"), TypeError, "histories must be"),
    ("batch: NaN strength", lambda r: r.query_batch([[IDS[0]]], "x", strength=float("nan")),
     ValueError, "strength must be"),
    ("batch: negative k", lambda r: r.query_batch([[IDS[0]]], k=-3), ValueError,
     "k must be >= 0"),
    ("batch: unknown id", lambda r: r.query_batch([[IDS[0]], [7]]), KeyError,
     "unknown item id 7"),
    ("user_vector: NaN strength", lambda r: r.user_vector([IDS[0]], "x",
                                                          strength=float("nan")), ValueError,
     "strength must be"),
    ("user_vector: bad prompt", lambda r: r.user_vector([IDS[0]], 3), TypeError,
     "prompt must be a str"),
    ("encode_prompt: undecodable", lambda r: r.encode_prompt(SURROGATE), ValueError,
     "not valid text"),
]


@pytest.mark.parametrize(("call", "error", "match"), [case[1:] for case in BAD_QUERIES],
                         ids=[case[0] for case in BAD_QUERIES])
def test_bad_query_raises(rec: Recommender, call: Callable[[Recommender], object],
                          error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(rec)


# Defined results


def test_empty_history_and_only_unknown_ids_ignored(rec: Recommender) -> None:
    cold = rec.query([], "", k=10)
    assert len(cold) == 10
    assert _ids(rec.query([1, 2, 3], "", k=10, unknown="ignore")) == _ids(cold)
    assert _ids(rec.query([10**30, -5, "x"], "", k=10, unknown="ignore")) == _ids(cold)
    # Unknown ids are dropped, known ones kept (and still excluded as seen).
    mixed = rec.query([1, IDS[0], 2], "", k=10, unknown="ignore")
    assert _ids(mixed) == _ids(rec.query([IDS[0]], "", k=10))
    assert np.array_equal(rec.user_vector([], ""), rec.user_vector([5], "", unknown="ignore"))


def test_numpy_ids_are_accepted(rec: Recommender) -> None:
    plain = _ids(rec.query(IDS[:5], "", k=5))
    assert _ids(rec.query(np.array(IDS[:5], dtype=np.int64), "", k=5)) == plain
    assert _ids(rec.query([np.int32(i) for i in IDS[:5]], "", k=5)) == plain
    assert _ids(rec.query(tuple(IDS[:5]), "", k=5)) == plain


def test_k_zero_huge_and_beyond_the_catalogue(rec: Recommender) -> None:
    history = IDS[:7]
    assert rec.query(history, "", k=0) == []
    everything = rec.query(history, "", k=N + 50)
    assert len(everything) == N - len(history)
    assert _ids(rec.query(history, "", k=2**70)) == _ids(everything)
    assert _ids(rec.query(history, "", k=np.uint64(2**63))) == _ids(everything)
    assert not set(_ids(everything)) & set(history)
    found, scores = rec.query_batch([history, []], "", k=2**70)
    assert found.shape == scores.shape == (2, N)
    assert list(found[0][: N - 7]) == _ids(everything)
    assert (found[0][N - 7:] == -1).all() and np.isneginf(scores[0][N - 7:]).all()
    assert (found[1] != -1).all()
    assert rec.query_batch([history], "", k=0)[0].shape == (1, 0)
    assert rec.query_batch([], "x", k=4)[0].shape == (0, 4)


def test_long_history_uses_the_most_recent_items(rec: Recommender) -> None:
    rng = np.random.default_rng(11)
    history = [IDS[i] for i in rng.integers(0, N, size=40 * MAX_LEN)]
    tail = history[-MAX_LEN:]
    assert rec.max_history == MAX_LEN
    assert np.array_equal(rec.user_vector(history, "no horror please"),
                          rec.user_vector(tail, "no horror please"))
    assert _ids(rec.query(history, "x", k=10, exclude_seen=False)) == _ids(
        rec.query(tail, "x", k=10, exclude_seen=False))
    # Every item of the history is "seen", also those beyond the model's window.
    hits = rec.query(history, "", k=N)
    assert not set(_ids(hits)) & set(history)
    assert len(hits) == N - len(set(history))


def test_prompts_of_any_text(rec: Recommender) -> None:
    history = IDS[10:20]
    backbone = _ids(rec.query(history, "", k=10))
    for blank in ["", " ", "\t\n  \r", "\u3000"]:
        assert _ids(rec.query(history, blank, k=10)) == backbone
        assert not rec.encode_prompt(blank).any()
    assert _ids(rec.query(history, "no horror please", k=10, strength=0.0)) == backbone
    for prompt in ["😂🤣", "😂🤣 funny", "面白い映画が見たい", "películas de terror sin romance",
                   "Ужасы", "abc\x00def", "\ufeffcomedy", "x" * 5000]:
        vector = rec.encode_prompt(prompt)
        # The tiny bundle has an intent head: [sentence embedding, p_asked, p_refused].
        assert vector.shape == (STEER_PROMPT_DIM,) and np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector[:PROMPT_DIM])) - 1.0) < 1e-4, prompt
        assert ((vector[PROMPT_DIM:] >= 0) & (vector[PROMPT_DIM:] <= 1)).all(), prompt
        hits = rec.query(history, prompt, k=10)
        assert len(hits) == 10 and all(np.isfinite(h.score) for h in hits)
    # 100 KB: truncated to the encoder's maximum length, so equal to any prefix past it.
    huge = "something funny tonight " * 4200
    assert len(huge.encode()) > 100_000
    prefix = "something funny tonight " * 300
    assert np.array_equal(rec.encode_prompt(huge), rec.encode_prompt(prefix))
    assert _ids(rec.query(history, huge, k=10)) == _ids(rec.query(history, prefix, k=10))


def test_filters_that_match_nothing_or_everything(rec: Recommender) -> None:
    history = IDS[:5]
    assert rec.query(history, "x", include={"genre": "Comedy"}, exclude={"genre": "Comedy"}) == []
    assert rec.query(history, "x", include={"genre": []}) == []        # no value allowed
    assert rec.query(history, "x", include={"genre": GENRES, "decade": []}, mode="hard") == []
    plain = _ids(rec.query(history, "", k=10))
    assert _ids(rec.query(history, "", k=10, exclude={"genre": []}, mode="hard")) == plain
    assert _ids(rec.query(history, "", k=10, include={"genre": GENRES}, mode="hard")) == plain
    # Fewer items pass than k: all of them, best first.
    horror_2000s = [i for i, g, d in zip(IDS, TINY.values("genre"), TINY.values("decade"),
                                         strict=True)
                    if "Horror" in g and d == ["2000s"] and i not in history]
    assert horror_2000s                                 # the case is not vacuous
    hits = rec.query(history, "", k=N, include={"genre": "Horror", "decade": "2000s"})
    assert sorted(_ids(hits)) == sorted(horror_2000s)


def test_strength_edges(rec: Recommender) -> None:
    history = IDS[30:40]
    assert np.array_equal(rec.user_vector(history, "no horror", strength=0),
                          rec.user_vector(history, ""))
    big = rec.query(history, "no horror", strength=1e6)
    assert len(big) == 10 and all(np.isfinite(h.score) for h in big)
    assert _ids(rec.query(history, "no horror", strength=np.float32(1.0))) == _ids(
        rec.query(history, "no horror"))


def test_rust_panic_surfaces_as_an_exception() -> None:
    from dpr import _core

    with pytest.raises(RuntimeError, match=r"internal error in dpr\._core\._panic_probe: boom"):
        _core._panic_probe("boom")
    _core._panic_probe("")  # the same entry point without a panic returns normally
    try:
        _core._panic_probe("caught as Exception")
    except Exception as e:  # not a BaseException-only PanicException
        assert "caught as Exception" in str(e)


# ------------------------------------------------------------------------------------------
# 2. Damaged bundles: an exception naming the file and the problem, never a crash


def _copy(bundle: Path, to: Path) -> Path:
    """A copy of `bundle` whose prompt encoder is a link to the original's (it is large)."""
    to.mkdir()
    for item in bundle.iterdir():
        if item.is_dir():
            (to / item.name).symlink_to(item.resolve())
        else:
            shutil.copy2(item, to / item.name)
    return to


def _config(path: Path) -> dict[str, Any]:
    return json.loads((path / "dpr.json").read_text())


def _write_config(path: Path, config: dict[str, Any]) -> None:
    (path / "dpr.json").write_text(json.dumps(config))


def _rehash(path: Path, *names: str) -> None:
    """Records the new sha256 of files changed on purpose (so the damage is what is tested,
    not the checksum)."""
    config = _config(path)
    for name in names:
        config["files"][name] = sha256((path / name).read_bytes()).hexdigest()
    _write_config(path, config)


def _edit_weights(path: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    tensors = load_file(path / "weights.safetensors")
    edit(tensors)
    save_file(tensors, path / "weights.safetensors")
    _rehash(path, "weights.safetensors")


def _edit_json(path: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    value = json.loads((path / name).read_text())
    edit(value)
    (path / name).write_text(json.dumps(value))
    if name != "dpr.json":
        _rehash(path, name)


def _truncate(path: Path, name: str, keep: float = 0.5) -> None:
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: int(len(data) * keep)])


def _set_tensor(name: str, value: Callable[[np.ndarray], np.ndarray]
                ) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[name] = np.ascontiguousarray(value(tensors[name]))
    return edit


def _poke(name: str, index: tuple[int, ...], x: float) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[name] = tensors[name].copy()
        tensors[name][index] = x
    return edit


def _unlink_encoder_file(path: Path, name: str, listed: bool) -> None:
    encoder = path / "prompt_encoder"
    original = encoder.resolve()
    encoder.unlink()
    shutil.copytree(original, encoder)
    (encoder / name).unlink()
    if not listed:
        config = _config(path)
        del config["files"][f"prompt_encoder/{name}"]
        _write_config(path, config)


def _damage_encoder_file(path: Path, name: str, data: bytes) -> None:
    _unlink_encoder_file(path, name, listed=True)
    (path / "prompt_encoder" / name).write_bytes(data)
    _rehash(path, f"prompt_encoder/{name}")


EMBED = "items.embedding"
ROUTER = "steer.router.output_layer.weight"

# (id, damage, verify, exception, pattern the message must match)
DAMAGE: list[tuple[str, Callable[[Path], None], bool, type[Exception], str]] = [
    ("dpr.json missing", lambda p: (p / "dpr.json").unlink(), True, FileNotFoundError,
     r"dpr\.json: missing"),
    ("weights missing", lambda p: (p / "weights.safetensors").unlink(), True,
     FileNotFoundError, r"weights\.safetensors: missing"),
    ("items missing", lambda p: (p / "items.json").unlink(), True, FileNotFoundError,
     r"items\.json: missing"),
    ("prompt encoder missing", lambda p: (p / "prompt_encoder").unlink(), True,
     FileNotFoundError, r"prompt_encoder"),
    ("encoder weights missing", lambda p: _unlink_encoder_file(p, "model.safetensors", True),
     True, FileNotFoundError, r"prompt_encoder/model\.safetensors: missing"),
    ("encoder weights missing, unlisted",
     lambda p: _unlink_encoder_file(p, "model.safetensors", False), True, FileNotFoundError,
     r"model\.safetensors"),
    ("encoder tokenizer missing, unlisted",
     lambda p: _unlink_encoder_file(p, "tokenizer.json", False), True, FileNotFoundError,
     r"tokenizer\.json"),
    ("encoder weights truncated",
     lambda p: _damage_encoder_file(p, "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{"),
     True, dpr.BundleFormatError, r"model\.safetensors"),
    ("encoder tokenizer not JSON",
     lambda p: _damage_encoder_file(p, "tokenizer.json", b"{\"model\": "), True,
     dpr.BundleFormatError, r"tokenizer\.json"),
    ("encoder config wrong width",  # one more than the real width: not a multiple of the heads
     lambda p: _damage_encoder_file(p, "config.json", json.dumps(
         {**(c := json.loads((p / "prompt_encoder" / "config.json").read_text())),
          "hidden_size": c["hidden_size"] + 1}).encode()), True, dpr.BundleFormatError,
     r"config\.json"),
    ("dpr.json not JSON", lambda p: (p / "dpr.json").write_text("{\"format\": "), True,
     dpr.BundleFormatError, r"dpr\.json: not valid JSON"),
    ("dpr.json empty", lambda p: (p / "dpr.json").write_text(""), True,
     dpr.BundleFormatError, r"dpr\.json: not valid JSON"),
    ("dpr.json not UTF-8", lambda p: (p / "dpr.json").write_bytes(b"\xff\xfe{}"), True,
     dpr.BundleFormatError, r"dpr\.json: not valid UTF-8"),
    ("unknown version", lambda p: _edit_json(p, "dpr.json", lambda c: c.update(version=5)),
     True, dpr.BundleFormatError,
     r"dpr\.json: version Some\(5\) is not supported \(this reader knows 1, 2, 3 and 4\)"),
    ("version 0", lambda p: _edit_json(p, "dpr.json", lambda c: c.update(version=0)),
     True, dpr.BundleFormatError, r"dpr\.json: version Some\(0\) is not supported"),
    ("version missing", lambda p: _edit_json(p, "dpr.json", lambda c: c.pop("version")), True,
     dpr.BundleFormatError, r"dpr\.json: version None"),
    ("unknown format", lambda p: _edit_json(p, "dpr.json", lambda c: c.update(format="onnx")),
     True, dpr.BundleFormatError, r"dpr\.json: format"),
    ("unknown backbone", lambda p: _edit_json(
        p, "dpr.json", lambda c: c["backbone"].update(kind="bert4rec")), True,
     dpr.BundleFormatError, r"dpr\.json: .*bert4rec"),
    ("zero hidden size", lambda p: _edit_json(
        p, "dpr.json", lambda c: c["steer"].update(expert_hidden=0)), True,
     dpr.BundleFormatError, r"dpr\.json: steer\.expert_hidden must be positive"),
    ("absurd layer count", lambda p: _edit_json(
        p, "dpr.json", lambda c: c["backbone"].update(num_blocks=10**15)), True,
     dpr.BundleFormatError, r"dpr\.json: backbone\.num_blocks"),
    ("absurd size", lambda p: _edit_json(
        p, "dpr.json", lambda c: c.update(num_items=2**62)), True,
     dpr.BundleFormatError, r"dpr\.json: num_items"),
    ("path out of the bundle", lambda p: _edit_json(
        p, "dpr.json", lambda c: c["items"].update(file="../items.json")), True,
     dpr.BundleFormatError, r"dpr\.json: items\.file"),
    ("truncated weights", lambda p: _truncate(p, "weights.safetensors"), True,
     dpr.BundleFormatError, r"weights\.safetensors: sha256 differs"),
    ("truncated weights, unverified", lambda p: _truncate(p, "weights.safetensors"), False,
     dpr.BundleFormatError, r"weights\.safetensors: not a valid safetensors file"),
    ("weights header only, unverified", lambda p: _truncate(p, "weights.safetensors", 0.0005),
     False, dpr.BundleFormatError, r"weights\.safetensors: not a valid safetensors file"),
    ("empty weights, unverified", lambda p: _truncate(p, "weights.safetensors", 0.0), False,
     dpr.BundleFormatError, r"weights\.safetensors"),
    ("truncated items, unverified", lambda p: _truncate(p, "items.json"), False,
     dpr.BundleFormatError, r"items\.json"),
    ("wrong dtype", lambda p: _edit_weights(p, _set_tensor(ROUTER, lambda a: a.astype(
        np.float64))), True, dpr.BundleFormatError,
     rf"weights\.safetensors: tensor '{ROUTER}' has dtype F64, expected F32"),
    ("half-precision weights", lambda p: _edit_weights(p, _set_tensor(EMBED, lambda a: a.astype(
        np.float16))), True, dpr.BundleFormatError, r"has dtype F16, expected F32"),
    ("attribute matrix as float", lambda p: _edit_weights(p, _set_tensor(
        "items.attributes.genre", lambda a: a.astype(np.float32))), True,
     dpr.BundleFormatError, r"items\.attributes\.genre' has dtype F32, expected U8"),
    ("wrong shape", lambda p: _edit_weights(p, _set_tensor(ROUTER, lambda a: a[:-1])), True,
     dpr.BundleFormatError,
     rf"weights\.safetensors: tensor '{ROUTER}' has shape \({EXPERTS - 1}, {ROUTER_HIDDEN}\), "
     rf"dpr\.json implies \({EXPERTS}, {ROUTER_HIDDEN}\)"),
    ("transposed", lambda p: _edit_weights(p, _set_tensor(ROUTER, lambda a: a.T)), True,
     dpr.BundleFormatError, rf"'{ROUTER}' has shape \({ROUTER_HIDDEN}, {EXPERTS}\)"),
    ("missing tensor", lambda p: _edit_weights(p, lambda t: t.pop(ROUTER)), True,
     dpr.BundleFormatError, rf"weights\.safetensors: missing tensor '{ROUTER}'"),
    ("unexpected tensor", lambda p: _edit_weights(p, lambda t: t.update(extra=np.zeros(3))),
     True, dpr.BundleFormatError, r"weights\.safetensors: unexpected tensor 'extra'"),
    ("NaN weight", lambda p: _edit_weights(p, _poke(ROUTER, (1, 2), np.nan)), True,
     dpr.BundleFormatError, rf"weights\.safetensors: tensor '{ROUTER}' holds NaN or Inf"),
    ("Inf weight", lambda p: _edit_weights(p, _poke(EMBED, (3, 0), -np.inf)), True,
     dpr.BundleFormatError, rf"tensor '{EMBED}' holds NaN or Inf \(flat index {3 * DIM}\)"),
    ("padding row not zero", lambda p: _edit_weights(p, _poke(EMBED, (0, 1), 0.5)), True,
     dpr.BundleFormatError, r"row 0 \(padding\) is not zero"),
    ("fewer ids than items", lambda p: _edit_json(
        p, "items.json", lambda t: t.update(ids=t["ids"][:-1])), True, dpr.BundleFormatError,
     rf"items\.json: ids has {N - 1} entries, dpr\.json num_items={N}"),
    ("duplicate id", lambda p: _edit_json(
        p, "items.json", lambda t: t["ids"].__setitem__(1, t["ids"][0])), True,
     dpr.BundleFormatError, r"items\.json: ids\[1\] = 1000 is a duplicate"),
    ("float id", lambda p: _edit_json(
        p, "items.json", lambda t: t["ids"].__setitem__(2, 1.5)), True,
     dpr.BundleFormatError, r"items\.json: ids\[2\] is 1\.5"),
    ("attribute table disagrees", lambda p: _edit_json(
        p, "items.json", lambda t: t["attributes"]["genre"]["items"].__setitem__(0, [])),
     True, dpr.BundleFormatError,
     r"weights\.safetensors: tensor 'items\.attributes\.genre' row 1 disagrees with "
     r"items\.json attributes\.genre\.items\[0\]"),
    ("attribute matrix for no attribute", lambda p: _edit_weights(
        p, lambda t: t.update({"items.attributes.mood": t["items.attributes.genre"].copy()})),
     True, dpr.BundleFormatError,
     r"weights\.safetensors: unexpected tensor 'items\.attributes\.mood'"),
    ("attribute matrix missing", lambda p: _edit_weights(
        p, lambda t: t.pop("items.attributes.genre")), True, dpr.BundleFormatError,
     r"weights\.safetensors: missing tensor 'items\.attributes\.genre' \(items\.json lists"),
    ("attribute matrix too narrow", lambda p: _edit_weights(p, _set_tensor(
        "items.attributes.genre", lambda a: a[:, :-1])), True, dpr.BundleFormatError,
     rf"tensor 'items\.attributes\.genre' has shape \({N + 1}, \d+\), items\.json implies"),
    ("attribute value out of range", lambda p: _edit_json(
        p, "items.json", lambda t: t["attributes"]["genre"]["items"].__setitem__(0, [9])),
     True, dpr.BundleFormatError, r"items\.json: attributes\.genre\.items\[0\] holds value"),
    ("steering values disagree", lambda p: _edit_json(
        p, "items.json", lambda t: t["attributes"]["genre"]["values"].reverse()), True,
     dpr.BundleFormatError, r"items\.json: attributes\.genre\.values differ"),
    ("num_items disagrees", lambda p: _edit_json(
        p, "dpr.json", lambda c: c.update(num_items=N + 1)), True, dpr.BundleFormatError,
     rf"items\.json: ids has {N} entries, dpr\.json num_items={N + 1}"),
    ("dim disagrees", lambda p: _edit_json(p, "dpr.json", lambda c: c.update(dim=DIM // 2)), True,
     dpr.BundleFormatError, r"weights\.safetensors: tensor '.*' has shape"),
    ("modified file", lambda p: (p / "items.json").write_text(
        (p / "items.json").read_text().replace("Film 1", "Film X")), True,
     dpr.BundleFormatError, r"items\.json: sha256 differs"),
]


@pytest.mark.parametrize(("damage", "verify", "error", "match"), [d[1:] for d in DAMAGE],
                         ids=[d[0] for d in DAMAGE])
def test_damaged_bundle_raises(bundle: Path, tmp_path: Path, damage: Callable[[Path], None],
                               verify: bool, error: type[Exception], match: str) -> None:
    path = _copy(bundle, tmp_path / "b")
    damage(path)
    with pytest.raises(error, match=match):
        Recommender.load(path, verify=verify)


def test_damage_tests_start_from_a_good_bundle(bundle: Path, tmp_path: Path) -> None:
    path = _copy(bundle, tmp_path / "b")
    _edit_weights(path, lambda t: None)       # rewritten + rehashed, otherwise unchanged
    _edit_json(path, "items.json", lambda t: None)
    assert len(Recommender.load(path).query(IDS[:3], "x")) == 10


def test_bundle_is_a_file_or_missing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(FileNotFoundError, match="no such bundle directory"):
        Recommender.load(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Recommender.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------
# 3. Concurrency and memory


def _mixed_cases(count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    genres = [["Comedy"], ["Horror", "Drama"], GENRES[:2]]
    cases = []
    for i in range(count):
        length = int(rng.integers(0, 3 * MAX_LEN))
        case: dict[str, Any] = {
            "history": [IDS[j] for j in rng.integers(0, N, size=length)],
            "prompt": PROMPTS[i % len(PROMPTS)],
            "k": int(rng.choice([1, 5, 10, 40, N + 5])),
            "strength": float(rng.choice([0.0, 0.5, 1.0, 2.0])),
            "exclude_seen": bool(i % 5),
        }
        kind = i % 4
        if kind == 1:
            case.update(mode="hard", exclude={"genre": genres[i % 3]})
        elif kind == 2:
            case.update(mode="hybrid", include={"genre": genres[i % 3]},
                        exclude={"decade": ["2000s"]})
        cases.append(case)
    return cases


def _answer(rec: Recommender, case: dict[str, Any]) -> list[tuple[Any, float]]:
    return [(h.item_id, h.score) for h in rec.query(**case)]


def _run_threads(target: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(worker: int) -> None:
        try:
            target(worker)
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(w,), daemon=True) for w in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)  # a deadlock fails the test instead of hanging the suite
    assert not any(t.is_alive() for t in threads), "a thread did not finish (deadlock?)"
    if errors:
        raise errors[0]


def test_eight_threads_ten_thousand_mixed_queries_equal_serial(rec: Recommender) -> None:
    cases = _mixed_cases(10_000, seed=21)
    serial = [_answer(rec, c) for c in cases]
    assert sum(map(len, serial)) > 10 * len(cases)
    threaded: list[list[tuple[Any, float]] | None] = [None] * len(cases)

    def work(worker: int) -> None:
        for i in range(worker, len(cases), 8):
            threaded[i] = _answer(rec, cases[i])

    _run_threads(work, 8)
    mismatches = [i for i, (a, b) in enumerate(zip(serial, threaded, strict=True)) if a != b]
    assert mismatches == [], f"{len(mismatches)} of {len(cases)} differ, first {mismatches[:5]}"


def test_query_batch_under_load_from_several_threads(rec: Recommender) -> None:
    rng = np.random.default_rng(22)
    histories = [[IDS[j] for j in rng.integers(0, N, size=int(rng.integers(0, 2 * MAX_LEN)))]
                 for _ in range(64)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(64)]
    want_ids, want_scores = rec.query_batch(histories, prompts, k=12)
    singles = _mixed_cases(400, seed=23)
    single_want = [_answer(rec, c) for c in singles]
    bad: list[str] = []

    def work(worker: int) -> None:
        for round_ in range(15):
            if worker % 2:
                got_ids, got_scores = rec.query_batch(histories, prompts, k=12)
                if not (np.array_equal(got_ids, want_ids)
                        and np.array_equal(got_scores, want_scores)):
                    bad.append(f"batch, worker {worker}, round {round_}")
            else:
                for j in range(round_, len(singles), 15):
                    if _answer(rec, singles[j]) != single_want[j]:
                        bad.append(f"single {j}, worker {worker}")

    _run_threads(work, 6)
    assert bad == []


def test_gil_is_free_while_queries_run(rec: Recommender) -> None:
    """Other Python threads keep running while 4 threads query: no deadlock with the GIL."""
    stop = threading.Event()
    ticks = [0]

    def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1

    tick_thread = threading.Thread(target=ticker, daemon=True)
    tick_thread.start()
    cases = _mixed_cases(400, seed=24)
    _run_threads(lambda w: [_answer(rec, c) for c in cases[w::4]], 4)
    stop.set()
    tick_thread.join(timeout=60)
    assert not tick_thread.is_alive() and ticks[0] > 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_memory_stays_flat_over_100k_queries(rec: Recommender) -> None:
    cases = _mixed_cases(1000, seed=25)
    histories = [c["history"] for c in cases[:950]]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(950)]

    def run(rounds: int) -> int:
        done = 0
        for r in range(rounds):
            for c in cases[r % 20::20]:                     # 50 single queries, mixed
                rec.query(**c)
            rec.query_batch(histories, prompts, k=10)       # 950 more, batched
            rec.user_vector(histories[r], PROMPTS[r % len(PROMPTS)])
            done += 1001
        return done

    run(5)                                                  # warm-up: caches, allocator
    before = _rss_bytes()
    done = run(100)
    growth = _rss_bytes() - before
    print(f"RSS {before / 2**20:.1f} MB -> growth {growth / 2**20:+.2f} MB over {done} queries")
    assert done >= 100_000
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over {done} queries"
