"""A dataset as two CSV files with headers: interactions (user, item[, rating][, timestamp])
and items (item[, title], one column per attribute family with values joined by `|`).

A `decade` family with no `decade` column is derived from a numeric `year` column (1995 ->
"1990s", see `dpr.data.attributes`); an empty year gives no decade value.

Ids stay strings unless every id of that kind is a plain integer ("12", not "012" or "1.0"),
then they are ints; item ids are typed the same way in both files so they match. Column names
are matched case-insensitively, ignoring `_` and `-` ("user_id", "UserID", "movieId" work).
Files may be gzipped (`.gz`) and use CSV quoting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from dpr.data._text import (
    Table,
    external_ids,
    find_columns,
    is_canonical_int,
    normalise_name,
    parse_time,
    read_table,
    split_values,
)
from dpr.data.attributes import DECADE, decades
from dpr.data.dataset import Interactions, ItemMetadata

INTERACTION_COLUMNS = {
    "user": ("user", "userid", "uid", "users"),
    "item": ("item", "itemid", "iid", "movie", "movieid", "product", "productid"),
    "rating": ("rating", "score"),
    "timestamp": ("timestamp", "time", "ts", "unixtime", "datetime", "date"),
}
"""Accepted (normalised) header names for each interaction column."""

ITEM_COLUMNS = {
    "item": INTERACTION_COLUMNS["item"],
    "title": ("title", "name"),
}
YEAR_COLUMN = ("year", "releaseyear")
"""Accepted (normalised) names of the numeric year column a `decade` family is derived from."""


def read_csv_pair(
    interactions_path: str | os.PathLike[str],
    items_path: str | os.PathLike[str],
    *,
    attributes: Sequence[str] = ("genre",),
    separator: str = "|",
    encoding: str = "utf-8-sig",
) -> tuple[Interactions, ItemMetadata]:
    """Read an interactions CSV and an items CSV into `Interactions` and `ItemMetadata`.

    Interactions need `user` and `item` columns; `rating` is optional (NaN when absent or
    empty); `timestamp` is optional, numeric or ISO-8601 (an empty field is NaN, and such
    rows are later dropped; with no timestamp column at all, file order is time order).
    Items need an `item` column and, for each family in `attributes`, a column of that name
    (or its plural) whose values are joined by `separator` (`decade` may come from a numeric
    `year` column instead); `title` defaults to the id.
    """
    if isinstance(attributes, str):
        raise TypeError("attributes must be a sequence of family names, e.g. ['genre']")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes lists a family twice: {list(attributes)}")
    events = read_table(interactions_path, ",", encoding=encoding, header=True, quoted=True)
    items = read_table(items_path, ",", encoding=encoding, header=True, quoted=True)
    event_columns = find_columns(events, INTERACTION_COLUMNS, required=("user", "item"))
    item_roles: dict[str, tuple[str, ...]] = dict(ITEM_COLUMNS)
    for family in attributes:
        name = normalise_name(family)
        item_roles[f"attribute:{family}"] = (name, name + "s")
    if DECADE in attributes:
        item_roles["year"] = YEAR_COLUMN
    item_columns = find_columns(items, item_roles, required=("item",))
    for family in attributes:
        if f"attribute:{family}" not in item_columns and not (family == DECADE
                                                             and "year" in item_columns):
            also = " or a numeric 'year' column" if family == DECADE else ""
            raise ValueError(f"{items.path}, line 1: no column for attribute {family!r} in "
                             f"header {items.header} (accepted names: "
                             f"{', '.join(item_roles[f'attribute:{family}'])}{also})")

    user_tokens = _id_tokens(events, event_columns["user"], "user id")
    event_items = _id_tokens(events, event_columns["item"], "item id")
    item_ids = _id_tokens(items, item_columns["item"], "item id")
    items_as_int = all(map(is_canonical_int, event_items)) and all(map(is_canonical_int,
                                                                       item_ids))
    interactions = Interactions(
        users=external_ids(user_tokens, all(map(is_canonical_int, user_tokens))),
        items=external_ids(event_items, items_as_int),
        ratings=_ratings(events, event_columns.get("rating")),
        timestamps=_timestamps(events, event_columns.get("timestamp")),
        source=events.path,
    )
    return interactions, _metadata(items, item_columns, items_as_int, attributes, separator)


def _metadata(table: Table, columns: dict[str, int], as_int: bool, families: Sequence[str],
              separator: str) -> ItemMetadata:
    ids = external_ids(table.columns[columns["item"]], as_int).tolist()
    seen: set[object] = set()
    for row, item in enumerate(ids):
        if item in seen:
            raise table.error(row, f"duplicate item id {item!r}")
        seen.add(item)
    if "title" in columns:
        titles = [t.strip() for t in table.columns[columns["title"]]]
    else:
        titles = [str(item) for item in ids]
    attributes = {}
    for family in families:
        column = columns.get(f"attribute:{family}")
        if column is None:  # a decade family from the year column (checked by the caller)
            attributes[family] = decades(_years(table, columns["year"]))
        else:
            attributes[family] = [split_values(field, separator)
                                  for field in table.columns[column]]
    return ItemMetadata(ids, titles, attributes, source=table.path)


def _years(table: Table, column: int) -> list[int | None]:
    """Whole-number years; an empty field is None; anything else is an error."""
    years: list[int | None] = []
    for row, token in enumerate(table.columns[column]):
        token = token.strip()
        if not token:
            years.append(None)
            continue
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not (value.is_integer() and 0 < value < 10_000):
            raise table.error(row, f"year must be a whole number of years, got {token!r}")
        years.append(int(value))
    return years


def _id_tokens(table: Table, column: int, what: str) -> list[str]:
    """Stripped id fields; an empty id is an error."""
    tokens = [t.strip() for t in table.columns[column]]
    table.columns[column] = tokens
    empty = table.first_bad(column, bool)
    if empty is not None:
        raise table.error(empty, f"{what} is missing")
    return tokens


def _ratings(table: Table, column: int | None) -> np.ndarray:
    if column is None:
        return np.full(len(table), np.nan)
    return table.floats(column, "rating", optional=True)


def _timestamps(table: Table, column: int | None) -> np.ndarray:
    """Seconds as float64; NaN where empty; file order (0, 1, ...) without a column."""
    if column is None:
        return np.arange(len(table), dtype=np.float64)
    tokens = table.columns[column]
    first = next((t for t in tokens if t.strip()), None)
    if first is None or _is_number(first):
        return table.floats(column, "timestamp", optional=True)
    values = np.empty(len(tokens), dtype=np.float64)
    for row, token in enumerate(tokens):
        try:
            values[row] = parse_time(token) if token.strip() else math.nan
        except ValueError:
            raise table.error(row, f"timestamp is neither a number nor an ISO-8601 date: "
                                   f"{token!r}") from None
    return values


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True

