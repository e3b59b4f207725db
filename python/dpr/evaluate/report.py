"""Steering results as a markdown table per protocol and a bar chart (PNG)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import IO, Any

from dpr.atomic import atomic_write
from dpr.evaluate.protocols import BASELINES, ratios

_NOTES = {
    "standard": "Empty prompt (method name alone) and a neutral prompt; should match the backbone.",
    "positive": "The prompt asks for a {family} value of the held-out item; genre_share = "
                "share of the top-k with that value (higher is better).",
    "negative": "The prompt forbids a {family} value the held-out item lacks; genre_share = "
                "share of the top-k with the forbidden value (lower is better).",
    "compound": "The prompt asks for one {family} value and forbids another; genre_share = "
                "share with the asked value (higher is better), avoid_share = share with the "
                "forbidden one (lower is better).",
    "cross-family": "The prompt asks for a value of each of two families and forbids one of the "
                    "first (evaluate/cross_family.py); genre_share = share in the first asked "
                    "value, also_share = in the second (higher is better), avoid_share = in the "
                    "forbidden one (lower is better); filter = both required, the forbidden "
                    "one removed.",
    "range positive": "The prompt asks for a range of values holding the held-out item's "
                      "(\"older than 1980\", \"a recent film\"; evaluate/ranges.py); "
                      "genre_share = share of the top-k in the range (higher is better); "
                      "pre-filter = only the range.",
    "range negative": "The prompt refuses a range of values holding none of the held-out item's "
                      "(\"nothing older than the 80s\"); genre_share = share of the top-k in "
                      "the range (lower is better); hard filter = the range removed.",
}


def write_steering_report(results: dict[str, Any], out_dir: str | os.PathLike, title: str
                          ) -> tuple[Path, Path]:
    """Write `<slug of title>.md` and `.png` into `out_dir` (created if needed); return both paths.

    The markdown has one table per protocol (methods x metrics, plus NDCG ratios against each
    baseline present); the PNG shows NDCG@k per method per protocol and, below, the genre
    shares. Files are written atomically (temp file + rename).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "steering"
    markdown_path, png_path = out / f"{slug}.md", out / f"{slug}.png"
    text = steering_markdown(results, title)
    atomic_write(markdown_path, lambda f: f.write(text), mode="w")
    atomic_write(png_path, lambda f: _plot(results, title, f), mode="wb")
    return markdown_path, png_path


def steering_markdown(results: dict[str, Any], title: str) -> str:
    """The markdown report of `evaluate_steering` results."""
    k = results["k"]
    lines = [f"# {title}", "",
             f"Full ranking, k = {k}; history {'masked' if results['history_masked'] else 'kept'}"
             f"; post-filter depth {results['post_filter_depth']}"
             + (f"; attribute {results['attribute']!r}" if "attribute" in results else "")
             + (f"; seed {results['seed']}" if "seed" in results else "") + ".", ""]
    for protocol, block in results["protocols"].items():
        lines += [f"## {protocol}", "", f"{block['cases']} cases, {block['skipped']} skipped. "
                  + _NOTES.get(protocol, "").format(family=results.get("attribute", "genre")),
                  ""]
        if block["examples"]:
            lines += ["Example prompts:", ""]
            lines += [f"- {_example_text(e)}" for e in block["examples"]]
            lines.append("")
        if "interpret" in block:
            lines += [f"Intent read-out on these prompts: exact {block['interpret']:.3f}, "
                      f"overlap {block.get('interpret_overlap', float('nan')):.3f} (mean "
                      "Jaccard of the read and the labelled value sets).", ""]
        methods = block["methods"]
        if not methods:
            lines += ["(no cases)", ""]
            continue
        lines += [*_table(results, protocol, methods, k), ""]
    return "\n".join(lines)


def _example_text(example: Any) -> str:
    """One example prompt, with its intent when recorded."""
    if not isinstance(example, dict):
        return f"“{example}”"
    # a negative intent carries its forbidden genre in `genre` (dpr.prompts' convention)
    ask, avoid = example.get("value"), example.get("avoid")
    if example.get("polarity") == "negative":
        ask, avoid = None, ask
    intent = ", ".join(f"{word} {value}" for word, value in (("asks", ask), ("forbids", avoid))
                       if value)
    return f"“{example['prompt']}”" + (f" ({intent})" if intent else "")


