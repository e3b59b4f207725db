"""The one train -> export -> evaluate pipeline: stage 1 (backbone), the prompt tower, stages 2
and 3 (steering), `dpr.pt`, the serving bundle and the evaluation reports. The `dpr train`,
`dpr quickstart` and `dpr build-demo` commands and the benches all run through `fit`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpr.data.dataset import SequenceDataset
from dpr.models.backbone import Backbone
from dpr.prompts import Grammar
from dpr.train.config import BackboneTrainConfig
from dpr.train.pipeline import SteeringRun, fit_backbone, run_steering, steerable_families
from dpr.train.recipe import recipe
from dpr.train.steering import SteeringTrainConfig
from dpr.train.tower import TowerTrainConfig


@dataclass
class FitResult:
    """What `fit` leaves behind (all of it also written under the run folder)."""

    backbone: Backbone
    backbone_report: dict[str, Any] | None
    """Stage 1's metrics.json content (None when a trained backbone was passed in)."""
    steering: SteeringRun | None
    """Stages 2-3, the model file, the bundle and their report (None with `steer=False`)."""
    filter_only_bundle: Path | None = None
    """With `steer=False`: the filter-only bundle of the backbone (`dpr.export.export_filter_only`),
    when one was exported."""

    @property
    def model_path(self) -> Path | None:
        """The steerable model `dpr.pt`."""
        return None if self.steering is None else self.steering.model_path

    @property
    def bundle(self) -> Path | None:
        """The serving bundle folder, when one was exported: the steerable one, or with
        `steer=False` the filter-only one."""
        return self.filter_only_bundle if self.steering is None else self.steering.bundle


def fit(dataset: SequenceDataset, out_dir: str | Path, *, backbone: str | Backbone = "sasrec",
        train: BackboneTrainConfig | None = None,
        hyper_parameters: Mapping[str, Any] | None = None,
        tower: TowerTrainConfig | None = None, steering: SteeringTrainConfig | None = None,
        steer: bool = True, export: bool = True, bundle_dir: str | Path | None = None,
        evaluate: str = "full", families: Sequence[str] | None = None,
        grammar: Grammar | None = None,
        tower_from: str | Path | None = None, title: str | None = None,
        steering_model: Mapping[str, Any] | None = None, progress: bool = True,
        on_backbone: Callable[[dict[str, Any]], object] | None = None,
        **overrides: Any) -> FitResult:
    """Train a steerable recommender on `dataset` into `out_dir` and export its bundle.

    `backbone` is a kind ("sasrec" or "gru4rec"), trained by its measured recipe
    (`dpr.train.recipe`) with `overrides` (e.g. `max_minutes=10`, `dim=128`) on top; or
    `train` and `hyper_parameters` replace the recipe outright. A finished stage 1 already in
    `out_dir` is reused, an unfinished one resumed. `backbone` may also be a trained model, in
    which case stage 1 is skipped. `steer=False` stops after stage 1 and exports the backbone
    as a filter-only bundle (hard filters on every attribute family, no prompts; docs/bundle.md
    `steer.prompts`) unless `export=False`. `tower`, `steering` and
    `steering_model` (e.g. `positive_experts`) configure stages 2a-3; `evaluate` is "full",
    "protocols" or "none"; the bundle goes to `bundle_dir` (default `out_dir/bundle`).
    `families` are the attribute families prompts steer (default: every family of the dataset
    that the grammar describes, `steerable_families`); the others stay filter-only.
    `on_backbone` is called with stage 1's report as soon as stage 1 is done.
    """
    out = Path(out_dir)
    if isinstance(backbone, str):
        params, config = recipe(backbone, **overrides)
        if train is not None:
            config = train
        if hyper_parameters is not None:
            params = dict(hyper_parameters)
        model, report = fit_backbone(dataset, backbone, config, out, progress=progress,
                                     **params)
        if on_backbone is not None:
            on_backbone(report)
    else:
        if overrides or train is not None or hyper_parameters is not None:
            raise ValueError("stage-1 settings were given for a backbone that is already trained")
        model, report = backbone, None
    if not steer:
        return FitResult(model, report, None,
                         _export_filter_only(dataset, model, report, out, bundle_dir)
                         if export else None)
    run = run_steering(dataset, model, out, tower=tower or TowerTrainConfig(),
                       steering=steering or SteeringTrainConfig(),
                       families=(steerable_families(dataset, grammar) if families is None
                                 else list(families)),
                       grammar=grammar, tower_from=None if tower_from is None else Path(tower_from),
                       export=export, bundle_dir=None if bundle_dir is None else Path(bundle_dir),
                       evaluate=evaluate, title=title, progress=progress,
                       **dict(steering_model or {}))
    return FitResult(model, report, run)


def _export_filter_only(dataset: SequenceDataset, backbone: Backbone,
                        report: dict[str, Any] | None, out: Path,
                        bundle_dir: str | Path | None) -> Path | None:
    """The filter-only bundle of a backbone-only run (written by the main process only)."""
    from dpr.catalogue import Catalogue
    from dpr.export import export_filter_only
    from dpr.train import distributed

    if not distributed.is_main():
        return None
    return export_filter_only(backbone, Catalogue.from_items(dataset.items),
                              out / "bundle" if bundle_dir is None else Path(bundle_dir),
                              training={"dataset": dataset.name, "backbone": report or {}})
