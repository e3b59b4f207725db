"""The trainable prompt tower: a BERT-family sentence encoder (all-MiniLM-L6-v2) whose top
layers are fine-tuned, mean pooling and L2 normalisation, and the intent read-out on top.

The pooled, normalised vector `e` is exactly what sentence-transformers (and the Rust core)
compute for the same weights; `save_encoder` writes the tuned weights as a sentence-transformers
folder that the bundle's `prompt_encoder/` carries.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dpr.models.intent import IntentHead

ENCODER_SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "vocab.txt", "sentence_bert_config.json")


class PromptTower(nn.Module):
    """Sentence encoder + intent head. `tune_layers` top transformer layers (and nothing below
    them) receive gradients; 0 keeps the encoder frozen (the ablation)."""

    def __init__(self, model_dir: str | Path, intent: IntentHead, tune_layers: int = 2,
                 max_tokens: int = 64) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(self.model_dir),
                                                            local_files_only=True)
        self.encoder: Any = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.intent = intent
        self.max_tokens = max_tokens
        layers = self.encoder.encoder.layer
        if not 0 <= tune_layers <= len(layers):
            raise ValueError(f"tune_layers must lie in 0..{len(layers)}, got {tune_layers}")
        self.tune_layers = tune_layers
        self.encoder.requires_grad_(False)
        for layer in layers[len(layers) - tune_layers:]:
            layer.requires_grad_(True)

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) L2-normalised mean-pooled states; blank prompts give zero rows."""
        texts = list(texts)
        out = torch.zeros(len(texts), self.dim, device=self._device())
        rows = [i for i, t in enumerate(texts) if t.strip()]
        if not rows:
            return out
        tokens = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="pt").to(
                                    self._device())
        states = self.encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        out = out.index_put((torch.tensor(rows, device=out.device),),
                            F.normalize(pooled, p=2, dim=1))
        return out

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `e` (n, dim) and intent logits (n, V, 3)."""
        e = self.embed(texts)
        return e, self.intent(e)

    def _device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def save_encoder(self, out_dir: str | Path) -> Path:
        """Write the (tuned) encoder as a sentence-transformers folder: the original side files
        and `model.safetensors` with the current weights under the original tensor names."""
        from safetensors.torch import load_file, save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ENCODER_SIDE_FILES:
            if (self.model_dir / name).is_file():
                shutil.copyfile(self.model_dir / name, out / name)
        original = load_file(str(self.model_dir / "model.safetensors"))
        state = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        tensors = {}
        for name, tensor in original.items():
            tensors[name] = state.get(name, tensor).to(tensor.dtype).contiguous()
        tmp = out / ".model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / "model.safetensors")
        return out
