"""Export a trained DPR model as a bundle: the directory serving loads (see docs/bundle.md).

A bundle holds `dpr.json` (hyper-parameters, item table pointer, encoder settings, sha256 of
every other file), `weights.safetensors` (every tensor under a canonical name, float32, the
attribute scale folded into the experts), `items.json` (external ids, titles, attributes) and
`prompt_encoder/` (the sentence encoder, its weights converted to the chosen dtype).

Writing is atomic: everything goes into a hidden temporary sibling directory, `dpr.json` last,
every file fsynced, and only then is the directory renamed into place. On any error the
temporary directory is removed and an existing bundle at `out` is left untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpr.atomic import fsync_dir, staged_dir, write_synced
from dpr.bundle_schema import (
    CONFIG_FILE,
    ENCODER_DIR,
    ENCODER_DTYPES,
    ENCODER_FILES,
    FORMAT,
    ITEMS_FILE,
    VERSION,
    WEIGHTS_FILE,
    check_finite,
    load_bundle_tensors,
    sha256_file,
    steered_families,
)
from dpr.catalogue import Catalogue
from dpr.models.backbone import Backbone
from dpr.models.dpr import DPR
from dpr.models.intent import DETECT_THRESHOLD

__all__ = ["ENCODER_FILES", "export_bundle", "export_filter_only", "export_from_checkpoint",
           "filter_only_model", "model_from_bundle"]

LAYER_NORM_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Building the pieces


def _tensor_table(model: DPR) -> dict[str, np.ndarray]:
    """Canonical name -> float32 array for every model tensor, attribute scale folded in."""
    tensors: dict[str, np.ndarray] = {}
    for name, value in model.backbone.state_dict().items():
        array = value.detach().cpu().float().numpy().copy()
        if name == "item_embedding.weight":
            tensors["items.embedding"] = array
        else:
            tensors[f"backbone.{name}"] = array
    steering = model.steering
    for name, value in steering.state_dict().items():
        tensors[f"steer.{name}"] = value.detach().cpu().float().numpy().copy()
    if model.intent is not None:
        for name, value in model.intent.state_dict().items():
            tensors[f"intent.{name}"] = value.detach().cpu().float().numpy().copy()
    d, a = steering.dim, steering.attribute_dim
    if a:
        scale = np.float32(steering.attribute_scale)
        tensors["steer.experts.out_weight"][:, d:d + a, :] *= scale
        tensors["steer.experts.out_bias"][:, d:d + a] *= scale
    return tensors


def _json_id(value: Hashable) -> Any:
    """An external item id as a JSON value (numpy scalars become Python ones)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int):
        return value
    raise ValueError(f"item id {value!r} ({type(value).__name__}) is not a string or integer")


