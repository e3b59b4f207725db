"""The `dpr` command: quickstart, train (all three stages), evaluate, export and query.

Longer than ~400 lines because it holds every command's argument parser and its text output;
the work itself is in `dpr.train.fit`, `dpr.evaluate` and `dpr.Recommender`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpr.data import SequenceDataset
    from dpr.train import FitResult
    from dpr.train.steering import SteeringTrainConfig
    from dpr.train.tower import TowerTrainConfig

TRAIN_EXTRA_HINT = 'training needs the train extra: pip install "dpr-recommender[train]"'


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dpr` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ModuleNotFoundError as error:
        if error.name in {"torch", "tqdm", "matplotlib"}:
            print(f"dpr: {TRAIN_EXTRA_HINT} ({error.name} is missing)", file=sys.stderr)
            return 2
        raise
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"dpr: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    quick = commands.add_parser("quickstart", help="train and evaluate on the built-in synthetic "
                                "catalogue (no download)")
    quick.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--max-epochs", type=int, default=40)
    quick.set_defaults(handler=_quickstart)

    demo = commands.add_parser("build-demo", help="train the demo model (quickstart's, seeded) and "
                               "write its bundle where `maturin build` packs it into the wheel")
    demo.add_argument("--out", type=Path, default=None,
                      help="bundle directory (default: the package's demo_bundle folder)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-epochs", type=int, default=40)
    demo.set_defaults(handler=_build_demo)

    train = commands.add_parser("train", help="train a backbone on a dataset folder")
    train.add_argument("--data", type=Path, required=True,
                       help="dataset folder (s3rec: the sequence file, e.g. Beauty.txt)")
    train.add_argument("--format", required=True,
                       choices=["movielens-1m", "movielens-100k", "csv", "s3rec", "synthetic"])
    train.add_argument("--backbone", choices=["sasrec", "gru4rec"], default="sasrec")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--min-rating", type=float, default=None,
                       help="keep ratings >= this (movielens-1m default: 4)")
    train.add_argument("--k-core", type=int, default=5)
    train.add_argument("--attributes", type=_families, default=None,
                       help="csv format: item attribute columns, e.g. genre,decade,language "
                            "(default genre; decade may come from a numeric year column)")
    recipe = train.add_argument_group(
        "stage 1 (defaults: the backbone's measured recipe, see README and dpr.train.RECIPES)")
    recipe.add_argument("--dim", type=int, default=None)
    recipe.add_argument("--max-len", type=int, default=None)
    recipe.add_argument("--blocks", type=int, default=None, help="SASRec blocks")
    recipe.add_argument("--heads", type=int, default=None, help="SASRec attention heads")
    recipe.add_argument("--ffn-dim", type=int, default=None, help="SASRec feed-forward width")
    recipe.add_argument("--dropout", type=float, default=None)
    recipe.add_argument("--lr", type=float, default=None)
    recipe.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                        help="cosine: anneal the learning rate to 2%% of --lr by the end of "
                             "--max-epochs or --max-minutes, whichever comes first")
    recipe.add_argument("--batch-size", type=int, default=None)
    recipe.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    recipe.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                        help="leave each position's already-seen items out of the training "
                             "softmax, as evaluation leaves the history out of the ranking "
                             "(default: on)")
    recipe.add_argument("--label-smoothing", type=float, default=None,
                        help="share of each training label spread over the other items")
    recipe.add_argument("--windows", choices=["last", "random"], default=None,
                        help="training window of a sequence longer than --max-len: the most "
                             "recent items, or one drawn anew each epoch")
    recipe.add_argument("--weight-average", type=float, default=None,
                        help="decay of a moving average of the weights, taken every step; the "
                             "average is validated and kept (0 = off; e.g. 0.999)")
    recipe.add_argument("--max-epochs", type=int, default=None)
    recipe.add_argument("--patience", type=int, default=None)
    recipe.add_argument("--max-minutes", type=float, default=None,
                        help="time budget of stage 1 (0 = none)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--no-resume", action="store_true",
                       help="start over even if --out holds a checkpoint")
    train.add_argument("--backbone-only", action="store_true",
                       help="stop after stage 1 and export the backbone as a filter-only bundle "
                            "(OUT/bundle: hard filters on every attribute family, no prompts)")
    train.add_argument("--steer", type=_families, default=None,
                       help="attribute families prompts steer, e.g. genre,decade (default: every "
                            "family of the data that the prompt grammar describes)")
    _steering_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="steering protocols for a trained model")
    evaluate.add_argument("model", type=Path, help="dpr.pt, or the folder `dpr train` wrote")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--format", required=True,
                          choices=["movielens-1m", "movielens-100k", "csv", "s3rec", "synthetic"])
    evaluate.add_argument("--min-rating", type=float, default=None)
    evaluate.add_argument("--k-core", type=int, default=5)
    evaluate.add_argument("--attributes", type=_families, default=None,
                       help="csv format: item attribute columns, e.g. genre,decade,language "
                            "(default genre; decade may come from a numeric year column)")
    evaluate.add_argument("--json", type=Path, required=True, help="where to write the results")
    evaluate.add_argument("--grammar", type=Path, default=None,
                          help="prompt grammar file (default: the built-in one)")
    evaluate.add_argument("--split", choices=["train", "valid", "heldout"], default="heldout",
                          help="which frames of the grammar to evaluate on")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--no-frames", action="store_true",
                          help="the protocols only: skip each frame alone, polarity flips and "
                               "interpret accuracy (minutes instead of an hour on ML-1M)")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser("export", help="write a serving bundle from a trained model")
    export.add_argument("model", type=Path, help="dpr.pt, or the folder `dpr train` wrote")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    export.add_argument("--encoder-dtype", choices=["float16", "float32"], default="float16")
    export.set_defaults(handler=_export)

    query = commands.add_parser("query", help="recommend from a bundle (no torch needed)")
    query.add_argument("bundle", type=Path, nargs="?", default=None,
                       help="bundle directory (default: the demo bundle, if this install has one)")
    query.add_argument("--history", default="", help="item ids, oldest first: 1193,661,914")
    query.add_argument("--prompt", default="")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--strength", type=float, default=None)
    query.add_argument("--include", action="append", default=[], metavar="ATTR=VALUE",
                       help="keep only items with this value (repeatable)")
    query.add_argument("--exclude", action="append", default=[], metavar="ATTR=VALUE",
                       help="drop items with this value (repeatable)")
    query.add_argument("--mode", choices=["auto", "soft", "hard", "hybrid"], default=None,
                       help="default: hybrid with --include/--exclude, else auto (steer, and "
                       "exclude what the prompt refuses)")
    query.add_argument("--explain", action="store_true",
                       help="first print what the intent read-out finds in the prompt")
    query.add_argument("--ignore-unknown", action="store_true",
                       help="drop unknown history ids instead of failing")
    query.set_defaults(handler=_query)
    return parser


def _filters(pairs: list[str], flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} takes ATTR=VALUE, got {pair!r}")
        out.setdefault(name, []).append(value)
    return out


def _history_ids(text: str) -> list[int | str]:
    ids: list[int | str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        ids.append(int(part) if part.lstrip("-").isdigit() else part)
    return ids


def _query(args: argparse.Namespace) -> int:
    from dpr.recommender import Recommender

    rec = Recommender.load(args.bundle)
    include = _filters(args.include, "--include") or None
    exclude = _filters(args.exclude, "--exclude") or None
    hits = rec.query(_history_ids(args.history), args.prompt, k=args.k, strength=args.strength,
                     include=include, exclude=exclude, mode=args.mode,
                     unknown="ignore" if args.ignore_unknown else "error")
    if args.explain:
        threshold = rec.refuse_threshold
        if threshold is None:
            print("reading: this bundle has no intent read-out (nothing to explain)")
        else:
            mode = args.mode or ("hybrid" if include or exclude else "auto")
            readings = rec.interpret(args.prompt)
            print(f"reading of {args.prompt!r}: {len(readings) or 'no'} value"
                  f"{'' if len(readings) == 1 else 's'} detected")
            for r in readings:
                excluded = (mode == "auto" and r.polarity == "refused"
                            and r.confidence >= threshold and args.strength != 0)
                note = f"  (excluded: refused >= {threshold:g})" if excluded else ""
                print(f"  {r.attribute}={r.value:<20} {r.polarity:<8} {r.confidence:.3f}{note}")
            if readings and mode in ("auto", "hybrid") and args.strength != 0:
                history = _history_ids(args.history)
                ignore = "ignore" if args.ignore_unknown else "error"
                served = rec.user_vector(history, args.prompt, unknown=ignore, mode=mode,
                                         include=include, exclude=exclude)
                if (served == rec.user_vector(history, "", unknown=ignore)).all():
                    print("  the exclusions contradict this reading (every value read is "
                          "excluded, one read as asked for): ranked by the unsteered backbone")
    print(f"{'#':>3}  {'item':>8}  {'score':>8}  {'title':<44} attributes")
    for rank, hit in enumerate(hits, 1):
        attributes = "; ".join(f"{k}: {'|'.join(v)}" for k, v in hit.attributes.items())
        print(f"{rank:>3}  {hit.item_id!s:>8}  {hit.score:8.3f}  {hit.title[:44]:<44} "
              f"{attributes}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from dpr.export import export_from_checkpoint
    from dpr.train.pipeline import MODEL_FILE

    path = args.model / MODEL_FILE if args.model.is_dir() else args.model
    bundle = export_from_checkpoint(path, args.out, encoder_dtype=args.encoder_dtype)
    print(f"bundle written to {bundle}")
    return 0


def _steering_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("steering (stages 2 and 3)")
    group.add_argument("--no-stage2", action="store_true", help="skip the alignment stage")
    group.add_argument("--no-stage3", action="store_true", help="skip the steering stage")
    group.add_argument("--steer-epochs", type=int, default=4)
    group.add_argument("--positions-per-user", type=int, default=40)
    group.add_argument("--positive-experts", type=int, default=2)
    group.add_argument("--negative-experts", type=int, default=2)
    group.add_argument("--router-weight", type=float, default=0.2)
    group.add_argument("--prompts-per-genre", type=int, default=48,
                       help="training renderings per genre and polarity, each encoded once")
    group.add_argument("--prompt-noise", type=float, default=0.3,
                       help="random perturbation of training prompt embeddings (0 = none); "
                            "helps on wordings never trained on")
    tower = parser.add_argument_group("prompt tower (stage 2a)")
    tower.add_argument("--tune-layers", type=int, default=6,
                       help="top encoder layers fine-tuned with the intent read-out")
    tower.add_argument("--freeze-encoder", action="store_true",
                       help="keep the sentence encoder frozen (ablation; same as "
                            "--tune-layers 0)")
    tower.add_argument("--tower-steps", type=int, default=3000)
    tower.add_argument("--tower-batch", type=int, default=64)
    tower.add_argument("--tower-minutes", type=float, default=12.0,
                       help="time budget of the prompt tower's fine-tuning")
    tower.add_argument("--tower-from", type=Path, default=None, metavar="RUN",
                       help="reuse the prompt tower another run on this catalogue trained "
                            "(the tower does not depend on the backbone)")
    tower.add_argument("--grammar", type=Path, default=None,
                       help="prompt grammar file (default: the built-in one)")
    tower.add_argument("--evaluate", choices=("full", "protocols", "none"), default="full",
                       help="after training: every protocol on training and held-out frames "
                            "plus each held-out frame alone (full), the protocols only, or "
                            "nothing")


RECIPE_FLAGS = {"dim": "dim", "max_len": "max_len", "blocks": "num_blocks",
                "heads": "num_heads", "ffn_dim": "ffn_dim", "dropout": "dropout", "lr": "lr",
                "lr_schedule": "lr_schedule", "batch_size": "batch_size",
                "weight_decay": "weight_decay", "exclude_seen": "exclude_seen",
                "label_smoothing": "label_smoothing", "windows": "windows",
                "weight_average": "weight_average", "max_epochs": "max_epochs",
                "patience": "patience", "max_minutes": "max_minutes"}
"""`dpr train` flag (argparse name) -> the recipe setting it overrides."""


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The stage-1 settings given on the command line (flags of the other backbone dropped)."""
    from dpr.train.recipe import HYPER_PARAMETERS

    sasrec_only = set(HYPER_PARAMETERS["sasrec"]) - set(HYPER_PARAMETERS[args.backbone])
    overrides = {setting: getattr(args, flag) for flag, setting in RECIPE_FLAGS.items()
                 if getattr(args, flag) is not None and setting not in sasrec_only}
    return {**overrides, "seed": args.seed, "device": args.device}


