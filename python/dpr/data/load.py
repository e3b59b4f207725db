"""One entry point from a dataset on disk (or the synthetic generator) to a SequenceDataset."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dpr.data.csv_format import read_csv_pair
from dpr.data.dataset import SequenceDataset
from dpr.data.movielens import read_movielens_1m, read_movielens_100k
from dpr.data.preprocess import build_dataset
from dpr.data.s3rec import read_s3rec
from dpr.data.synthetic import synthetic_dataset

FORMATS = ("movielens-1m", "movielens-100k", "csv", "s3rec", "synthetic")
ML1M_MIN_RATING = 4.0
"""ML-1M keeps ratings >= 4 unless told otherwise: that subset is complete and timestamped."""


def load_dataset(path: str | os.PathLike[str] | None, format: str, *,
                 min_rating: float | None = None, k_core: int = 5,
                 attributes: Sequence[str] | None = None) -> SequenceDataset:
    """Read a dataset and preprocess it (min rating, k-core, chronological order, dense ids).

    Formats:
      - "movielens-1m": `path` is the ML-1M directory. `min_rating=None` means 4
        (`ML1M_MIN_RATING`), the usual implicit-feedback subset; pass 0 to keep every rating
        that has a timestamp.
      - "movielens-100k": `path` is the ML-100K directory; no rating filter by default.
      - "csv": `path` is a directory with `interactions.csv` and `items.csv`
        (see `dpr.data.csv_format`); `attributes` names the items' attribute columns
        (default: `genre`; `decade` may come from a numeric `year` column).
    MovieLens gives the families `genre` and `decade`, the synthetic catalogue `genre`;
    `attributes` is for "csv" only.
      - "s3rec": `path` is an S3-Rec sequence file (`Beauty.txt`), its
        `Beauty_item2attributes.json` beside it (see `dpr.data.s3rec`): families `brand` and
        `category`, named by id, for filters only.
      - "synthetic": the default synthetic catalogue (seed 0); `path` is ignored.
    """
    if attributes is not None and format != "csv":
        raise ValueError(f"attributes are chosen for the csv format only; {format!r} has its "
                         "own families")
    if format == "synthetic":
        return synthetic_dataset(min_rating=min_rating, k_core=k_core)
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; known formats: "
                         f"{', '.join(FORMATS)}")
    if path is None:
        raise ValueError(f"format {format!r} needs a path")
    root = Path(path)
    if format == "s3rec":
        interactions, metadata = read_s3rec(root)
        return build_dataset(interactions, metadata, name=root.stem, min_rating=min_rating,
                             k_core=k_core)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (format {format!r})")
    if format == "movielens-1m":
        interactions, metadata = read_movielens_1m(root)
        min_rating = ML1M_MIN_RATING if min_rating is None else min_rating
    elif format == "movielens-100k":
        interactions, metadata = read_movielens_100k(root)
    else:
        interactions, metadata = read_csv_pair(root / "interactions.csv", root / "items.csv",
                                               attributes=attributes or ("genre",))
    return build_dataset(interactions, metadata, name=_name(format, root),
                         min_rating=min_rating, k_core=k_core)


def _name(format: str, root: Path) -> str:
    return format if format.startswith("movielens") else root.resolve().name