def _item_table(model: DPR, catalogue: Catalogue
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """items.json content and the `items.attributes.<name>` (N+1, V) uint8 matrices."""
    num_items = model.backbone.num_items
    ids = [_json_id(i) for i in catalogue.item_ids]
    titles = list(catalogue.titles)
    if len(ids) != num_items:
        raise ValueError(f"catalogue: item_ids has {len(ids)} entries, the model has "
                         f"num_items={num_items}")
    if len(titles) != num_items:
        raise ValueError(f"catalogue: titles has {len(titles)} entries, the model has "
                         f"num_items={num_items}")
    if len(set(ids)) != len(ids):
        raise ValueError("catalogue: duplicate item ids")
    raw: dict[str, Sequence[Sequence[str]]] = dict(catalogue.attributes)
    attribute_dim = model.steering.attribute_dim
    if len(model.columns) != attribute_dim:
        raise ValueError(f"model: {len(model.columns)} steered values but "
                         f"attribute_dim={attribute_dim}")
    for family in model.families:
        if family not in raw:
            raise ValueError(f"catalogue: the model steers attribute {family!r}, which the "
                             "catalogue lacks")
    attributes: dict[str, Any] = {}
    matrices: dict[str, np.ndarray] = {}
    for name, per_item in raw.items():
        if len(per_item) != num_items:
            raise ValueError(f"catalogue: attribute {name!r} has {len(per_item)} rows, the "
                             f"model has num_items={num_items}")
        present = sorted({str(v) for vs in per_item for v in vs})
        if name in model.families:
            values = model.values_of(name)
            unknown = sorted(set(present) - set(values))
            if unknown:
                raise ValueError(f"catalogue: attribute {name!r} has values the model does not "
                                 f"know: {unknown[:5]}")
        else:
            values = present
        column = {v: j for j, v in enumerate(values)}
        rows = [sorted({column[str(v)] for v in vs}) for vs in per_item]
        matrix = np.zeros((num_items + 1, len(values)), dtype=np.uint8)
        for row, columns in enumerate(rows):
            matrix[row + 1, columns] = 1
        attributes[name] = {"values": values, "items": rows}
        matrices[f"items.attributes.{name}"] = matrix
    return {"ids": ids, "titles": titles, "attributes": attributes}, matrices


def _intent_config(model: DPR, items: dict[str, Any]) -> dict[str, Any]:
    """dpr.json `intent`: the read-out's values (each a known attribute value), width and
    the auto-mode threshold."""
    intent = model.intent
    assert intent is not None
    for family, value in intent.values:
        known = items["attributes"].get(family, {}).get("values", [])
        if value not in known:
            raise ValueError(f"intent: value {family}={value!r} is not in the catalogue's "
                             f"attribute {family!r}")
    return {**intent.hyper_parameters(), "features": "embedding, p_asked, p_refused",
            "activation": "relu", "refuse_threshold": model.refuse_threshold,
            "detect_threshold": DETECT_THRESHOLD}


def _encoder_bytes(encoder_dir: Path, dtype: str) -> bytes:
    """model.safetensors with its floating tensors converted to `dtype`, serialised."""
    import torch
    from safetensors.torch import load_file, save

    target = getattr(torch, dtype)
    tensors = load_file(str(encoder_dir / "model.safetensors"))
    converted = {name: (t.to(target) if t.is_floating_point() else t).contiguous()
                 for name, t in tensors.items()}
    for name, t in converted.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{ENCODER_DIR}/model.safetensors: tensor {name!r} is not finite "
                             f"as {dtype}")
    return save(converted, metadata={"format": "pt"})


def _encoder_config(encoder_dir: Path, dtype: str) -> dict[str, Any]:
    from dpr.encoder import EMBEDDING_DIM, _max_tokens

    config = json.loads((encoder_dir / "config.json").read_text(encoding="utf-8"))
    return {"dir": ENCODER_DIR, "pooling": "mean", "normalize": True,
            "max_tokens": _max_tokens(encoder_dir),
            "dim": int(config.get("hidden_size", EMBEDDING_DIM)), "dtype": dtype}


# --------------------------------------------------------------------------------------------
# Writing