def _backbone_args(args: argparse.Namespace) -> dict[str, Any]:
    """The backbone hyper-parameters `dpr train` uses: the recipe with the flags on top."""
    from dpr.train.recipe import recipe

    return recipe(args.backbone, **_recipe_overrides(args))[0]


def _train(args: argparse.Namespace) -> int:
    from dpr.data import load_dataset
    from dpr.prompts import Grammar
    from dpr.train import distributed, fit

    dataset = load_dataset(args.data, args.format, min_rating=args.min_rating, k_core=args.k_core,
                           attributes=args.attributes)
    print(_describe(dataset.report))
    if args.no_resume:
        (args.out / "backbone_last.pt").unlink(missing_ok=True)
        (args.out / "metrics.json").unlink(missing_ok=True)
    result = fit(dataset, args.out, backbone=args.backbone, steer=not args.backbone_only,
                 tower=_tower_config(args), steering=_steering_config(args),
                 grammar=Grammar.load(args.grammar) if args.grammar else None,
                 tower_from=args.tower_from, title=f"{dataset.name} {args.backbone}",
                 families=args.steer, evaluate=args.evaluate,
                 steering_model={"positive_experts": args.positive_experts,
                                 "negative_experts": args.negative_experts},
                 on_backbone=lambda report: print(_stage1_summary(args.backbone, report)),
                 **_recipe_overrides(args))
    run = result.steering
    if run is not None and distributed.is_main():
        print(f"stages 2-3: {run.report['seconds']['stages_2_3_total']:.0f} s; "
              f"bundle written to {run.bundle}")
        if "heldout_frames" in run.report:
            print(_steering_table(run.report["heldout_frames"]))
        if "interpret" in run.report:
            print(f"interpret accuracy on held-out frames: "
                  f"{run.report['interpret']['accuracy']:.3f}")
    elif result.bundle is not None:
        print(f"filter-only bundle (no prompts; include/exclude filters on "
              f"{', '.join(sorted(dataset.items.attributes))}) written to {result.bundle}")
    print(f"written to {args.out}")
    return 0


