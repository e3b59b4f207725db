"""What a wider SASRec feed-forward layer costs per training step, side by side in one run.

Times the stage-1 step (forward, full-softmax CE with seen items left out and label smoothing,
backward, AdamW) on the same real batches for each width, the widths interleaved in every
repeat so that the shared machine's drift hits them alike. Prints medians and the ratio to the
first width.

    python benches/ffn_width_cost.py --data ../shared/data/ml-1m --format movielens-1m
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dpr.data import load_dataset
from dpr.models import SASRec
from dpr.train.backbone import cross_entropy_loss
from dpr.train.batches import bucketed_batches, next_item_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--widths", default="64,256", help="FFN widths, the first is the base")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    dataset = load_dataset(args.data, args.format)
    split, num_items = dataset.split(), dataset.num_items
    widths = [int(w) for w in args.widths.split(",")]
    rng = np.random.default_rng(0)
    users = np.flatnonzero([len(s) >= 2 for s in split.train])
    lengths = np.fromiter((min(len(s), 201) for s in split.train), dtype=np.int64)
    batches = [next_item_batch([split.train[u] for u in b], 200)
               for b in bucketed_batches(users, lengths, args.batch_size, rng)[:args.steps]]
    models = {}
    for width in widths:
        torch.manual_seed(0)
        model = SASRec(num_items, ffn_dim=width)
        models[width] = (model, torch.optim.AdamW(model.parameters(), lr=2e-3))
    seconds: dict[int, list[float]] = {w: [] for w in widths}
    for repeat in range(args.repeats + 1):
        for width in widths:
            model, optimizer = models[width]
            start = time.perf_counter()
            for inputs, targets in batches:
                loss = cross_entropy_loss(model, inputs, targets, exclude_seen=True,
                                          smoothing=0.2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if repeat:  # the first pass warms up allocator and caches
                seconds[width].append((time.perf_counter() - start) / len(batches))
    base = statistics.median(seconds[widths[0]])
    print(f"{len(batches)} batches of {args.batch_size}, {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    for width in widths:
        median = statistics.median(seconds[width])
        params = sum(p.numel() for p in models[width][0].parameters())
        print(f"ffn {width:4d}: {1000 * median:6.1f} ms/step (median)  x{median / base:.3f}  "
              f"{params:,} parameters")


if __name__ == "__main__":
    main()
