"""Inner-product graph vs the norm-augmented transform (Bachrach et al. 2014), on dpr's own norms.

The HNSW graph searches the raw inner product. The classic alternative turns maximum inner
product search into nearest neighbour search: items get an extra coordinate
`sqrt(M^2 - |x|^2)` (M the largest item norm), queries a 0, and an L2 graph ranks them in
inner-product order. Whether that pays depends on how the item norms spread, so this uses a
trained bundle's own: a catalogue of `--items` vectors whose directions are the bundle's item
vectors plus noise and whose norms are drawn from the bundle's norm distribution, queried by the
bundle's own steered user vectors (random histories, everyday prompts). Both graphs are hnswlib
(same M, ef_construction, one thread for search), so only the transform differs; recall@10
against the exact inner-product top 10, at each ef.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_RESULTS, footer, machine, publish, table

EFS = [16, 32, 64, 128, 256, 512]
K = 10
PROMPTS = ["", "something funny tonight", "no horror please", "a comedy, but no romance",
           "an action movie with explosions", "I'm in the mood for a romantic drama"]


def own_catalogue(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` items like the bundle's: the embedding part is a random bundle item's direction
    plus noise, with a norm drawn from the bundle's embedding norms; the attribute part (the
    0/1 columns) is that item's own."""
    rng = np.random.default_rng(seed)
    binary = np.all((vectors == 0) | (vectors == 1), axis=0)
    d = int(np.argmax(binary)) if binary.any() else vectors.shape[1]
    embedding = vectors[:, :d]
    norms = np.linalg.norm(embedding, axis=1)
    picks = rng.integers(0, len(vectors), n)
    out = np.empty((n, vectors.shape[1]), np.float32)
    part = embedding[picks] + rng.standard_normal((n, d)).astype(np.float32) * embedding.std(axis=0)
    part /= np.linalg.norm(part, axis=1, keepdims=True)
    out[:, :d] = part * rng.choice(norms, size=(n, 1))
    out[:, d:] = vectors[picks, d:]
    return out


def augment(items: np.ndarray) -> tuple[np.ndarray, float]:
    """Items with the extra coordinate `sqrt(M^2 - |x|^2)`; returns them and M."""
    sq = (items.astype(np.float64) ** 2).sum(axis=1)
    m2 = float(sq.max())
    extra = np.sqrt(np.maximum(m2 - sq, 0.0)).astype(np.float32)[:, None]
    return np.hstack([items, extra]), float(np.sqrt(m2))


def recall(found: np.ndarray, kth_score: np.ndarray, scores: np.ndarray) -> float:
    """Share of the returned items scoring at least the exact k-th best (ties count as hits)."""
    got = np.take_along_axis(scores, found.astype(np.int64), axis=1)
    return float((got >= kth_score[:, None] - 1e-5).mean())


def curve(index: Any, queries: np.ndarray, kth_score: np.ndarray,
          scores: np.ndarray) -> list[dict[str, float]]:
    out = []
    for ef in EFS:
        index.set_ef(ef)
        start = time.perf_counter()
        found, _ = index.knn_query(queries, k=K, num_threads=1)
        seconds = time.perf_counter() - start
        out.append({"ef": ef, "recall": recall(found, kth_score, scores),
                    "qps": len(queries) / seconds})
    return out


def run(bundle: Path, items: int, queries: int, m: int, ef_construction: int, threads: int,
        seed: int) -> dict[str, Any]:
    import hnswlib

    import dpr

    rec = dpr.Recommender.load(bundle)
    own = np.array(rec.item_vectors())
    rng = np.random.default_rng(seed)
    ids = rec.item_ids
    users = np.stack([
        rec.user_vector(list(rng.choice(ids, int(rng.integers(5, 60)), replace=False)),
                        PROMPTS[i % len(PROMPTS)])
        for i in range(queries)]).astype(np.float32)
    catalogue = own_catalogue(own, items, seed)
    scores = users @ catalogue.T
    kth_score = -np.partition(-scores, K - 1, axis=1)[:, K - 1]
    norms = np.linalg.norm(catalogue, axis=1)
    result: dict[str, Any] = {
        "bundle": str(bundle), "items": items, "queries": queries, "dim": own.shape[1],
        "m": m, "ef_construction": ef_construction,
        "item_norms": {"min": float(norms.min()), "median": float(np.median(norms)),
                       "max": float(norms.max()),
                       "p90_over_p10": float(np.percentile(norms, 90)
                                             / np.percentile(norms, 10))},
        "methods": {}}
    for name, space, data, query in (
            ("inner product (raw)", "ip", catalogue, users),
            ("L2 on the augmented vectors", "l2", augment(catalogue)[0],
             np.hstack([users, np.zeros((len(users), 1), np.float32)]))):
        index = hnswlib.Index(space=space, dim=data.shape[1])
        index.init_index(max_elements=len(data), M=m, ef_construction=ef_construction,
                         random_seed=seed)
        start = time.perf_counter()
        index.add_items(data, num_threads=threads)
        build = time.perf_counter() - start
        result["methods"][name] = {"build_s": build,
                                   "curve": curve(index, query, kth_score, scores)}
    result.update(machine())
    return result


def to_markdown(r: dict[str, Any], command: str) -> str:
    names = list(r["methods"])
    rows = []
    for i, ef in enumerate(EFS):
        row: list[Any] = [ef]
        for name in names:
            point = r["methods"][name]["curve"][i]
            row.append(f"{point['recall']:.3f} ({point['qps']:,.0f} q/s)")
        rows.append(row)
    n = r["item_norms"]
    builds = ", ".join(f"{name} {m['build_s']:.1f} s" for name, m in r["methods"].items())
    return (
        "# Inner-product graph vs the norm-augmented L2 transform, on dpr's item norms\n\n"
        f"{r['items']:,} items of dimension {r['dim']} like `{r['bundle']}`'s (embedding "
        "directions of its items plus noise, with norms resampled from its items', and their "
        f"0/1 attribute columns; item norms: min {n['min']:.2f}, median {n['median']:.2f}, "
        f"max {n['max']:.2f}, p90/p10 {n['p90_over_p10']:.2f}), "
        f"{r['queries']} of the bundle's steered user vectors as queries; hnswlib, M = {r['m']}, "
        f"ef_construction = {r['ef_construction']}; recall@10 against the exact inner-product "
        "top 10, ties counted as hits (q/s on one thread).\n\n"
        + table(["ef"] + [f"{name}: recall@10 (q/s)" for name in names], rows)
        + f"\nBuild: {builds}.\n\n" + footer(r, command))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="mips-transform")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    r = run(args.bundle, args.items, args.queries, args.m, args.ef_construction, args.threads,
            args.seed)
    return publish("mips_transform", argv, r, lambda c: to_markdown(r, c), args.name, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