def _stage1_summary(kind: str, report: dict[str, Any]) -> str:
    training = report["training"]
    return (_table([(kind, report["test"]), ("most popular", report["most_popular"]["test"])])
            + f"\nstage 1: {training['epochs']} epochs in {training['seconds']:.0f} s "
              f"({training['stopped_because']})")


def _steering_config(args: argparse.Namespace) -> SteeringTrainConfig:
    from dpr.train.steering import SteeringTrainConfig

    return SteeringTrainConfig(stage2=not args.no_stage2, stage3=not args.no_stage3,
                               epochs=args.steer_epochs,
                               positions_per_user=args.positions_per_user,
                               router_weight=args.router_weight,
                               prompts_per_genre=args.prompts_per_genre,
                               prompt_noise=args.prompt_noise, seed=args.seed)


def _tower_config(args: argparse.Namespace) -> TowerTrainConfig:
    from dpr.train.tower import TowerTrainConfig

    return TowerTrainConfig(tune_layers=0 if args.freeze_encoder else args.tune_layers,
                            steps=args.tower_steps, batch_size=args.tower_batch,
                            max_minutes=args.tower_minutes, seed=args.seed)


def _evaluate(args: argparse.Namespace) -> int:
    from dpr.atomic import write_json_atomic
    from dpr.data import load_dataset
    from dpr.encoder import encoder_dir
    from dpr.evaluate.frames_report import write_frames_report
    from dpr.evaluate.report import write_steering_report
    from dpr.models import load_dpr
    from dpr.prompts import Grammar
    from dpr.train.pipeline import (
        MODEL_FILE,
        evaluate_by_frame,
        evaluate_cross,
        evaluate_dpr,
        evaluate_ranges,
        grammar_renderer,
    )
    from dpr.train.steering import grammar_for
    from dpr.train.tower import PromptInputs

    path = args.model / MODEL_FILE if args.model.is_dir() else args.model
    model, extra = load_dpr(path)
    if model.intent is None:
        raise ValueError(f"{path} predates the prompt tower; retrain it with `dpr train`")
    dataset = load_dataset(args.data, args.format, min_rating=args.min_rating, k_core=args.k_core,
                           attributes=args.attributes)
    if list(dataset.items.ids) != list(extra.get("item_ids", [])):
        raise ValueError(f"{path} was trained on a different item catalogue than {args.data}")
    grammar = grammar_for(Grammar.load(args.grammar), dataset.items, model.families)
    tuned = extra.get("prompt_encoder")
    inputs = PromptInputs(path.parent / tuned if tuned else encoder_dir(), model.intent)
    results = evaluate_dpr({"dpr": (model, inputs)}, dataset,
                           render=grammar_renderer(grammar, args.split), seed=args.seed)
    for family in model.families[1:]:
        results[f"family_{family}"] = evaluate_dpr(
            {"dpr": (model, inputs)}, dataset, family=family,
            render=grammar_renderer(grammar, args.split), seed=args.seed)
    if len(model.families) > 1:
        results["cross_family"] = evaluate_cross(model, inputs, dataset, seed=args.seed,
                                                 render=grammar_renderer(grammar, args.split))
    for family in model.families:
        if grammar.ranges_of(family, args.split, "asked"):
            results[f"ranges_{family}"] = evaluate_ranges(model, inputs, dataset, grammar, family,
                                                          split=args.split, seed=args.seed)
    if not args.no_frames:
        results.update(evaluate_by_frame(model, inputs, dataset, grammar, split=args.split,
                                         seed=args.seed))
    results["grammar"] = grammar.source
    write_json_atomic(results, args.json)
    title = f"{dataset.name}: {path} ({args.split} frames)"
    reports = args.json.parent / args.json.stem
    write_steering_report(results, reports, title)
    for key, block in results.items():
        if key.startswith(("family_", "ranges_")) or key == "cross_family":
            write_steering_report(block, reports, f"{title} {key.replace('_', ' ')}")
    if not args.no_frames:
        write_frames_report(results["by_frame"], results["flips"], results["interpret"],
                            reports, f"{title} by frame")
    print(_steering_table(results))
    if not args.no_frames:
        print(f"interpret accuracy: {results['interpret']['accuracy']:.3f}")
    return 0


