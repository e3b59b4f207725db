"""MovieLens readers: ML-1M (`::` files, or a ratings CSV) and ML-100K (`u.data`, `u.item`).

Both return the raw `Interactions` (external integer ids, file order) and `ItemMetadata` with
two attribute families: `"genre"`, spelled as the dataset spells them ("Children's", "Sci-Fi"),
and `"decade"` ("1990s"): from the title's "(1995)" in ML-1M, from the release date (else the
title) in ML-100K; an item with neither has no decade value (the dataset report counts them).
A malformed line raises `ValueError` naming the file and its 1-based line number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dpr.data._text import Table, find_columns, read_table, split_values
from dpr.data.attributes import DECADE, decades, year_of_date, year_of_title
from dpr.data.dataset import Interactions, ItemMetadata

LATIN1 = "latin-1"
RATINGS_1M_CSV = ("ratings_reconstructed.csv.gz", "ratings.csv.gz", "ratings.csv")
"""CSV ratings files tried, in order, when ML-1M's `ratings.dat` is absent."""

_CSV_COLUMNS = {
    "user": ("user", "userid", "uid"),
    "item": ("item", "itemid", "iid", "movie", "movieid"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time", "ts", "unixtime"),
}


def read_movielens_1m(directory: str | os.PathLike[str]) -> tuple[Interactions, ItemMetadata]:
    """Read ML-1M from `directory`: `ratings.dat` (else a ratings CSV) and `movies.dat`.

    `ratings.dat` lines are `UserID::MovieID::Rating::Timestamp`. Without it, the first of
    `RATINGS_1M_CSV` that exists is read: a CSV with a header naming user, item (or movie),
    rating and timestamp columns (`user_id,movie_id,...` works); an empty timestamp is NaN.
    """
    root = Path(directory)
    ratings = root / "ratings.dat"
    if ratings.is_file():
        interactions = _read_ratings_dat(ratings)
    else:
        interactions = _read_ratings_csv(_first_existing(root, RATINGS_1M_CSV, also=ratings))
    return interactions, read_movies_dat(root / "movies.dat")


def read_movielens_100k(directory: str | os.PathLike[str]) -> tuple[Interactions, ItemMetadata]:
    """Read ML-100K from `directory`: `u.data`, `u.item` and the genre names in `u.genre`.

    `u.data` lines are `user<TAB>item<TAB>rating<TAB>timestamp`. In `u.item` the last columns
    are one 0/1 flag per genre of `u.genre`; an item flagged only "unknown" keeps that value.
    """
    root = Path(directory)
    table = read_table(root / "u.data", "\t", num_fields=4)
    interactions = _interactions(table, rating=2, timestamp=3, optional=False)
    genres = read_genre_names(root / "u.genre")
    return interactions, read_u_item(root / "u.item", genres)


def read_movies_dat(path: str | os.PathLike[str]) -> ItemMetadata:
    """ML-1M `movies.dat` (latin-1): `MovieID::Title::Genre1|Genre2|...`."""
    table = read_table(path, "::", encoding=LATIN1, num_fields=3)
    ids = table.ints(0, "movie id").tolist()
    _check_unique(table, ids)
    titles = [title.strip() for title in table.columns[1]]
    genres = [split_values(field) for field in table.columns[2]]
    years = [year_of_title(title) for title in titles]
    return ItemMetadata(ids, titles, {"genre": genres, DECADE: decades(years)},
                        source=table.path)


def read_genre_names(path: str | os.PathLike[str]) -> list[str]:
    """ML-100K `u.genre`: `name|index` lines; the names in index order."""
    table = read_table(path, "|", encoding=LATIN1, num_fields=2)
    indices = table.ints(1, "genre index")
    if sorted(indices.tolist()) != list(range(len(table))):
        raise ValueError(f"{table.path}: genre indices must be 0..{len(table) - 1}, "
                         f"got {indices.tolist()}")
    names = [""] * len(table)
    for name, index in zip(table.columns[0], indices.tolist(), strict=True):
        names[index] = name.strip()
    return names


def read_u_item(path: str | os.PathLike[str], genres: list[str]) -> ItemMetadata:
    """ML-100K `u.item` (latin-1, `|`-separated): id, title, dates, URL, one flag per genre."""
    table = read_table(path, "|", encoding=LATIN1, num_fields=5 + len(genres))
    ids = table.ints(0, "movie id").tolist()
    _check_unique(table, ids)
    flags = np.zeros((len(table), len(genres)), dtype=bool)
    for j in range(len(genres)):
        column = 5 + j
        bad = table.first_bad(column, lambda t: t in ("0", "1"))
        if bad is not None:
            raise table.error(bad, f"genre flag {genres[j]!r} must be 0 or 1, "
                              f"got {table.columns[column][bad]!r}")
        flags[:, j] = np.asarray(table.columns[column]) == "1"
    values = [tuple(g for g, on in zip(genres, row, strict=True) if on) for row in flags]
    titles = [title.strip() for title in table.columns[1]]
    years = [year_of_date(date) or year_of_title(title)
             for date, title in zip(table.columns[2], titles, strict=True)]
    return ItemMetadata(ids, titles, {"genre": values, DECADE: decades(years)},
                        source=table.path)


def _read_ratings_dat(path: Path) -> Interactions:
    table = read_table(path, "::", num_fields=4)
    return _interactions(table, rating=2, timestamp=3, optional=False)


def _read_ratings_csv(path: Path) -> Interactions:
    table = read_table(path, ",", header=True, quoted=True)
    columns = find_columns(table, _CSV_COLUMNS, required=_CSV_COLUMNS)
    return _interactions(table, user=columns["user"], item=columns["item"],
                         rating=columns["rating"], timestamp=columns["timestamp"],
                         optional=True)


def _interactions(table: Table, *, user: int = 0, item: int = 1, rating: int,
                  timestamp: int, optional: bool) -> Interactions:
    """Integer ids; rating and timestamp as float64 (empty -> NaN when `optional`)."""
    return Interactions(
        users=table.ints(user, "user id"),
        items=table.ints(item, "item id"),
        ratings=table.floats(rating, "rating", optional=optional),
        timestamps=table.floats(timestamp, "timestamp", optional=optional),
        source=table.path,
    )


def _first_existing(root: Path, names: tuple[str, ...], also: Path) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    tried = ", ".join(str(p) for p in [also, *(root / n for n in names)])
    raise FileNotFoundError(f"{root}: no MovieLens-1M ratings file (tried {tried})")


def _check_unique(table: Table, ids: list[int]) -> None:
    seen: set[int] = set()
    for row, item in enumerate(ids):
        if item in seen:
            raise table.error(row, f"duplicate item id {item}")
        seen.add(item)

