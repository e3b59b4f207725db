"""The bundle contract on the Python side: format name and versions, file names, the canonical
tensor name -> shape table (`expected_shapes`) and a reference reader (`load_bundle_tensors`).

Torch-free. `dpr.export` writes what this module describes; the Rust reader
(`rust/src/bundle*`) holds the same table, and both are pinned to
`tests/golden/tensor_tables.json`. The format itself is documented in docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dpr-bundle"
VERSION = 4
"""Version 2 adds the intent read-out (`intent` in dpr.json, `intent.*` tensors); version 3
makes SASRec's `backbone.positions` mandatory; version 4 steers several attribute families
(`steer.families` replaces `steer.attribute` and `steer.values`); readers accept
`READ_VERSIONS`."""
READ_VERSIONS = (1, 2, 3, 4)
FAMILIES_FROM = 4
"""The first version whose `steer` lists `families` instead of one `attribute` and `values`."""


def steered_families(config: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The steered attribute families of a dpr.json and their values, in column order (the
    attribute block of the item table: docs/bundle.md), whatever the bundle's version."""
    steer = config["steer"]
    if int(config.get("version", 0)) >= FAMILIES_FROM:
        return [(str(f["name"]), [str(v) for v in f["values"]])
                for f in steer.get("families", [])]
    if not int(steer.get("attribute_dim", 0)):
        return []
    return [(str(steer["attribute"]), [str(v) for v in steer.get("values", [])])]
CONFIG_FILE = "dpr.json"
WEIGHTS_FILE = "weights.safetensors"
ITEMS_FILE = "items.json"
ENCODER_DIR = "prompt_encoder"
ENCODER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt", "sentence_bert_config.json")
"""Encoder side files copied verbatim when present (config.json and tokenizer.json required)."""
ENCODER_DTYPES = ("float16", "bfloat16", "float32")


