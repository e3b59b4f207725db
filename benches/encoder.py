"""Cold prompt encoding: dpr's Rust encoder against sentence-transformers, side by side.

One thread each, batch 1, every prompt new (dpr's cache is off): a few hundred distinct
conversational sentences of 5 to 30 tokens, built from the bundle's genres and titles. Each
round times every sentence on both sides, alternating dpr and PyTorch sentence by sentence;
the table gives p50/p99 over all rounds, the per-round p50 ratios, and the largest deviation
between the two sides' vectors (1 − cosine), on the bundle's own `prompt_encoder/` weights.
`--baseline-core` adds a third column in the same loop: another build of `dpr._core` (e.g. an
older commit's extension file), to compare two dpr builds side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, publish, table

OPENERS = ["", "hmm, ", "ok so ", "tonight ", "honestly, ", "for a date night, ",
           "my kids are here, so ", "after a long day at work "]
ASKS = ["something {g}", "a {g} movie", "I want a {g} film", "show me {g}, nothing too long",
        "any good {g} from the nineties?", "more like {t}", "something like {t} but {g}",
        "I loved {t}, what else is there", "a {g} one, maybe with a twist",
        "no {g} please", "anything but {g}", "{g} or {h}, not {i}"]
CLOSERS = ["", ".", "!", " please", ", thanks", " that my parents would also enjoy",
           " with a great soundtrack and strong characters",
           " - I have seen all the classics already, surprise me"]


def sentences(bundle: Path, count: int, tokenizer: Any, seed: int,
              lengths: tuple[int, int] = (5, 30)) -> list[str]:
    """`count` distinct prompts whose token counts ([CLS] and [SEP] included) lie in `lengths`."""
    items = json.loads((bundle / "items.json").read_text())
    genres = [g.lower() for g in items["attributes"]["genre"]["values"]]
    titles = [t.rsplit(" (", 1)[0] for t in items["titles"]]
    rng = np.random.default_rng(seed)
    found: dict[str, None] = {}
    for _ in range(100 * count):
        if len(found) == count:
            break
        g, h, i = rng.choice(genres, 3, replace=False)
        ask = str(rng.choice(ASKS)).format(g=g, h=h, i=i, t=str(rng.choice(titles)))
        text = f"{rng.choice(OPENERS)}{ask}{rng.choice(CLOSERS)}"
        if lengths[0] <= len(tokenizer(text)["input_ids"]) <= lengths[1]:
            found.setdefault(text)
    return list(found)


def load_core(path: Path) -> Any:
    """A `dpr._core` extension file loaded under another package name (its module is `_core`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpr_baseline._core", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bundle: Path, count: int, rounds: int, torch_threads: int, seed: int,
        baseline_core: Path | None = None) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from dpr import _core

    folder = bundle / "prompt_encoder"
    torch.set_num_threads(torch_threads)
    # float32 as dpr computes (transformers would otherwise keep the stored float16).
    reference = SentenceTransformer(str(folder), device="cpu",
                                    model_kwargs={"dtype": torch.float32})
    reference.eval()
    dpr_encoder = _core.PromptEncoder(str(folder), reference.max_seq_length, 0)
    baseline = (load_core(baseline_core).PromptEncoder(str(folder), reference.max_seq_length, 0)
                if baseline_core else None)
    texts = sentences(bundle, count, reference.tokenizer, seed)
    tokens = np.array([len(reference.tokenizer(t)["input_ids"]) for t in texts])

    def torch_encode(text: str) -> np.ndarray:
        with torch.inference_mode():
            return reference.encode(text, normalize_embeddings=True, convert_to_numpy=True)

    for text in texts[:10]:  # warm-up: first-call setup on both sides
        dpr_encoder.encode(text)
        torch_encode(text)
        if baseline:
            baseline.encode(text)
    ours, theirs = np.empty((rounds, len(texts))), np.empty((rounds, len(texts)))
    older = np.full((rounds, len(texts)), np.nan)
    cosines = np.empty(len(texts))
    for r in range(rounds):
        for i, text in enumerate(texts):
            start = time.perf_counter()
            a = dpr_encoder.encode(text)
            ours[r, i] = time.perf_counter() - start
            start = time.perf_counter()
            b = torch_encode(text)
            theirs[r, i] = time.perf_counter() - start
            if baseline:
                start = time.perf_counter()
                baseline.encode(text)
                older[r, i] = time.perf_counter() - start
            if r == 0:
                cosines[i] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    per_round = [float(np.median(theirs[r]) / np.median(ours[r])) for r in range(rounds)]

    def ms(samples: np.ndarray) -> dict[str, float]:
        return {"p50_ms": float(np.percentile(samples, 50) * 1e3),
                "p99_ms": float(np.percentile(samples, 99) * 1e3)}

    buckets = {}
    for low, high in [(5, 10), (11, 20), (21, 30)]:
        keep = (tokens >= low) & (tokens <= high)
        if keep.any():
            buckets[f"{low}-{high}"] = {"sentences": int(keep.sum()), "dpr": ms(ours[:, keep]),
                                        "torch": ms(theirs[:, keep])}
    return {**machine(), "sentences": len(texts), "rounds": rounds,
            "torch_threads": torch_threads, "tokens_p50": float(np.median(tokens)),
            "dpr": ms(ours), "torch": ms(theirs),
            "speedup_p50": float(np.median(theirs) / np.median(ours)),
            "speedup_per_round": per_round,
            "max_one_minus_cosine": float(1.0 - cosines.min()), "buckets": buckets,
            "baseline": ({"core": str(baseline_core), **ms(older),
                          "speedup_p50": float(np.median(older) / np.median(ours))}
                         if baseline else None),
            "torch_version": torch.__version__}


