"""The prompt-understanding summary: the issue's targets against what `dpr train` measured.

Reads the `steering.json` of finished runs (`dpr train ... --out RUN`), copies each run's
per-frame and protocol reports into benches/results/ and writes
benches/results/prompt-understanding.md.

    python benches/prompt_summary.py ml1m-sasrec=runs/ml1m-sasrec ml1m-gru4rec=runs/ml1m-gru4rec
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

from dpr.evaluate.frames_report import summarise_frames

RESULTS = Path(__file__).parent / "results"


def _ratio(methods: dict[str, Any], top: str, bottom: str) -> float:
    if top not in methods or bottom not in methods or not methods[bottom]["ndcg@10"]:
        return math.nan
    return methods[top]["ndcg@10"] / methods[bottom]["ndcg@10"]


def rows(name: str, report: dict[str, Any]) -> list[str]:
    protocols = report["heldout_frames"]["protocols"]
    pos, neg = protocols["positive"]["methods"], protocols["negative"]["methods"]
    com, std = protocols["compound"]["methods"], protocols["standard"]["methods"]
    kinds = summarise_frames(report["by_frame"])
    refusal, description = kinds.get("refusal", {}), kinds.get("description", {})
    seconds = report["seconds"]
    return [
        f"| {name} | refusals: mean forbidden (soft / auto), worst frame (auto) | ≤ 0.01, ≤ 0.05 "
        f"| {neg['dpr soft']['genre_share@10']:.3f} / {neg['dpr auto']['genre_share@10']:.3f}, "
        f"{refusal.get('auto forbidden max', math.nan):.3f} |",
        f"| {name} | refusals: auto / hybrid NDCG@10 ÷ hard filter | ≥ 1.0 | "
        f"{_ratio(neg, 'dpr auto', 'hard filter'):.3f} / "
        f"{_ratio(neg, 'dpr hybrid', 'hard filter'):.3f} |",
        f"| {name} | compound: asked share / refused share (soft) | ≥ 0.8 / ≤ 0.03 | "
        f"{com['dpr soft']['genre_share@10']:.3f} / {com['dpr soft']['avoid_share@10']:.3f} "
        f"(auto {com['dpr auto']['genre_share@10']:.3f} / "
        f"{com['dpr auto']['avoid_share@10']:.3f}) |",
        f"| {name} | polarity flips separated (soft / auto) | ≥ 0.95 | "
        f"{report['flips']['separated']['dpr soft']:.3f} / "
        f"{report['flips']['separated']['dpr auto']:.3f} |",
        f"| {name} | free descriptions: soft NDCG@10 ÷ pre-filter told the value | ≥ 0.9 | "
        f"{description.get('soft ndcg ratio', math.nan):.3f} |",
        f"| {name} | free descriptions: interpret finds the value | ≥ 0.8 | "
        f"{report['interpret']['by_kind'].get('description request', math.nan):.3f} |",
        f"| {name} | interpret accuracy, held-out frames | ≥ 0.95 | "
        f"{report['interpret']['accuracy']:.3f} |",
        f"| {name} | interpret: refused values read as asked / asked read as refused | – | "
        f"{report['interpret'].get('refused_read_as_asked', math.nan):.3f} / "
        f"{report['interpret'].get('asked_read_as_refused', math.nan):.3f} |",
        f"| {name} | positive: soft NDCG@10 ÷ pre-filter | ≥ 1.05 | "
        f"{_ratio(pos, 'dpr soft', 'pre-filter'):.3f} |",
        f"| {name} | neutral ÷ backbone; empty prompt exact | ≥ 0.99; exact | "
        f"{_ratio(std, 'dpr neutral', 'backbone'):.3f}; "
        f"{'exact' if std['dpr'] == std['backbone'] else 'DIFFERS'} |",
        f"| {name} | stages 2a+2+3 (tower, alignment, steering) | ≤ 20 min | "
        f"{seconds['stages_2_3_total'] / 60:.1f} min (tower "
        f"{seconds['tower'] / 60:.1f}{', reused' if 'reused_from' in report['tower'] else ''})"
        " |",
    ]


def family_rows(name: str, report: dict[str, Any]) -> list[str]:
    """Issue 20's targets: each steered family after the first, and the cross-family compound
    (ranges: benches/range_reading.py, which measures every run on the same held-out forms)."""
    out = []
    for key, results in report.items():
        if not key.startswith("heldout_frames_"):
            continue
        family = key.removeprefix("heldout_frames_")
        protocols = results["protocols"]
        pos, neg = protocols["positive"]["methods"], protocols["negative"]["methods"]
        out += [
            f"| {name} | {family}, positive: soft NDCG@10 ÷ pre-filter; asked share (soft) | "
            f"≥ 1.05; ≥ 0.9 | {_ratio(pos, 'dpr soft', 'pre-filter'):.3f}; "
            f"{pos['dpr soft']['genre_share@10']:.3f} (pre-filter "
            f"{pos['pre-filter']['genre_share@10']:.3f}, backbone "
            f"{pos['backbone']['genre_share@10']:.3f}) |",
            f"| {name} | {family}, refused: forbidden share (soft / auto); auto ÷ hard filter | "
            f"≤ 0.02 | {neg['dpr soft']['genre_share@10']:.3f} / "
            f"{neg['dpr auto']['genre_share@10']:.3f}; "
            f"{_ratio(neg, 'dpr auto', 'hard filter'):.3f} (backbone "
            f"{neg['backbone']['genre_share@10']:.3f}) |"]
    if "heldout_cross_family" in report:
        block = report["heldout_cross_family"]["protocols"]["cross-family"]
        first, second = block["families"]
        m = block["methods"]
        out += [
            f"| {name} | cross-family compound ({first} + {second} asked, {first} refused): "
            f"asked shares / refused share (soft) | ≥ 0.7 each / ≤ 0.03 | "
            f"{m['dpr soft']['genre_share@10']:.3f}, {m['dpr soft']['also_share@10']:.3f} / "
            f"{m['dpr soft']['avoid_share@10']:.3f} (auto {m['dpr auto']['genre_share@10']:.3f}, "
            f"{m['dpr auto']['also_share@10']:.3f} / {m['dpr auto']['avoid_share@10']:.3f}) |",
            f"| {name} | cross-family compound: auto / hybrid NDCG@10 ÷ combined filter | ≥ 1.0 | "
            f"{_ratio(m, 'dpr auto', 'filter'):.3f} / {_ratio(m, 'dpr hybrid', 'filter'):.3f} "
            f"({block['cases']} cases) |"]
    return out


def genre_row(name: str, report: dict[str, Any], families: list[str]) -> str:
    """One row of the first family's held-out protocol figures (runs of any evaluation) of a
    run steering `families`."""
    protocols = report["heldout_frames"]["protocols"]
    pos, neg = protocols["positive"]["methods"], protocols["negative"]["methods"]
    com, std = protocols["compound"]["methods"], protocols["standard"]["methods"]
    return (f"| {name} | {'+'.join(families)} | {_ratio(pos, 'dpr soft', 'pre-filter'):.3f} | "
            f"{neg['dpr soft']['genre_share@10']:.3f} / {neg['dpr auto']['genre_share@10']:.3f} | "
            f"{_ratio(neg, 'dpr auto', 'hard filter'):.3f} / "
            f"{_ratio(neg, 'dpr hybrid', 'hard filter'):.3f} | "
            f"{com['dpr auto']['genre_share@10']:.3f} / {com['dpr auto']['avoid_share@10']:.3f} | "
            f"{_ratio(std, 'dpr neutral', 'backbone'):.3f} |")


GENRE_HEADER = [
    "| run | steered | positive: soft ÷ pre-filter | refused share soft / auto | "
    "refusals: auto / hybrid ÷ hard filter | compound auto: asked / refused share | "
    "neutral ÷ backbone |", "|---|---|---|---|---|---|---|"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--families", metavar="NAME",
                        help="write only the attribute-family rows (runs trained with "
                             "`--evaluate protocols` suffice) to benches/results/NAME.md")
    args = parser.parse_args()
    if args.families:
        lines = ["# Attribute families: targets and measurements", "",
                 "Held-out frames, test split, full ranking, k = 10, history masked. Produced by "
                 "`python benches/prompt_summary.py --families " + args.families + " "
                 + " ".join(args.runs) + "`.", "",
                 "| run | measure | target | measured |", "|---|---|---|---|"]
        genre = ["", "Genre (the first family) on the same held-out frames:", "", *GENRE_HEADER]
        for spec in args.runs:
            name, _, folder = spec.partition("=")
            report = json.loads((Path(folder) / "steering.json").read_text())
            steer = json.loads((Path(folder) / "bundle" / "dpr.json").read_text())["steer"]
            families = ([f["name"] for f in steer["families"]] if "families" in steer
                        else [steer["attribute"]])  # bundles before version 4
            lines += family_rows(name, report)
            genre.append(genre_row(name, report, families))
        lines += genre
        (RESULTS / f"{args.families}.md").write_text("\n".join(lines) + "\n")
        return
    lines = ["# Prompt understanding: targets and measurements", "",
             "Held-out frames of the grammar (python/dpr/prompts/grammar.json), test split, "
             "full ranking, k = 10, history masked. Each run's own tables: "
             "`steering-<name>-*.md`. Produced by `python benches/prompt_summary.py "
             + " ".join(args.runs) + "`.", "",
             "| run | measure | target | measured |", "|---|---|---|---|"]
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        run = Path(folder)
        report = json.loads((run / "steering.json").read_text())
        lines += rows(name, report) + family_rows(name, report)
        RESULTS.mkdir(parents=True, exist_ok=True)
        for path in run.iterdir():
            for report_kind in ("train-frames", "heldout-frames", "by-frame",
                                "heldout-frames-decade", "heldout-cross-family"):
                if path.stem.endswith(report_kind) and path.suffix in (".md", ".png"):
                    shutil.copyfile(path, RESULTS / f"steering-{name}-{report_kind}{path.suffix}")
    (RESULTS / "prompt-understanding.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
