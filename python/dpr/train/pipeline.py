"""The whole DPR recipe on one dataset: stage 1 (backbone), stages 2-3 (steering), evaluation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpr.atomic import write_json_atomic
from dpr.catalogue import Catalogue
from dpr.data.dataset import SequenceDataset
from dpr.evaluate.protocols import (
    AutoExclude,
    Overrules,
    Render,
    Steerer,
    SteeringCases,
    evaluate_steering,
)
from dpr.models.backbone import Backbone
from dpr.models.dpr import DPR
from dpr.models.intent import IntentHead
from dpr.models.steering import DPRSteering
from dpr.models.tower import PromptTower
from dpr.prompts import Grammar
from dpr.train import distributed
from dpr.train.backbone import BEST_CHECKPOINT, load_backbone
from dpr.train.config import BackboneTrainConfig
from dpr.train.experiment import REPORT, run_backbone_experiment
from dpr.train.scoring import backbone_user_vectors
from dpr.train.steering import SteeringTrainConfig, grammar_for, train_steering
from dpr.train.tower import PromptInputs, TowerTrainConfig, calibrate, save_tower, train_tower

MODEL_FILE = "dpr.pt"
STEERING_REPORT = "steering.json"
Encode = Callable[[Sequence[str]], np.ndarray]


def fit_backbone(dataset: SequenceDataset, kind: str, config: BackboneTrainConfig,
                 out_dir: Path, *, progress: bool = True, **hyper_parameters: Any
                 ) -> tuple[Backbone, dict[str, Any]]:
    """Stage 1, or the finished stage 1 already in `out_dir` (its metrics.json says so)."""
    report_path = out_dir / REPORT
    if report_path.is_file() and (out_dir / BEST_CHECKPOINT).is_file():
        import json

        report = json.loads(report_path.read_text())
        backbone = load_backbone(out_dir / BEST_CHECKPOINT)
        if backbone.kind == kind and backbone.num_items == dataset.num_items:
            return backbone, report
    report = run_backbone_experiment(dataset, kind, config, out_dir, progress=progress,
                                     **hyper_parameters)
    distributed.barrier()
    return load_backbone(out_dir / BEST_CHECKPOINT), report


def steerable_families(dataset: SequenceDataset, grammar: Grammar | None = None) -> list[str]:
    """The dataset's attribute families that prompts can steer: those the grammar describes
    (names and frames for their values), in the grammar's order. The others (e.g. brand ids
    without names) stay filter-only. Raises ValueError when there is none."""
    grammar = grammar or Grammar.load()
    families = [f for f in grammar.families if f in dataset.items.attributes]
    if not families:
        raise ValueError(f"{dataset.name}: none of its attribute families "
                         f"{sorted(dataset.items.attributes)} is one the prompt grammar "
                         f"describes ({sorted(grammar.families)}); train with --backbone-only "
                         "and serve with filters, or give a grammar for them (--grammar)")
    return families


def steering_for(backbone: Backbone, **hyper_parameters: Any) -> DPRSteering:
    """A fresh steering head sized for `backbone`."""
    return DPRSteering(backbone.dim, **hyper_parameters)


TUNED_ENCODER_DIR = "prompt_encoder"
"""The fine-tuned prompt encoder's folder inside a run directory (dpr.pt refers to it)."""


TOWER_FILE = "tower.pt"
"""The trained intent read-out and its report inside a run directory (reusable by other runs
on the same catalogue values: the tower does not depend on the backbone)."""