def _table(results: dict[str, Any], protocol: str, methods: dict[str, dict[str, float]], k: int
           ) -> list[str]:
    """Markdown table rows: one per method; metric columns, then NDCG ratios to the baselines."""
    metrics: list[str] = []
    for values in methods.values():
        metrics += [m for m in values if m not in metrics]
    ndcg = f"ndcg@{k}"
    baselines = [b for b in BASELINES if b in methods and ndcg in methods[b]]
    header = ["method", *metrics, *(f"{ndcg} ÷ {b}" for b in baselines)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, values in methods.items():
        cells = [method, *(_number(values.get(m), 4) for m in metrics)]
        cells += [_number(ratios(results, protocol, method, b, ndcg), 2) for b in baselines]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "—"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def _plot(results: dict[str, Any], title: str, file: IO[bytes]) -> None:
    """Grouped bars: NDCG@k per method per protocol (top), top-k genre shares (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # training extra: import late
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = results["k"]
    ndcg_groups, share_groups = [], []
    for protocol, block in results["protocols"].items():
        methods = block["methods"]
        if not methods:
            continue
        ndcg_groups.append((protocol, {m: v[f"ndcg@{k}"] for m, v in methods.items()}))
        for metric, label in ((f"genre_share@{k}", protocol), (f"avoid_share@{k}",
                                                                 f"{protocol} (avoid)")):
            shares = {m: v[metric] for m, v in methods.items() if metric in v}
            if shares:
                share_groups.append((label, shares))
    seen = list(dict.fromkeys(m for _, group in ndcg_groups for m in group))
    names = [b for b in BASELINES if b in seen] + [m for m in seen if m not in BASELINES]
    widest = max((len(group) for _, group in ndcg_groups), default=1)
    figure = Figure(figsize=(min(16.0, 3.0 + 0.3 * widest * max(len(ndcg_groups), 1)), 8.0))
    FigureCanvasAgg(figure)
    colour = _colours(names)
    top, bottom = figure.subplots(2, 1)
    _bars(top, ndcg_groups, colour)
    top.set_ylabel(f"NDCG@{k}")
    top.set_title(title)
    _bars(bottom, share_groups, colour)
    bottom.set_ylabel(f"share of top-{k} in the value")
    bottom.set_ylim(0.0, 1.05)
    figure.legend(handles=[Patch(color=colour[n], label=n) for n in names], loc="center right",
                  fontsize="small", frameon=False)
    figure.subplots_adjust(right=0.78, hspace=0.3)
    figure.savefig(file, format="png", dpi=120)


def _colours(names: list[str]) -> dict[str, Any]:
    """A distinct colour per method: baselines in distinct greys, every other method (each
    steerer's soft, hybrid, auto, neutral ... rows alike) its own hue."""
    from matplotlib import colormaps

    greys = colormaps["Greys"]
    hues = [colormaps["tab10"](i) for i in range(10) if i != 7]  # tab10's 7 is grey
    hues += [colormaps["Dark2"](i) for i in range(8)]
    out: dict[str, Any] = {}
    others = [n for n in names if n not in BASELINES]
    for name in names:
        if name in BASELINES:
            out[name] = greys(0.25 + 0.13 * BASELINES.index(name))
        else:
            out[name] = hues[others.index(name) % len(hues)]
    return out


def _bars(axes: Any, groups: list[tuple[str, dict[str, float]]], colour: dict[str, Any]) -> None:
    """One cluster of bars per group, one bar per method present in it."""
    width = 0.8 / max((len(g) for _, g in groups), default=1)
    for x, (_, values) in enumerate(groups):
        offset = x - 0.4 + width / 2
        for i, (method, value) in enumerate(values.items()):
            height = 0.0 if math.isnan(value) else value
            axes.bar(offset + i * width, height, width=width * 0.95, color=colour[method])
    axes.set_xticks(range(len(groups)), [label for label, _ in groups])
    axes.grid(axis="y", alpha=0.3)