def _steering_table(results: dict[str, Any]) -> str:
    lines = [f"{'protocol':<10}{'method':<16}{'NDCG@10':>9}{'Recall@10':>11}{'genre share':>13}"]
    for protocol, block in results["protocols"].items():
        for method, m in block["methods"].items():
            share = m.get("genre_share@10")
            lines.append(f"{protocol:<10}{method:<16}{m['ndcg@10']:>9.4f}{m['recall@10']:>11.4f}"
                         f"{'' if share is None else f'{share:.3f}':>13}")
    return "\n".join(lines)


def _quickstart(args: argparse.Namespace) -> int:
    result, dataset = _train_demo(args.out, args.seed, args.max_epochs, verbose=True)
    assert result.bundle is not None
    print(_before_after(result.bundle, dataset))
    print(f"model, metrics, training curves and the serving bundle are in {args.out}/")
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    import tempfile

    from dpr.recommender import DEMO_BUNDLE, Recommender

    out = DEMO_BUNDLE if args.out is None else args.out
    with tempfile.TemporaryDirectory(prefix="dpr-demo-") as work:
        result, _ = _train_demo(Path(work), args.seed, args.max_epochs, verbose=False,
                                bundle_dir=out)
    assert result.bundle is not None
    rec = Recommender.load(result.bundle)
    size = sum(f.stat().st_size for f in result.bundle.rglob("*") if f.is_file())
    print(f"demo bundle: {result.bundle} ({rec.num_items} items, {size / 2**20:.1f} MiB, "
          f"seed {args.seed})")
    return 0