def check_finite(tensors: dict[str, np.ndarray]) -> None:
    """Raise if any floating tensor holds NaN or Inf (the error names the tensor)."""
    for name, array in tensors.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{WEIGHTS_FILE}: tensor {name!r} holds NaN or Inf")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_shapes(config: dict[str, Any], attribute_widths: dict[str, int]
                    ) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape that `dpr.json` implies (`attribute_widths`: name -> V)."""
    n, d = int(config["num_items"]), int(config["dim"])
    backbone, steer = config["backbone"], config["steer"]
    shapes: dict[str, tuple[int, ...]] = {"items.embedding": (n + 1, d)}
    kind = backbone.get("kind")
    if kind == "sasrec":
        f = int(backbone["ffn_dim"])
        shapes["backbone.position_embedding.weight"] = (int(backbone["max_len"]), d)
        for b in range(int(backbone["num_blocks"])):
            p = f"backbone.blocks.{b}."
            for norm in ("attention_norm", "ffn_norm"):
                shapes[f"{p}{norm}.weight"] = shapes[f"{p}{norm}.bias"] = (d,)
            for proj in ("query", "key", "value", "out"):
                shapes[f"{p}attention.{proj}.weight"] = (d, d)
                shapes[f"{p}attention.{proj}.bias"] = (d,)
            shapes[f"{p}ffn_in.weight"], shapes[f"{p}ffn_in.bias"] = (f, d), (f,)
            shapes[f"{p}ffn_out.weight"], shapes[f"{p}ffn_out.bias"] = (d, f), (d,)
        shapes["backbone.final_norm.weight"] = shapes["backbone.final_norm.bias"] = (d,)
    elif kind == "gru4rec":
        for layer in range(int(backbone["num_layers"])):
            for kind_ in ("ih", "hh"):
                shapes[f"backbone.gru.weight_{kind_}_l{layer}"] = (3 * d, d)
                shapes[f"backbone.gru.bias_{kind_}_l{layer}"] = (3 * d,)
    else:
        raise ValueError(f"{CONFIG_FILE}: backbone.kind {kind!r} is not sasrec or gru4rec")
    prompt_dim, a = int(steer["prompt_dim"]), int(steer["attribute_dim"])
    k = int(steer["positive_experts"]) + int(steer["negative_experts"])
    ph, rh, eh = (int(steer["projector_hidden"]), int(steer["router_hidden"]),
                  int(steer["expert_hidden"]))
    shapes.update({
        "steer.projector.hidden_layer.weight": (ph, prompt_dim),
        "steer.projector.hidden_layer.bias": (ph,),
        "steer.projector.output_layer.weight": (d, ph),
        "steer.projector.output_layer.bias": (d,),
        "steer.router.hidden_layer.weight": (rh, prompt_dim + d),
        "steer.router.hidden_layer.bias": (rh,),
        "steer.router.output_layer.weight": (k, rh),
        "steer.router.output_layer.bias": (k,),
        "steer.experts.in_weight": (k, eh, 3 * d),
        "steer.experts.in_bias": (k, eh),
        "steer.experts.out_weight": (k, d + a, eh),
        "steer.experts.out_bias": (k, d + a),
    })
    for name, width in attribute_widths.items():
        shapes[f"items.attributes.{name}"] = (n + 1, width)
    intent = config.get("intent")
    if intent is not None:
        e, h, v = int(intent["embedding_dim"]), int(intent["hidden"]), len(intent["values"])
        shapes.update({"intent.hidden_layer.weight": (h, e), "intent.hidden_layer.bias": (h,),
                       "intent.output_layer.weight": (3 * v, h),
                       "intent.output_layer.bias": (3 * v,)})
    return shapes


def load_bundle_tensors(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate a bundle: (dpr.json as a dict, canonical name -> numpy array).

    Checks format and version, every file's sha256, that every expected tensor is present with
    the shape `dpr.json` implies (and no other), and that no tensor holds NaN/Inf. Errors name
    the file and the field.
    """
    from safetensors.numpy import load_file

    root = Path(path)
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing (not a bundle, or an unfinished one)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{CONFIG_FILE}: not valid JSON ({e})") from e
    if config.get("format") != FORMAT:
        raise ValueError(f"{CONFIG_FILE}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("version") not in READ_VERSIONS:
        raise ValueError(f"{CONFIG_FILE}: version {config.get('version')!r} is not supported "
                         f"(this reader knows {READ_VERSIONS})")
    for field in ("backbone", "dim", "num_items", "steer", "prompt_encoder", "items", "files"):
        if field not in config:
            raise ValueError(f"{CONFIG_FILE}: missing field {field!r}")
    backbone = config["backbone"]
    if (config["version"] >= 3 and isinstance(backbone, dict) and backbone.get("kind") == "sasrec"
            and "positions" not in backbone):
        raise ValueError(f"{CONFIG_FILE}: missing field 'backbone.positions' (mandatory for "
                         "SASRec from version 3)")
    files = config["files"]
    for required in (WEIGHTS_FILE, config["items"].get("file", ITEMS_FILE)):
        if required not in files:
            raise ValueError(f"{CONFIG_FILE}: files has no entry for {required}")
    for name, digest in files.items():
        file = root / name
        if not file.is_file():
            raise FileNotFoundError(f"{name}: missing (listed in {CONFIG_FILE} files)")
        if sha256_file(file) != digest:
            raise ValueError(f"{name}: sha256 differs from {CONFIG_FILE} files[{name!r}] "
                             "(truncated or modified)")
    items = json.loads((root / config["items"].get("file", ITEMS_FILE)).read_text("utf-8"))
    n = int(config["num_items"])
    for field in ("ids", "titles"):
        if len(items.get(field, [])) != n:
            raise ValueError(f"{ITEMS_FILE}: {field} has {len(items.get(field, []))} entries, "
                             f"{CONFIG_FILE} num_items={n}")
    widths = {name: len(a["values"]) for name, a in items.get("attributes", {}).items()}
    for family, values in steered_families(config):
        if family not in widths:
            raise ValueError(f"{ITEMS_FILE}: attributes lacks {family!r} (a steered family in "
                             f"{CONFIG_FILE} steer)")
        unknown = sorted(set(values) - set(items["attributes"][family]["values"]))
        if unknown:
            raise ValueError(f"{ITEMS_FILE}: attributes.{family}.values lack the steered values "
                             f"{unknown[:5]}")
    tensors = load_file(str(root / WEIGHTS_FILE))
    shapes = expected_shapes(config, widths)
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"{WEIGHTS_FILE}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{WEIGHTS_FILE}: tensor {name!r} has shape "
                             f"{tuple(tensors[name].shape)}, {CONFIG_FILE} implies {shape}")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise ValueError(f"{WEIGHTS_FILE}: unexpected tensors {extra[:5]}")
    check_finite(tensors)
    return config, tensors
