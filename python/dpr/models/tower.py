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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpr.atomic import atomic_write
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

    def trained_parameters(self) -> list[nn.Parameter]:
        """Every parameter that fine-tuning changes: the tuned layers and the read-out."""
        return [p for p in self.parameters() if p.requires_grad]

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) L2-normalised mean-pooled states; blank prompts give zero rows."""
        texts = list(texts)
        out = torch.zeros(len(texts), self.dim, device=self._device())
        rows = [i for i, t in enumerate(texts) if t.strip()]
        if not rows:
            return out
        pooled = self.upper_embed(self.lower_states([texts[i] for i in rows]))
        return out.index_put((torch.tensor(rows, device=out.device),), pooled)

    def lower_states(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Per non-blank text, the (tokens, dim) states below the tuned layers (the embedding
        output when every layer is tuned): frozen, so they can be computed once and reused."""
        texts = [t for t in texts if t.strip()]
        if not texts:
            return []
        tokens = self.tokenizer(texts, padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="pt").to(
                                    self._device())
        mask = tokens["attention_mask"]
        with torch.no_grad():
            states = self.encoder.embeddings(input_ids=tokens["input_ids"],
                                             token_type_ids=tokens.get("token_type_ids"))
            layers = self.encoder.encoder.layer
            extended = self._extended_mask(states, mask)
            for layer in layers[:len(layers) - self.tune_layers]:
                states = _layer_output(layer(states, attention_mask=extended))
        lengths = mask.sum(dim=1).tolist()
        return [states[i, :n].detach().clone() for i, n in enumerate(lengths)]

    def upper_embed(self, lower: Sequence[torch.Tensor]) -> torch.Tensor:
        """(n, dim) what `embed` gives for the texts whose `lower_states` these are: the tuned
        layers, mean pooling and L2 normalisation (differentiable in the tuned layers)."""
        states = torch.nn.utils.rnn.pad_sequence(list(lower), batch_first=True)
        lengths = torch.tensor([len(s) for s in lower], device=states.device)
        mask = (torch.arange(states.shape[1], device=states.device)[None, :]
                < lengths[:, None]).long()
        extended = self._extended_mask(states, mask)
        layers = self.encoder.encoder.layer
        for layer in layers[len(layers) - self.tune_layers:]:
            states = _layer_output(layer(states, attention_mask=extended))
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def _extended_mask(self, states: torch.Tensor, mask: torch.Tensor) -> Any:
        """The attention mask in the form this transformers version's BERT layers take."""
        create = getattr(self.encoder, "_create_attention_masks", None)
        if create is not None:
            extended, _ = create(attention_mask=mask, encoder_attention_mask=None,
                                 embedding_output=states, encoder_hidden_states=None,
                                 cache=None, position_ids=None)
            return extended
        return self.encoder.get_extended_attention_mask(mask, mask.shape)

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `e` (n, dim) and intent logits (n, V, 3)."""
        e = self.embed(texts)
        return e, self.intent(e)

    @torch.no_grad()
    def readings(self, texts: Sequence[str], batch: int = 256) -> np.ndarray:
        """(n, V, 3) read-out probabilities per value, float32 (zero for blank prompts)."""
        texts = list(texts)
        out = [self.intent.probabilities(self(texts[lo:lo + batch])[0]).float().cpu().numpy()
               for lo in range(0, len(texts), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.intent.num_values, 3),
                                                        dtype=np.float32)

    def _device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def save_encoder(self, out_dir: str | Path) -> Path:
        """Write the (tuned) encoder as a sentence-transformers folder: the original side files
        and `model.safetensors` with the current weights under the original tensor names."""
        from safetensors.torch import load_file, save

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
        data = save(tensors, metadata={"format": "pt"})
        atomic_write(out / "model.safetensors", lambda f: f.write(data))
        return out


def _layer_output(output: Any) -> torch.Tensor:
    """A BERT layer's hidden states (older transformers return them in a tuple)."""
    return output[0] if isinstance(output, tuple) else output