def _train_demo(out: Path, seed: int, max_epochs: int, *, verbose: bool,
                bundle_dir: Path | None = None) -> tuple[FitResult, SequenceDataset]:
    """Quickstart's pipeline: synthetic catalogue → SASRec → prompt tower → DPR steering →
    bundle (`bundle_dir`, default `out/bundle`); returns the run and the dataset."""
    from dpr.data import synthetic_dataset
    from dpr.train import BackboneTrainConfig, fit
    from dpr.train.steering import SteeringTrainConfig
    from dpr.train.tower import TowerTrainConfig

    say = print if verbose else (lambda *_: None)
    dataset = synthetic_dataset(seed=seed)
    say(f"synthetic catalogue: {_describe(dataset.report)}")
    say("stage 1: training the SASRec backbone ...")

    def stage1_done(report: dict[str, Any]) -> None:
        say(_table([("sasrec", report["test"]),
                    ("most popular", report["most_popular"]["test"])]))
        say("stage 2a: fine-tuning the prompt tower; stages 2-3: the steering experts ...")

    # The demo's own small recipe (seeded, a few minutes on 2 cores), not the ML-1M one.
    result = fit(dataset, out, backbone="sasrec",
                 train=BackboneTrainConfig(lr=2e-3, max_epochs=max_epochs, patience=5,
                                           seed=seed),
                 hyper_parameters={"dim": 64, "max_len": 50},
                 tower=TowerTrainConfig(steps=DEMO_TOWER_STEPS, max_minutes=2.5, seed=seed),
                 steering=SteeringTrainConfig(epochs=6, positions_per_user=None, seed=seed),
                 bundle_dir=bundle_dir, evaluate="protocols" if verbose else "none",
                 title="quickstart", progress=verbose, on_backbone=stage1_done)
    if verbose and result.steering is not None:
        print(_steering_table(result.steering.report["heldout_frames"]))
    return result, dataset