def _write_json(path: Path, value: Any) -> None:
    write_synced(path, (json.dumps(value, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


def _json_safe(value: Any) -> Any:
    """`value` if it survives JSON, else its str (training info is informative only)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _check_takes_no_prompt(model: DPR) -> None:
    """Raise unless `model` steers nothing: no steered value, no intent read-out and a steering
    head whose output is exactly zero (what `steer.prompts: false` promises)."""
    experts = model.steering.experts
    if model.columns or model.steering.attribute_dim or model.intent is not None:
        raise ValueError("a bundle that takes no prompt steers no attribute value and has no "
                         "intent read-out")
    if experts.out_weight.detach().any() or experts.out_bias.detach().any():
        raise ValueError("a bundle that takes no prompt needs a steering head whose output is "
                         "zero (experts.out_weight and out_bias all 0)")


def export_bundle(model: DPR, catalogue: Catalogue | Mapping[str, Any], out: str | Path, *,
                  encoder_dir: Path | None = None, encoder_dtype: str = "float16",
                  training: dict[str, Any] | None = None, prompts: bool = True) -> Path:
    """Write `model` plus its item catalogue as a bundle (version `dpr.bundle_schema.VERSION`)
    at `out`; returns `out`.

    `catalogue` is the item table: a `Catalogue`, or the dict `dpr.pt`'s extra holds (`item_ids`
    and `titles` in internal order 1..N, `attributes` as {name: per-item value lists}).
    `encoder_dir` is the sentence encoder folder to ship (default: `dpr.encoder.encoder_dir()`),
    its weights stored as `encoder_dtype`. `prompts=False` marks a filter-only bundle
    (`steer.prompts`: serving refuses every non-blank prompt), for a model that steers nothing
    (`filter_only_model`). Validates everything before writing; atomic (see the module
    docstring).
    """
    from safetensors.numpy import save as save_numpy

    out = Path(out)
    if encoder_dtype not in ENCODER_DTYPES:
        raise ValueError(f"encoder_dtype must be one of {ENCODER_DTYPES}, got {encoder_dtype!r}")
    if encoder_dir is None:
        from dpr.encoder import encoder_dir as default_encoder_dir

        encoder_dir = default_encoder_dir()
    encoder_dir = Path(encoder_dir)
    for required in ("config.json", "tokenizer.json", "model.safetensors"):
        if not (encoder_dir / required).is_file():
            raise FileNotFoundError(f"prompt encoder: no {required} in {encoder_dir}")

    if not prompts:
        _check_takes_no_prompt(model)
    backbone, steering = model.backbone, model.steering
    tensors = _tensor_table(model)
    if tensors["items.embedding"].shape[0] != backbone.num_items + 1:
        raise ValueError(f"{WEIGHTS_FILE}: items.embedding has "
                         f"{tensors['items.embedding'].shape[0]} rows, expected num_items+1="
                         f"{backbone.num_items + 1}")
    check_finite(tensors)
    items, matrices = _item_table(model, Catalogue.coerce(catalogue))
    tensors.update(matrices)
    if not math.isfinite(steering.attribute_scale):
        raise ValueError(f"{CONFIG_FILE}: steer.attribute_scale is not finite")

    config: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "backbone": backbone.hyper_parameters(),
        "dim": backbone.dim, "num_items": backbone.num_items,
        "steer": {**steering.hyper_parameters(),
                  "families": [{"name": f, "values": model.values_of(f)}
                               for f in model.families],
                  "strength_default": 1.0, "activation": "relu",
                  "layer_norm_eps": LAYER_NORM_EPS,
                  "empty_prompt": "returns the backbone vector exactly",
                  "output_scale_folded": True, "prompts": prompts},
        "prompt_encoder": _encoder_config(encoder_dir, encoder_dtype),
        "items": {"file": ITEMS_FILE, "attributes": sorted(items["attributes"])},
        "training": _json_safe(training or {}),
    }
    if model.intent is not None:
        config["intent"] = _intent_config(model, items)

    with staged_dir(out) as tmp:
        weights = {name: np.ascontiguousarray(a) for name, a in sorted(tensors.items())}
        write_synced(tmp / WEIGHTS_FILE, save_numpy(weights, metadata={"format": FORMAT}))
        _write_json(tmp / ITEMS_FILE, items)
        encoder_out = tmp / ENCODER_DIR
        encoder_out.mkdir()
        for name in ENCODER_FILES:
            if (encoder_dir / name).is_file():
                write_synced(encoder_out / name, (encoder_dir / name).read_bytes())
        write_synced(encoder_out / "model.safetensors", _encoder_bytes(encoder_dir, encoder_dtype))
        fsync_dir(encoder_out)
        written = sorted(p for p in tmp.rglob("*") if p.is_file())
        config["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in written}
        _write_json(tmp / CONFIG_FILE, config)  # last: a bundle without it never loads
    return out


def filter_only_model(backbone: Backbone, prompt_dim: int) -> DPR:
    """`backbone` under a steering head that steers nothing: no attribute block, no intent
    read-out, one expert whose output weights and bias are zero (so every prompt input leaves
    the backbone's vector exactly as it is), every hidden width 1. `prompt_dim` is the prompt
    encoder's width, which a bundle's steering head must read."""
    import torch

    from dpr.models.steering import DPRSteering

    steering = DPRSteering(backbone.dim, attribute_dim=0, prompt_dim=prompt_dim,
                           positive_experts=1, negative_experts=0, projector_hidden=1,
                           expert_hidden=1, router_hidden=1)
    with torch.no_grad():
        steering.experts.out_weight.zero_()
        steering.experts.out_bias.zero_()
    return DPR(backbone, steering).eval()


def export_filter_only(backbone: Backbone, catalogue: Catalogue | Mapping[str, Any],
                       out: str | Path, *, encoder_dir: Path | None = None,
                       encoder_dtype: str = "float16",
                       training: dict[str, Any] | None = None) -> Path:
    """Write `backbone` as a filter-only bundle at `out` (version `VERSION`, `steer.prompts`
    false, `steer.families` empty): it serves the backbone's ranking with hard filters on every
    attribute family of `catalogue` and refuses prompts. It carries the prompt encoder like every
    bundle (`encoder_dir`, default `dpr.encoder.encoder_dir()`). Returns `out`."""
    if encoder_dir is None:
        from dpr.encoder import encoder_dir as default_encoder_dir

        encoder_dir = default_encoder_dir()
    prompt_dim = _encoder_config(Path(encoder_dir), encoder_dtype)["dim"]
    return export_bundle(filter_only_model(backbone, prompt_dim), catalogue, out,
                         encoder_dir=Path(encoder_dir), encoder_dtype=encoder_dtype,
                         training=training, prompts=False)


def export_from_checkpoint(model_path: str | Path, out: str | Path, **kw: Any) -> Path:
    """Export the `dpr.pt` checkpoint at `model_path` (its extra holds the item table)."""
    from dpr.models.dpr import load_dpr

    model, extra = load_dpr(model_path)
    tuned = extra.get("prompt_encoder")
    if tuned and "encoder_dir" not in kw:
        # A fine-tuned prompt tower is saved beside the checkpoint (relative path).
        kw["encoder_dir"] = Path(model_path).parent / tuned
    if "training" not in kw:
        kw["training"] = {k: _json_safe(v) for k, v in extra.items()
                          if k not in (*Catalogue.FIELDS, "prompt_encoder")}
    return export_bundle(model, Catalogue.from_extra(extra), out, **kw)


def model_from_bundle(path: str | Path) -> tuple[DPR, dict[str, Any]]:
    """The PyTorch `DPR` a bundle holds (attribute scale unfolded) and its `dpr.json`.

    The inverse of `export_bundle` for the model part: the reference that serving parity is
    checked against, for any bundle (needs torch).
    """
    import torch

    from dpr.models.backbone import build_backbone
    from dpr.models.steering import DPRSteering

    config, tensors = load_bundle_tensors(path)
    backbone = build_backbone(config["backbone"])
    state = {("item_embedding.weight" if name == "items.embedding"
              else name.removeprefix("backbone.")): torch.from_numpy(array.copy())
             for name, array in tensors.items()
             if name == "items.embedding" or name.startswith("backbone.")}
    backbone.load_state_dict(state)
    steer = config["steer"]
    params = {key: steer[key] for key in ("attribute_dim", "prompt_dim", "positive_experts",
                                          "negative_experts", "projector_hidden",
                                          "expert_hidden", "router_hidden", "attribute_scale")}
    steering = DPRSteering(int(config["dim"]), **params)
    steering_state = {name.removeprefix("steer."): torch.from_numpy(array.copy())
                      for name, array in tensors.items() if name.startswith("steer.")}
    d, a = steering.dim, steering.attribute_dim
    if a:
        scale = np.float32(steering.attribute_scale)
        steering_state["experts.out_weight"][:, d:d + a, :] /= scale
        steering_state["experts.out_bias"][:, d:d + a] /= scale
    steering.load_state_dict(steering_state)
    intent = None
    if "intent" in config:
        from dpr.models.intent import IntentHead

        spec = config["intent"]
        intent = IntentHead([tuple(pair) for pair in spec["values"]], int(spec["embedding_dim"]),
                            int(spec["hidden"]))
        intent.load_state_dict({name.removeprefix("intent."): torch.from_numpy(array.copy())
                                for name, array in tensors.items()
                                if name.startswith("intent.")})
    columns = [(f, v) for f, values in steered_families(config) for v in values]
    model = DPR(backbone, steering, columns=columns, intent=intent,
                refuse_threshold=float(config.get("intent", {}).get("refuse_threshold", 0.9)))
    return model.eval(), config
