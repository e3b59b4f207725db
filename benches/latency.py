"""Query latency through the Python API against the same model run eagerly in PyTorch.

Single thread, batch 1: warm prompt (vector cached on both sides) and cold prompt (the encoder
runs), for several history lengths; plus the query's floating-point work and this core's
single-thread sgemm peak, both measured in the same run, the fraction of peak achieved, and the
kernel level dpr ran (`DPR_KERNELS` caps it). Every timed query has a history of its own, so no
cache keyed by the history answers it: the backbone runs each time.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, publish, summary_us, table, timings

PROMPT = "something funny, but no romance"
REPROMPTS = ["no horror please", "an action movie with explosions", "a romantic comedy"]
"""The conversational case: new (already encoded) prompts on histories the cache holds."""
# Steering only on both sides: "auto" would add the intent read-out's hard exclusions, which
# the PyTorch reference does not apply.
MODE = "soft"


class TorchReference:
    """The bundle's model in PyTorch eager mode: backbone, steering, full scoring, top-k."""

    def __init__(self, bundle: Path, threads: int) -> None:
        import torch

        from dpr.bundle_schema import load_bundle_tensors
        from dpr.export import model_from_bundle

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, config = model_from_bundle(bundle)
        _, tensors = load_bundle_tensors(bundle)
        # A steered family's bundle matrix has exactly the steered values as columns, so the
        # steered block is the families' matrices side by side, in the model's order.
        blocks = [tensors[f"items.attributes.{family}"][1:] for family in self.model.families]
        attributes = torch.from_numpy(np.concatenate(blocks, axis=1)) if blocks else None
        with torch.inference_mode():
            self.items = self.model.item_vectors(attributes)
        self.max_len = int(config["backbone"]["max_len"])

    def prompt_input(self, embedding: Any) -> Any:
        """What the steering reads for sentence embeddings: with an intent head, the embedding
        followed by its read-out's probabilities."""
        with self.torch.inference_mode():
            return self.model.prompt_input(embedding)

    def query(self, rows: list[int], prompt: Any, k: int) -> Any:
        """Top-`k` rows for a history of rows and a prompt input (`prompt_input`)."""
        torch = self.torch
        from dpr.models.backbone import user_vectors

        recent = rows[-self.max_len:]
        with torch.inference_mode():
            items = torch.tensor([recent], dtype=torch.int64)
            h = user_vectors(self.model.backbone, items, torch.tensor([len(recent)]))
            steered = self.model.steering(h, prompt, 1.0).steered[0]
            scores = self.items @ steered
            scores[torch.tensor(rows) - 1] = float("-inf")
            return torch.topk(scores, k).indices + 1


def query_flops(config: dict[str, Any], history: int) -> dict[str, int]:
    """Floating-point operations of one query's model arithmetic, counted dense (prompt
    prepared and cached): backbone forward, the steering's per-query part, and scoring every
    item. dpr skips the products of zero inputs in the layers a ReLU feeds (SASRec's FFN
    output, the experts' output layers), so it executes fewer."""
    b, s = config["backbone"], config["steer"]
    d, n = int(config["dim"]), min(history, int(b["max_len"]))
    width = d + int(s["attribute_dim"])
    if b["kind"] == "sasrec":
        f = int(b["ffn_dim"])
        full = 4 * n * d * d * 2 + n * (n + 1) // 2 * d * 4 + 2 * n * d * f * 2
        # The last block attends from the last row only, without projecting every row's key
        # and value: q, per head W_kᵀq and W_v(Σ w_j x_j) (4·d² in all), scores and the
        # weighted sum over the n rows (4·n·d per head), the output layer and the FFN.
        heads = int(b["num_heads"])
        last = 8 * d * d + 4 * heads * n * d + 2 * d * f * 2
        backbone = (int(b["num_blocks"]) - 1) * full + last
    else:
        backbone = int(b.get("num_layers", 1)) * n * 3 * 2 * d * d * 2
    experts = int(s["positive_experts"]) + int(s["negative_experts"])
    hidden = int(s["expert_hidden"])
    steering = (int(s["router_hidden"]) * (d + experts) * 2
                + experts * (hidden * 2 * d * 2 + width * hidden * 2))
    scoring = int(config["num_items"]) * width * 2
    return {"backbone": backbone, "steering": steering, "scoring": scoring,
            "total": backbone + steering + scoring}


