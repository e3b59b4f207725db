"""Training cost: seconds per epoch of each stage on a real dataset (CPU or CUDA).

Stage 1 (backbone, full-softmax CE) for SASRec and GRU4Rec from scratch, one epoch each
(validation included); stages 2 (projector alignment) and 3 (one steering epoch) on top of
a trained backbone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _common import DEFAULT_RESULTS, footer, machine, publish, table


def run(data: Path, fmt: str, backbone_path: Path, epochs: int, device: str) -> dict[str, Any]:
    import torch

    from dpr.data import load_dataset
    from dpr.encoder import PromptEncoder
    from dpr.models import GRU4Rec, SASRec
    from dpr.train.backbone import load_backbone, train_backbone
    from dpr.train.config import BackboneTrainConfig
    from dpr.train.pipeline import fit_steering
    from dpr.train.steering import SteeringTrainConfig

    dataset = load_dataset(data, fmt)
    split = dataset.split()
    out: dict[str, Any] = {"dataset": dataset.name, "users": len(split.train),
                           "items": dataset.num_items, "device": device,
                           "torch_threads": torch.get_num_threads(), "stage1": {}}
    for kind, build in (("sasrec", SASRec), ("gru4rec", GRU4Rec)):
        torch.manual_seed(0)
        result = train_backbone(build(dataset.num_items),
                                split, BackboneTrainConfig(max_epochs=epochs, device=device),
                                progress=False)
        out["stage1"][kind] = [r.seconds for r in result.history]
    backbone = load_backbone(backbone_path, device)
    _, report = fit_steering(dataset, backbone, PromptEncoder(device=device).encode,
                             SteeringTrainConfig(epochs=epochs, device=device), progress=False)
    out["steering"] = report["seconds"]
    out["steering_epochs"] = epochs
    out["steering_backbone"] = str(backbone_path)
    out["loss"] = _loss_side_by_side(backbone.item_vectors().detach(), device)
    return {**out, **machine()}


def _loss_side_by_side(items: Any, device: str, positions: int = 10_000, repeats: int = 7
                       ) -> dict[str, Any]:
    """Forward + backward of the stage-1 loss on one batch-sized slab of positions: the
    chunked `full_softmax_cross_entropy` against `F.cross_entropy(hidden @ items.T)`."""
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from dpr.train.losses import full_softmax_cross_entropy

    generator = torch.Generator().manual_seed(0)
    items = items.to(device).clone().requires_grad_(True)
    hidden = torch.randn(positions, items.shape[1], generator=generator).to(device)
    hidden.requires_grad_(True)
    targets = torch.randint(0, items.shape[0], (positions,), generator=generator).to(device)
    candidates = {
        "chunked": lambda: full_softmax_cross_entropy(hidden, items, targets),
        "pytorch": lambda: F.cross_entropy(hidden @ items.T, targets),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for name, loss in candidates.items():
            started = time.perf_counter()
            loss().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    return {"positions": positions, "items": int(items.shape[0]), "repeats": repeats,
            "median_seconds": medians, "speedup": medians["pytorch"] / medians["chunked"]}


def to_markdown(r: dict[str, Any], command: str) -> str:
    per_epoch = {kind: sum(s) / len(s) for kind, s in r["stage1"].items()}
    rows = [[f"1: backbone ({kind})", f"{seconds:.1f} per epoch"]
            for kind, seconds in per_epoch.items()]
    s = r["steering"]
    rows += [["prompt encoding (once)", f"{s.get('encode_prompts', 0.0):.1f}"],
             ["2: projector alignment (whole stage)", f"{s.get('stage2', 0.0):.1f}"],
             ["3: steering", f"{s.get('stage3', 0.0) / r['steering_epochs']:.1f} per epoch"]]
    return (f"# Training cost on {r['dataset']} ({r['users']:,} users, {r['items']:,} items)\n\n"
            + table(["stage", "seconds"], rows)
            + f"\nDevice {r['device']}, torch threads {r['torch_threads']}; stage 1 includes the "
            f"validation pass of each epoch; stages 2 and 3 ran on `{r['steering_backbone']}`.\n\n"
            + _loss_markdown(r.get("loss"))
            + footer(r, command))


def _loss_markdown(loss: dict[str, Any] | None) -> str:
    if not loss:
        return ""
    medians = loss["median_seconds"]
    return (f"Stage-1 loss, forward + backward over {loss['positions']:,} positions × "
            f"{loss['items']:,} items (median of {loss['repeats'] - 1} interleaved runs): "
            f"chunked {1e3 * medians['chunked']:.0f} ms, `F.cross_entropy(h @ E.T)` "
            f"{1e3 * medians['pytorch']:.0f} ms, **{loss['speedup']:.2f}×**.\n\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", default="movielens-1m")
    parser.add_argument("--backbone", type=Path, required=True,
                        help="a trained backbone.pt for stages 2 and 3")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="training")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    results = run(args.data, args.format, args.backbone, args.epochs, args.device)
    return publish("training", argv, results,
                   lambda c: to_markdown(results, c), args.name, args.out)


if __name__ == "__main__":
    sys.exit(main())