def fit_prompt_tower(dataset: SequenceDataset, config: TowerTrainConfig, out_dir: Path, *,
                     families: Sequence[str] = ("genre",), grammar: Grammar | None = None,
                     progress: bool = True) -> tuple[PromptInputs, dict[str, Any]]:
    """Stage 2a: fine-tune the prompt tower and its intent read-out on the grammar, save the
    tuned encoder to `out_dir/prompt_encoder` (unless the encoder stays frozen) and the head to
    `out_dir/tower.pt`, and choose the auto-mode threshold on the validation frames."""
    from dpr.encoder import encoder_dir
    from dpr.train.checkpoint import save_atomic

    _, values = dataset.items.steered_matrix(families)
    grammar = grammar_for(grammar or Grammar.load(), dataset.items, families)
    torch.manual_seed(config.seed)
    tower = PromptTower(encoder_dir(), IntentHead(values), tune_layers=config.tune_layers)
    tower.to(config.device)
    report = train_tower(tower, grammar, config, progress=progress)
    tower.cpu()
    if config.tune_layers:
        folder = save_tower(tower, out_dir / TUNED_ENCODER_DIR)
        report["prompt_encoder"] = TUNED_ENCODER_DIR
    else:
        folder = encoder_dir()
    inputs = PromptInputs(folder, tower.intent)
    report["calibration"] = calibrate(inputs, grammar, values, seed=config.seed)
    save_atomic({"format": "dpr-tower", "intent": tower.intent.hyper_parameters(),
                 "state_dict": tower.intent.state_dict(), "report": report}, out_dir / TOWER_FILE)
    return inputs, report


def load_prompt_tower(run_dir: Path, columns: Sequence[tuple[str, str]]
                      ) -> tuple[PromptInputs, dict[str, Any]]:
    """The prompt tower a run saved (`fit_prompt_tower`), for steered `columns` ((family,
    value) pairs)."""
    from dpr.encoder import encoder_dir
    from dpr.train.checkpoint import load_checkpoint

    saved = load_checkpoint(run_dir / TOWER_FILE)
    if saved.get("format") != "dpr-tower":
        raise ValueError(f"{run_dir / TOWER_FILE}: not a prompt tower")
    spec = saved["intent"]
    pairs = [tuple(pair) for pair in spec["values"]]
    if pairs != [tuple(c) for c in columns]:
        raise ValueError(f"{run_dir}: the tower reads other values than this catalogue's")
    head = IntentHead(pairs, spec["embedding_dim"], spec["hidden"])
    head.load_state_dict(saved["state_dict"])
    report = dict(saved["report"])
    tuned = report.get("prompt_encoder")
    return PromptInputs(run_dir / tuned if tuned else encoder_dir(), head), report


def fit_steering(dataset: SequenceDataset, backbone: Backbone, inputs: PromptInputs,
                 config: SteeringTrainConfig, *, refuse_threshold: float,
                 families: Sequence[str] = ("genre",), grammar: Grammar | None = None,
                 progress: bool = True, **hyper_parameters: Any) -> tuple[DPR, dict[str, Any]]:
    """Stages 2 and 3 on a trained backbone and a trained prompt tower (`inputs`); returns the
    DPR model and timing/curve."""
    torch.manual_seed(config.seed)
    _, columns = dataset.items.steered_matrix(families)
    intent = inputs.intent
    hyper_parameters.setdefault("attribute_dim", len(columns))
    hyper_parameters.setdefault("prompt_dim", intent.embedding_dim + intent.feature_dim)
    steering = steering_for(backbone, **hyper_parameters)
    started = time.perf_counter()
    result = train_steering(steering, backbone, dataset.split(), dataset.items, inputs, config,
                            families=families, grammar=grammar,
                            embedding_dim=intent.embedding_dim, progress=progress)
    model = DPR(backbone, result.steering, columns=columns, intent=intent,
                refuse_threshold=refuse_threshold).eval()
    return model, {"config": config.to_dict(), "steering": steering.hyper_parameters(),
                   "seconds": {**result.seconds, "total": time.perf_counter() - started},
                   "curve": result.curve}