DEMO_TOWER_STEPS = 300
"""Prompt-tower steps of the quickstart and demo models (about two minutes on 2 cores)."""


def _before_after(bundle: Path, dataset: SequenceDataset, top: int = 10) -> str:
    """One user's top items from the served bundle (Rust, no torch) for no prompt, a request
    for a genre the user rarely watches, an idiomatic refusal of their habitual genre and a
    compound of both, with `interpret`'s reading of each prompt and the genre shares."""
    from dpr.recommender import Recommender

    rec = Recommender.load(bundle)
    split = dataset.split()
    user = 0
    history = [dataset.items.ids[int(i) - 1] for i in split.train[user]]
    genres = [g for item in split.train[user][-10:]
              for g in dataset.items.values_of("genre", int(item))]
    habitual = max(set(genres), key=genres.count)
    rarely = min(dataset.items.attribute_values("genre"), key=genres.count)
    lines = [f"\nuser {dataset.users[user]} (served from {bundle}): recent history "
             + ", ".join(dataset.items.title(int(i)) for i in split.train[user][-3:])]
    prompts = ["", f"Something {rarely.lower()}, please.",
               f"Spare me the {habitual.lower()} stuff.",
               f"I'd like {rarely.lower()}; {habitual.lower()} is off the table."]
    for prompt in prompts:
        hits = rec.query(history, prompt, k=top)
        share = {g: sum(g in h.attributes["genre"] for h in hits) / max(len(hits), 1)
                 for g in (rarely, habitual)}
        lines.append(f"  prompt {prompt or '(none)'!r}: top-{top} share {rarely} "
                     f"{share[rarely]:.1f}, {habitual} {share[habitual]:.1f}")
        if prompt:
            reading = ", ".join(f"{r.polarity} {r.value} ({r.confidence:.2f})"
                                for r in rec.interpret(prompt)) or "nothing"
            lines.append(f"    interpret: {reading}")
        for hit in hits[:5]:
            lines.append(f"    {hit.title:<40} {'|'.join(hit.attributes['genre'])}")
    return "\n".join(lines)


def _families(text: str) -> list[str]:
    """`--attributes genre,decade` -> ["genre", "decade"]."""
    families = [f.strip() for f in text.split(",") if f.strip()]
    if not families:
        raise argparse.ArgumentTypeError("name at least one attribute family, e.g. genre,decade")
    return families


def _describe(report: dict[str, Any]) -> str:
    missing = [f"{key.removeprefix('items_without_')} {count}" for key, count in report.items()
               if key.startswith("items_without_") and count]
    return (f"{report['users']} users, {report['items']} items, "
            f"{report['interactions']} interactions"
            + (f" (items without a value: {', '.join(missing)})" if missing else ""))


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Test metrics as an aligned text table (history masked from the ranking)."""
    lines = [f"{'model':<14}{'NDCG@10':>10}{'Recall@10':>11}{'MRR@10':>9}"]
    for name, m in rows:
        lines.append(f"{name:<14}{m['ndcg@10']:>10.4f}{m['recall@10']:>11.4f}{m['mrr@10']:>9.4f}")
    masked = all(m.get("history_masked", True) for _, m in rows)
    lines.append(f"(test split, full ranking over all items, history "
                 f"{'masked' if masked else 'not masked'})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