def to_markdown(r: dict[str, Any], command: str) -> str:
    rows = [["all", r["sentences"], f"{r['dpr']['p50_ms']:.2f} / {r['dpr']['p99_ms']:.2f}",
             f"{r['torch']['p50_ms']:.2f} / {r['torch']['p99_ms']:.2f}",
             f"{r['torch']['p50_ms'] / r['dpr']['p50_ms']:.2f}×"]]
    for name, b in r["buckets"].items():
        rows.append([name, b["sentences"], f"{b['dpr']['p50_ms']:.2f} / {b['dpr']['p99_ms']:.2f}",
                     f"{b['torch']['p50_ms']:.2f} / {b['torch']['p99_ms']:.2f}",
                     f"{b['torch']['p50_ms'] / b['dpr']['p50_ms']:.2f}×"])
    rounds = ", ".join(f"{x:.2f}×" for x in r["speedup_per_round"])
    return ("# Cold prompt encoding: dpr (Rust) vs sentence-transformers (PyTorch), one thread\n\n"
            + table(["tokens", "sentences", "dpr p50 / p99 ms", "PyTorch p50 / p99 ms",
                     "speed-up at p50"], rows)
            + f"\nEvery call is a new prompt (dpr's cache off), batch 1, {r['rounds']} rounds "
            f"alternating the two sentence by sentence; median tokens {r['tokens_p50']:.0f} "
            f"([CLS] and [SEP] included). Speed-up per round: {rounds}. PyTorch "
            f"{r['torch_version']} on {r['torch_threads']} thread(s), `SentenceTransformer.encode`"
            f" (its tokenizer included, as dpr's is). Largest 1 − cosine between the two "
            f"sides' vectors: {r['max_one_minus_cosine']:.1e}.\n\n" + baseline_line(r)
            + footer(r, command))


def baseline_line(r: dict[str, Any]) -> str:
    """The `--baseline-core` figures, if any."""
    b = r.get("baseline")
    if not b:
        return ""
    return (f"Baseline dpr build `{b['core']}` in the same loop: p50 / p99 {b['p50_ms']:.2f} / "
            f"{b['p99_ms']:.2f} ms; this build is {b['speedup_p50']:.2f}× faster at p50.\n\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--name", default="encoder")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-core", type=Path, default=None,
                        help="another build's _core extension file, timed in the same loop")
    args = parser.parse_args(argv)
    # As benches/latency.py: builds whose encoder used rayon's pool get one thread, like PyTorch.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    results = run(args.bundle, args.sentences, args.rounds, args.torch_threads, args.seed,
                  args.baseline_core)
    return publish("encoder", argv, results, lambda c: to_markdown(results, c), args.name,
                   args.out)


if __name__ == "__main__":
    sys.exit(main())
