"""The per-frame steering report: a markdown table per frame kind and a PNG."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import IO, Any

from dpr.atomic import atomic_write
from dpr.evaluate.report import _colours

_FILTER = {"positive": "pre-filter", "negative": "hard filter", "compound": "filter"}
_KINDS = ("refusal", "request", "compound", "description", "description refusal")


def summarise_frames(frames: dict[str, Any], steerer: str = "dpr", k: int = 10
                     ) -> dict[str, dict[str, float]]:
    """Per frame kind: the mean and worst forbidden share, the mean asked share and the mean
    NDCG@k ratio against the kind's filter, for the steerer's soft, hybrid and auto modes."""
    out: dict[str, dict[str, float]] = {}
    frames = _scored(frames)
    for kind in _KINDS:
        blocks = [b for b in frames.values() if b["kind"] == kind]
        if not blocks:
            continue
        row: dict[str, float] = {"frames": len(blocks)}
        for mode in ("soft", "hybrid", "auto"):
            method = f"{steerer} {mode}"
            if method not in blocks[0]["methods"]:
                continue
            forbidden = [_forbidden(b, method, k) for b in blocks]
            forbidden = [f for f in forbidden if not math.isnan(f)]
            if forbidden:
                row[f"{mode} forbidden mean"] = sum(forbidden) / len(forbidden)
                row[f"{mode} forbidden max"] = max(forbidden)
            asked = [b["methods"][method][f"genre_share@{k}"] for b in blocks
                     if b["protocol"] in ("positive", "compound")]
            if asked:
                row[f"{mode} asked mean"] = sum(asked) / len(asked)
            ratios = [r for r in (_ratio(b, method, k) for b in blocks) if not math.isnan(r)]
            if ratios:
                row[f"{mode} ndcg ratio"] = sum(ratios) / len(ratios)
        out[kind] = row
    return out


def _forbidden(block: dict[str, Any], method: str, k: int) -> float:
    m = block["methods"][method]
    if block["protocol"] == "negative":
        return m[f"genre_share@{k}"]
    if block["protocol"] == "compound":
        return m[f"avoid_share@{k}"]
    return math.nan


def _ratio(block: dict[str, Any], method: str, k: int) -> float:
    methods = block["methods"]
    if method not in methods or _FILTER[block["protocol"]] not in methods:
        return math.nan
    base = methods[_FILTER[block["protocol"]]][f"ndcg@{k}"]
    return methods[method][f"ndcg@{k}"] / base if base else math.nan


def _scored(frames: dict[str, Any]) -> dict[str, Any]:
    """The frames that had cases to score."""
    return {f: b for f, b in frames.items() if b["cases"] and b["methods"]}


def frames_markdown(frames: dict[str, Any], flips: dict[str, Any] | None,
                    interpret: dict[str, Any] | None, title: str, steerer: str = "dpr",
                    k: int = 10) -> str:
    lines = [f"# {title}", "",
             f"Each frame scored alone over the test cases (k = {k}, history masked). "
             "forbidden = share of the top-k in the refused value (lower is better); "
             "asked = share in the asked value; ratio = NDCG@k over the kind's filter "
             "(pre-filter for requests and descriptions, hard filter for refusals, the "
             "combined filter for compounds).", "", "## Summary by kind", "",
             "| kind | frames | soft forbidden mean / max | hybrid forbidden mean / max | "
             "auto forbidden mean / max | soft asked | auto asked | soft ratio | hybrid ratio "
             "| auto ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, row in summarise_frames(frames, steerer, k).items():
        def pair(mode: str, row: dict[str, float] = row) -> str:
            if f"{mode} forbidden mean" not in row:
                return "–"
            return f"{row[f'{mode} forbidden mean']:.3f} / {row[f'{mode} forbidden max']:.3f}"

        def one(key: str, row: dict[str, float] = row) -> str:
            return f"{row[key]:.3f}" if key in row else "–"

        lines.append(f"| {kind} | {row['frames']:.0f} | {pair('soft')} | {pair('hybrid')} | "
                     f"{pair('auto')} | {one('soft asked mean')} | {one('auto asked mean')} | "
                     f"{one('soft ndcg ratio')} | {one('hybrid ndcg ratio')} | "
                     f"{one('auto ndcg ratio')} |")
    lines += ["", "## Per frame", "",
              "| frame | kind | cases | example | backbone forbidden | soft forbidden | "
              "auto forbidden | soft asked | auto asked | filter NDCG | soft ratio | "
              "hybrid ratio | auto ratio |", "|---" * 13 + "|"]
    for frame_id, block in _scored(frames).items():
        methods = block["methods"]
        example = block["examples"][0]["prompt"] if block["examples"] else ""

        def share(method: str, asked: bool, block: dict[str, Any] = block) -> str:
            if method not in block["methods"]:
                return "–"
            if asked:
                if block["protocol"] == "negative":
                    return "–"
                return f"{block['methods'][method][f'genre_share@{k}']:.3f}"
            value = _forbidden(block, method, k)
            return "–" if math.isnan(value) else f"{value:.3f}"

        def ratio(method: str, block: dict[str, Any] = block) -> str:
            return f"{_ratio(block, method, k):.3f}" if method in block["methods"] else "–"

        base = methods[_FILTER[block["protocol"]]][f"ndcg@{k}"]
        lines.append(f"| {frame_id} | {block['kind']} | {block['cases']} | "
                     f"{example.replace('|', '/')} | {share('backbone', False)} | "
                     f"{share(f'{steerer} soft', False)} | {share(f'{steerer} auto', False)} | "
                     f"{share(f'{steerer} soft', True)} | {share(f'{steerer} auto', True)} | "
                     f"{base:.4f} | {ratio(f'{steerer} soft')} | {ratio(f'{steerer} hybrid')} | "
                     f"{ratio(f'{steerer} auto')} |")
    if flips:
        lines += ["", "## Polarity flips", "",
                  f"{flips['cases']} cases; a case is separated when the asked value's top-{k} "
                  f"share differs by >= {flips['margin']} between the request and the refusal.",
                  "", "| request / refusal | " + " | ".join(flips["separated"]) + " |",
                  "|---|" + "---|" * len(flips["separated"])]
        for pair, values in flips["pairs"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{values[m]:.3f}"
                                                     for m in flips["separated"]) + " |")
        lines.append("| **all** | " + " | ".join(f"**{v:.3f}**"
                                                 for v in flips["separated"].values()) + " |")
    if interpret:
        lines += ["", "## interpret", "",
                  f"{interpret['prompts']} generated {interpret['split']} prompts; accuracy "
                  f"(the detected value-and-polarity set equals the labels, confidence >= "
                  f"{interpret['detect_threshold']}): **{interpret['accuracy']:.3f}**; refused "
                  f"set only: {interpret['refusal_set_accuracy']:.3f}; refused values read as "
                  f"asked: {interpret.get('refused_read_as_asked', float('nan')):.3f}, asked "
                  f"values read as refused: "
                  f"{interpret.get('asked_read_as_refused', float('nan')):.3f}.", "",
                  "| kind | accuracy |", "|---|---|"]
        lines += [f"| {kind} | {acc:.3f} |" for kind, acc in interpret["by_kind"].items()]
        worst = sorted(interpret["by_frame"].items(), key=lambda kv: kv[1])[:8]
        lines += ["", "Lowest frames: " + ", ".join(f"{f} {a:.2f}" for f, a in worst)]
    return "\n".join(lines) + "\n"


def write_frames_report(frames: dict[str, Any], flips: dict[str, Any] | None,
                        interpret: dict[str, Any] | None, out_dir: str | os.PathLike,
                        title: str, steerer: str = "dpr") -> tuple[Path, Path]:
    """`<slug>.md` and `<slug>.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "frames"
    md, png = out / f"{slug}.md", out / f"{slug}.png"
    text = frames_markdown(frames, flips, interpret, title, steerer)
    atomic_write(md, lambda f: f.write(text), mode="w")
    atomic_write(png, lambda f: _plot(frames, title, steerer, f), mode="wb")
    return md, png


def _plot(frames: dict[str, Any], title: str, steerer: str, file: IO[bytes], k: int = 10
          ) -> None:
    """Top: forbidden share per refusal/compound frame; bottom: NDCG ratio to the filter per
    frame; one colour and legend entry per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = _scored(frames)
    refusing = [f for f, b in frames.items() if b["protocol"] in ("negative", "compound")]
    methods = ["backbone", f"{steerer} soft", f"{steerer} hybrid", f"{steerer} auto"]
    colour = _colours(methods)
    figure = Figure(figsize=(max(8.0, 0.45 * len(frames) + 3), 9.0))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [_forbidden(frames[f], method, k) if method in frames[f]["methods"] else 0.0
                  for f in refusing]
        top.bar([x - 0.4 + width * (i + 0.5) for x in range(len(refusing))],
                [0.0 if math.isnan(v) else v for v in values], width=width * 0.95,
                color=colour[method], label=method)
    top.set_xticks(range(len(refusing)), refusing, rotation=60, ha="right", fontsize="small")
    top.set_ylabel(f"forbidden share of top-{k}")
    top.set_title(title)
    top.legend(fontsize="small")
    names = list(frames)
    for i, method in enumerate(methods[1:]):
        values = [_ratio(frames[f], method, k) if method in frames[f]["methods"] else 0.0
                  for f in names]
        bottom.bar([x - 0.4 + (0.8 / 3) * (i + 0.5) for x in range(len(names))],
                   [0.0 if math.isnan(v) else v for v in values], width=0.8 / 3 * 0.95,
                   color=colour[method], label=method)
    bottom.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    bottom.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize="small")
    bottom.set_ylabel(f"NDCG@{k} / the filter's")
    bottom.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(file, format="png", dpi=110)