def dpr_steerer(model: DPR, encode: Encode, strength: float = 1.0) -> Steerer:
    """Adapter for the evaluation protocols: (h, prompts) -> h'."""

    dim = model.backbone.dim

    @torch.inference_mode()
    def steer(users: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        embeddings = torch.from_numpy(np.asarray(encode(list(prompts)), dtype=np.float32))
        h = torch.from_numpy(np.ascontiguousarray(users[:, :dim], dtype=np.float32))
        return model.steering(h, embeddings, strength).steered.numpy()

    return steer


def steering_cases(model_or_backbone: DPR | Backbone, dataset: SequenceDataset,
                   attribute: str = "genre", stage: str = "test") -> SteeringCases:
    """The held-out cases of `stage`, ready for evaluation of the prompts about `attribute`.

    For a DPR model with attribute coordinates, user vectors are [h, 0] and item vectors [E, A]
    (A: every steered family's values), which score exactly like the backbone until a prompt
    moves the user.
    """
    is_dpr = isinstance(model_or_backbone, DPR)
    backbone = model_or_backbone.backbone if is_dpr else model_or_backbone
    histories, targets = dataset.split().evaluation_cases(stage)
    vectors = torch.cat([backbone_user_vectors(backbone, histories[i:i + 512])
                         for i in range(0, len(histories), 512)]).float().cpu()
    with torch.no_grad():
        items = backbone.item_embedding.weight.detach().float().cpu()
    if is_dpr and model_or_backbone.steering.attribute_dim:
        matrix, _ = dataset.items.steered_matrix(model_or_backbone.families)
        items = torch.cat([items, torch.from_numpy(matrix).float()], dim=1)
        vectors = model_or_backbone.steering.extend(vectors)
    vectors, items = vectors.numpy(), items.numpy().copy()
    return SteeringCases(histories=histories, targets=targets, user_vectors=vectors,
                         item_vectors=items, catalogue=dataset.items, attribute=attribute)


def dpr_auto(model: DPR, encode: Encode, family: str = "genre") -> AutoExclude:
    """The values of `family` that `mode="auto"` hard-excludes per prompt: refused probability
    (the last V floats of the prompt input) at or above the model's threshold."""
    if model.intent is None:
        raise ValueError("this model has no intent read-out, so no auto mode")
    values = model.values_of(family)
    read = [j for j, (f, _) in enumerate(model.intent.values) if f == family]
    columns = [values.index(model.intent.values[j][1]) for j in read]
    if not values or sorted(columns) != list(range(len(values))):
        raise ValueError(f"the intent read-out does not cover the model's {family!r} values")
    count = model.intent.num_values

    def exclude(prompts: Sequence[str]) -> np.ndarray:
        refused = np.asarray(encode(list(prompts)))[:, -count:]
        out = np.zeros((len(prompts), len(values)), dtype=bool)
        out[:, columns] = refused[:, read] >= model.refuse_threshold
        return out

    return exclude


def dpr_overrules(model: DPR, encode: Encode) -> Overrules:
    """The engine's rule (`Model::filters_overrule`) over the model's read-out: exclusions
    overrule a prompt's reading when they cover every value it reads (asked or refused
    probability, from the prompt input's last 2V floats, at or above the bundle's detect
    threshold) and it reads one of them as asked for. `excluded[family]` is in the model's
    order of that family's values (the read-out's order for a family it does not steer)."""
    from dpr.models.intent import DETECT_THRESHOLD

    if model.intent is None:
        raise ValueError("this model has no intent read-out to overrule")
    count = model.intent.num_values
    position = {pair: j for j, pair in enumerate(model.intent.values)}

    def overrules(prompts: Sequence[str], excluded: dict[str, np.ndarray]) -> np.ndarray:
        features = np.asarray(encode(list(prompts)))[:, -2 * count:]
        asked, refused = features[:, :count], features[:, count:]
        detected = np.maximum(asked, refused) >= DETECT_THRESHOLD
        covered = np.zeros_like(detected)
        for family, values in excluded.items():
            names = model.values_of(family) or [v for f, v in model.intent.values if f == family]
            columns = [position[(family, v)] for v in names]
            covered[:, columns] |= np.asarray(values, dtype=bool)
        contradicted = (detected & (asked > refused) & covered).any(axis=1)
        return contradicted & ~(detected & ~covered).any(axis=1)

    return overrules


def evaluate_dpr(models: dict[str, tuple[DPR, Encode]], dataset: SequenceDataset, *,
                 render: Render, seed: int = 0, stage: str = "test", family: str | None = None,
                 protocols: Sequence[str] = ("standard", "positive", "negative", "compound")
                 ) -> dict[str, Any]:
    """Run every protocol about `family` (default: the first steered one) for one or more DPR
    models sharing a backbone (ablations); each model comes with the function that turns its
    prompts into its prompt inputs."""
    first = next(iter(models.values()))[0]
    family = family or first.families[0]
    cases = steering_cases(first, dataset, family, stage)
    steerers = {name: dpr_steerer(model, encode) for name, (model, encode) in models.items()}
    auto = {name: dpr_auto(model, encode, family) for name, (model, encode) in models.items()
            if model.intent is not None}
    overrules = {name: dpr_overrules(model, encode) for name, (model, encode) in models.items()
               if model.intent is not None}
    return evaluate_steering(cases, steerers, render=render, seed=seed, protocols=protocols,
                             auto=auto, overrules=overrules)


def evaluate_cross(model: DPR, encode: Encode, dataset: SequenceDataset, *, render: Render,
                   seed: int = 0, stage: str = "test") -> dict[str, Any]:
    """The cross-family compound protocol (`dpr.evaluate.cross_family`) over the model's first
    two steered families."""
    from dpr.evaluate.cross_family import evaluate_cross_family

    if len(model.families) < 2:
        raise ValueError("the cross-family protocol needs a model that steers two families")
    first, second = model.families[:2]
    cases = steering_cases(model, dataset, first, stage)
    auto = ({"dpr": {f: dpr_auto(model, encode, f) for f in model.families}}
            if model.intent is not None else {})
    overrules = {"dpr": dpr_overrules(model, encode)} if model.intent is not None else {}
    return evaluate_cross_family(cases, second, {"dpr": dpr_steerer(model, encode)},
                                 render=render, auto=auto, overrules=overrules, seed=seed)


def evaluate_ranges(model: DPR, inputs: PromptInputs, dataset: SequenceDataset,
                    grammar: Grammar, family: str, *, split: str, seed: int = 0,
                    stage: str = "test") -> dict[str, Any]:
    """The range protocols (`dpr.evaluate.ranges`) on `family`, with prompts from `split`."""
    from dpr.evaluate.ranges import evaluate_ranges as run

    cases = steering_cases(model, dataset, family, stage)
    auto = {"dpr": dpr_auto(model, inputs, family)} if model.intent is not None else {}
    overrules = {"dpr": dpr_overrules(model, inputs)} if model.intent is not None else {}
    return run(cases, {"dpr": dpr_steerer(model, inputs)}, grammar, split=split, auto=auto,
               overrules=overrules,
               read=inputs.readings if model.intent is not None else None,
               columns=list(model.columns), seed=seed)


def evaluate_by_frame(model: DPR, inputs: PromptInputs, dataset: SequenceDataset,
                      grammar: Grammar, *, split: str = "heldout", seed: int = 0,
                      family: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Each frame of `split` alone about `family` (default: the first steered one), polarity
    flips and the intent read-out's accuracy over every steered value, on the test cases:
    {"by_frame", "flips", "interpret"}."""
    from dpr.evaluate.frames import evaluate_frames, interpret_report, polarity_flips

    family = family or model.families[0]
    cases = steering_cases(model, dataset, family)
    steerers = {"dpr": dpr_steerer(model, inputs)}
    auto = {"dpr": dpr_auto(model, inputs, family)}
    overrules = {"dpr": dpr_overrules(model, inputs)}
    values = list(model.columns)
    return {"by_frame": evaluate_frames(cases, steerers, grammar, auto=auto, overrules=overrules,
                                        split=split, seed=seed, progress=progress),
            "flips": polarity_flips(cases, steerers, grammar, auto=auto, overrules=overrules,
                                    split=split, seed=seed),
            "interpret": interpret_report(inputs.readings, grammar, values, split=split,
                                          seed=seed)}


def save_model(model: DPR, dataset: SequenceDataset, out_dir: Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Write `dpr.pt` with the item table the export step needs."""
    path = out_dir / MODEL_FILE
    model.save(path, {"dataset": dataset.name, **Catalogue.from_items(dataset.items).to_extra(),
                      **(extra or {})})
    return path


def write_steering_report(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / STEERING_REPORT
    write_json_atomic(report, path)
    return path


def grammar_renderer(grammar: Grammar, split: str) -> Render:
    """The evaluation protocols' prompt renderer over one split of the grammar."""

    def render(intent: Any, rng: np.random.Generator) -> str:
        return grammar.render(intent, rng, split=split).text

    return render


@dataclass
class SteeringRun:
    """What `run_steering` leaves behind."""

    model: DPR
    inputs: PromptInputs
    model_path: Path
    bundle: Path | None
    report: dict[str, Any]


def run_steering(dataset: SequenceDataset, backbone: Backbone, out_dir: Path, *,
                 tower: TowerTrainConfig, steering: SteeringTrainConfig,
                 families: Sequence[str] = ("genre",), grammar: Grammar | None = None,
                 tower_from: Path | None = None, export: bool = True,
                 bundle_dir: Path | None = None, evaluate: str = "full",
                 title: str | None = None, progress: bool = True, **hyper_parameters: Any
                 ) -> SteeringRun:
    """Everything after stage 1 (`dpr.train.fit` runs the whole pipeline): the prompt tower
    (2a), the steering head (2, 3), `dpr.pt`, the bundle (`bundle_dir`, default
    `out_dir/bundle`), and the evaluation: "full" (every protocol on training and held-out
    frames, each held-out frame alone, polarity flips, interpret accuracy), "protocols" (the
    protocols only) or "none".
    `tower_from` reuses the prompt tower another run on the same catalogue trained (its time
    is reported as that run's)."""
    from dpr.evaluate.frames_report import write_frames_report
    from dpr.evaluate.report import write_steering_report
    from dpr.export import export_from_checkpoint

    if evaluate not in ("full", "protocols", "none"):
        raise ValueError(f"evaluate must be 'full', 'protocols' or 'none', got {evaluate!r}")
    grammar = grammar_for(grammar or Grammar.load(), dataset.items, families)
    started = time.perf_counter()
    if tower_from is not None:
        inputs, tower_report = load_prompt_tower(tower_from,
                                                 dataset.items.steered_matrix(families)[1])
        tower_report = {**tower_report, "reused_from": str(tower_from)}
        if "prompt_encoder" in tower_report:  # dpr.pt points at the encoder relative to itself
            tower_report["prompt_encoder"] = os.path.relpath(
                tower_from / tower_report["prompt_encoder"], out_dir)
    else:
        inputs, tower_report = fit_prompt_tower(dataset, tower, out_dir, families=families,
                                                grammar=grammar, progress=progress)
    threshold = tower_report["calibration"]["refuse_threshold"]
    model, info = fit_steering(dataset, backbone, inputs, steering, refuse_threshold=threshold,
                               families=families, grammar=grammar, progress=progress,
                               **hyper_parameters)
    seconds = {"tower": 0.0 if tower_from else tower_report["seconds"], **info["seconds"],
               "stages_2_3_total": time.perf_counter() - started}
    report: dict[str, Any] = {"tower": tower_report, "steering": info, "seconds": seconds}
    extra: dict[str, Any] = {"steering_training": info, "tower_training": tower_report}
    if "prompt_encoder" in tower_report:
        extra["prompt_encoder"] = tower_report["prompt_encoder"]
    model_path = save_model(model, dataset, out_dir, extra)
    bundle = (export_from_checkpoint(model_path, bundle_dir or out_dir / "bundle") if export
              else None)
    title = title or f"{dataset.name} {backbone.kind}"
    if evaluate != "none":
        models = {"dpr": (model, inputs)}
        for split in ("train", "heldout"):
            for i, family in enumerate(model.families):
                results = evaluate_dpr(models, dataset, family=family,
                                       render=grammar_renderer(grammar, split))
                suffix = "" if i == 0 else f" {family}"
                report[f"{split}_frames{suffix.replace(' ', '_')}"] = results
                write_steering_report(results, out_dir, f"{title} {split} frames{suffix}")
            if len(model.families) > 1:
                results = evaluate_cross(model, inputs, dataset,
                                         render=grammar_renderer(grammar, split))
                report[f"{split}_cross_family"] = results
                write_steering_report(results, out_dir, f"{title} {split} cross-family")
            for family in model.families:
                if grammar.ranges_of(family, split, "asked"):
                    results = evaluate_ranges(model, inputs, dataset, grammar, family,
                                              split=split)
                    report[f"{split}_ranges_{family}"] = results
                    write_steering_report(results, out_dir, f"{title} {split} ranges {family}")
    if evaluate == "full":
        report.update(evaluate_by_frame(model, inputs, dataset, grammar, progress=progress))
        write_frames_report(report["by_frame"], report["flips"], report["interpret"], out_dir,
                            f"{title} by frame")
    write_json_atomic(report, out_dir / STEERING_REPORT)
    return SteeringRun(model, inputs, model_path, bundle, report)