def sgemm_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Single-thread float32 matrix-multiply throughput (PyTorch's BLAS), best of `repeats`."""
    import time

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def run(bundle: Path, lengths: list[int], queries: int, cold_queries: int, torch_threads: int,
        seed: int) -> dict[str, Any]:
    import json

    import torch

    import dpr
    from dpr.encoder import PromptEncoder

    rec = dpr.Recommender.load(bundle)
    # Cold queries run without the history cache, as PyTorch does: the encoder and the backbone.
    uncached = dpr.Recommender.load(bundle, history_cache=0)
    config = json.loads((bundle / "dpr.json").read_text())
    reference = TorchReference(bundle, torch_threads)
    # The bundle's own (tuned) prompt encoder, run by sentence-transformers.
    encoder = PromptEncoder(bundle / config["prompt_encoder"]["dir"])
    ids = list(rec._engine.item_ids())
    rng = np.random.default_rng(seed)
    warm_prompt = reference.prompt_input(torch.from_numpy(encoder.encode([PROMPT])))
    for prompt in [PROMPT, *REPROMPTS]:
        rec.query([ids[0]], prompt, mode=MODE)
    results: dict[str, Any] = {"bundle": str(bundle), "torch_threads": torch_threads,
                               "kernel_level": dpr._core.KERNEL_LEVEL, "lengths": {},
                               **machine()}
    for length in lengths:
        results["lengths"][str(length)] = _one_length(
            rec, uncached, reference, encoder, config, ids, rng, length, warm_prompt, queries,
            cold_queries)
    results["sgemm_peak_gflops_1thread"] = sgemm_peak_gflops()
    for entry in results["lengths"].values():
        achieved = entry["flops"]["total"] / (entry["dpr_warm"]["p50_us"] * 1e-6) / 1e9
        entry["achieved_gflops_p50"] = achieved
        entry["fraction_of_peak"] = achieved / results["sgemm_peak_gflops_1thread"]
    return results


def _one_length(rec: Any, uncached: Any, reference: TorchReference, encoder: Any,
                config: dict[str, Any], ids: list[Any], rng: np.random.Generator, length: int,
                warm_prompt: Any, queries: int, cold_queries: int) -> dict[str, Any]:
    import torch

    pool = queries + 20  # one history per timed or warm-up call
    histories = [list(rng.choice(len(ids), size=min(length, len(ids) - 20), replace=False) + 1)
                 for _ in range(pool)]
    external = [[ids[r - 1] for r in h] for h in histories]
    same = sum(
        [h.item_id for h in rec.query(external[i], PROMPT, k=10, mode=MODE)]
        == [ids[r - 1] for r in reference.query(histories[i], warm_prompt, 10).tolist()]
        for i in range(16))
    dpr_warm = timings(_fresh(pool, lambda j: rec.query(external[j], PROMPT, k=10, mode=MODE)),
                       queries)
    torch_warm = timings(_fresh(pool, lambda j: reference.query(histories[j], warm_prompt, 10)),
                         queries)
    # Every history of the pool is in the history cache now: another prompt on it skips the
    # backbone.
    before = rec.history_cache_stats()
    dpr_reprompt = timings(
        _fresh(pool, lambda j: rec.query(external[j], REPROMPTS[j % len(REPROMPTS)], k=10,
                                         mode=MODE)), queries)
    after = rec.history_cache_stats()
    dpr_cold = timings(
        lambda i: uncached.query(external[i], f"{PROMPT} #{length}-{i}", k=10, mode=MODE),
        cold_queries, warmup=0)

    def torch_cold_query(i: int) -> Any:
        prompt = torch.from_numpy(encoder.encode([f"{PROMPT} ~{length}-{i}"]))
        return reference.query(histories[i], reference.prompt_input(prompt), 10)

    torch_cold = timings(torch_cold_query, cold_queries, warmup=0)
    return {"dpr_warm": summary_us(dpr_warm), "torch_warm": summary_us(torch_warm),
            "dpr_reprompt": summary_us(dpr_reprompt),
            "reprompt_cache_hits": (after.hits - before.hits) / max(
                after.hits + after.misses - before.hits - before.misses, 1),
            "dpr_cold": summary_us(dpr_cold), "torch_cold": summary_us(torch_cold),
            "warm_speedup_p50": float(np.median(torch_warm) / np.median(dpr_warm)),
            "cold_speedup_p50": float(np.median(torch_cold) / np.median(dpr_cold)),
            "same_top10_of_16": int(same), "flops": query_flops(config, length)}


def _fresh(pool: int, call: Callable[[int], object]) -> Callable[[int], object]:
    """`call` on history 0, 1, 2, … of a pool of `pool`, one per call, whatever index the timer
    passes (its warm-up calls restart at 0)."""
    counter = itertools.count()
    return lambda _: call(next(counter) % pool)


def to_markdown(r: dict[str, Any], command: str) -> str:
    rows = []
    for length, e in r["lengths"].items():
        rows.append([length, f"{e['dpr_warm']['p50_us']:.0f} / {e['dpr_warm']['p99_us']:.0f}",
                     f"{e['torch_warm']['p50_us']:.0f} / {e['torch_warm']['p99_us']:.0f}",
                     f"{e['warm_speedup_p50']:.1f}×",
                     f"{e['dpr_reprompt']['p50_us']:.0f} / {e['dpr_reprompt']['p99_us']:.0f}",
                     f"{e['dpr_cold']['p50_us'] / 1e3:.1f}",
                     f"{e['torch_cold']['p50_us'] / 1e3:.1f}",
                     f"{e['cold_speedup_p50']:.2f}×", f"{e['flops']['total'] / 1e6:.2f}",
                     f"{e['achieved_gflops_p50']:.1f} ({100 * e['fraction_of_peak']:.0f}%)",
                     f"{e['same_top10_of_16']}/16"])
    return (
        "# Query latency: dpr (Rust, Python API) vs PyTorch eager, batch 1, one thread\n\n"
        + table(["history", "dpr warm p50/p99 µs", "PyTorch warm p50/p99 µs", "warm speed-up",
                 "dpr re-prompt p50/p99 µs", "dpr cold p50 ms", "PyTorch cold p50 ms",
                 "cold speed-up", "MFLOP/query",
                 "dpr GFLOP/s at p50 (of peak)", "same top-10"], rows)
        + f"\nSingle-thread sgemm peak (PyTorch BLAS, 1024³, best of 5, same run): "
          f"{r['sgemm_peak_gflops_1thread']:.1f} GFLOP/s. dpr kernels: {r['kernel_level']}. "
          f"PyTorch ran on {r['torch_threads']} thread(s). Every timed query has its own "
          f"history; mode \"{MODE}\" (steering, no filters) on both sides. "
          f"Warm = the prompt's vector cached on both sides; cold = a new prompt per "
          f"query (the encoder runs: dpr's BERT forward, sentence-transformers in PyTorch; "
          f"dpr without its history cache). Re-prompt = another (already encoded) prompt on a "
          f"history the history cache holds, the conversational case (history-cache hits: "
          f"{min(e['reprompt_cache_hits'] for e in r['lengths'].values()):.0%} of re-prompts "
          f"at least).\n"
          f"MFLOP/query counts the model's arithmetic, dense: backbone, the per-query part of "
          f"the steering (the prompt-only part is computed once per prompt), and scoring every "
          f"item. dpr executes less: it skips the products of zero inputs in the layers a ReLU "
          f"feeds (SASRec's FFN output, the experts' output layers) and scores items on int8 "
          f"codes where the CPU has VNNI, so GFLOP/s here is the model's arithmetic per second.\n"
          f"\"Same top-10\" compares the two paths end to end, each with its own prompt encoder "
          f"(the bundle stores its copy in float16, so near-ties may swap).\n\n"
        + footer(r, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--lengths", default="10,50,200")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--cold-queries", type=int, default=40)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--name", default="latency")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import os
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    results = run(args.bundle, [int(x) for x in args.lengths.split(",")], args.queries,
                  args.cold_queries, args.torch_threads, args.seed)
    return publish("latency", argv, results,
                   lambda c: to_markdown(results, c), args.name, args.out)


if __name__ == "__main__":
    sys.exit(main())
