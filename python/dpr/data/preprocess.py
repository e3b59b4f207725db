"""From raw interactions and item metadata to chronological sequences over a dense catalogue."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from dpr.data.attributes import items_without
from dpr.data.dataset import (
    Interactions,
    ItemCatalogue,
    ItemMetadata,
    SequenceDataset,
)


def build_dataset(
    interactions: Interactions,
    metadata: ItemMetadata,
    *,
    name: str,
    min_rating: float | None = None,
    k_core: int = 5,
) -> SequenceDataset:
    """Filter, k-core, order chronologically (stable on ties: file order) and map ids densely.

    Rows without a timestamp are dropped; so are rows below `min_rating` (implicit feedback)
    and rows whose item has no metadata. Every drop is counted in the dataset's `report`.
    """
    report: dict[str, int | float | str] = {"rows_read": len(interactions)}
    keep = ~np.isnan(interactions.timestamps.astype(np.float64))
    report["dropped_no_timestamp"] = int((~keep).sum())

    if min_rating is not None:
        ratings = interactions.ratings.astype(np.float64)
        if np.isnan(ratings[keep]).any():
            raise ValueError(f"{interactions.source}: min_rating={min_rating} given but some rows "
                             "have no rating")
        below = keep & (ratings < min_rating)
        report["dropped_below_min_rating"] = int(below.sum())
        report["min_rating"] = float(min_rating)
        keep &= ~below

    known_items = set(metadata.ids)
    has_meta = np.fromiter(map(known_items.__contains__, interactions.items.tolist()), dtype=bool,
                           count=len(interactions))
    report["dropped_unknown_item"] = int((keep & ~has_meta).sum())
    keep &= has_meta

    rows = np.flatnonzero(keep)
    users, items = interactions.users[rows], interactions.items[rows]
    rows = rows[k_core_mask(users, items, k_core)]
    report["k_core"] = k_core
    report["dropped_by_k_core"] = int(keep.sum() - len(rows))

    dataset = _sequences(interactions, metadata, rows, name)
    dataset.report = {**report, "users": len(dataset.users), "items": dataset.num_items,
                      "interactions": dataset.num_interactions,
                      **attribute_report(dataset.items)}
    return dataset


def k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows to keep so that every remaining user and item has at least `k` interactions."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    _, user_codes = np.unique(users, return_inverse=True)
    _, item_codes = np.unique(items, return_inverse=True)
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max(initial=-1) + 1)
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max(initial=-1) + 1)
        ok = keep & (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        if ok.sum() == keep.sum():
            return keep
        keep = ok


def _sorted_ids(ids: np.ndarray) -> list[Hashable]:
    return sorted(set(ids.tolist()), key=_id_sort_key)


def _id_sort_key(x: Hashable) -> tuple[int, int | float | str]:
    return (0, x) if isinstance(x, int | float) else (1, str(x))


def _sequences(interactions: Interactions, metadata: ItemMetadata, rows: np.ndarray,
               name: str) -> SequenceDataset:
    item_ids = _sorted_ids(interactions.items[rows])
    meta_row = {external: i for i, external in enumerate(metadata.ids)}
    picked = [meta_row[i] for i in item_ids]
    catalogue = ItemCatalogue(
        item_ids,
        [metadata.titles[i] for i in picked],
        {attr: [values[i] for i in picked] for attr, values in metadata.attributes.items()},
    )
    internal = {external: n + 1 for n, external in enumerate(item_ids)}

    user_ids = _sorted_ids(interactions.users[rows])
    user_index = {external: n for n, external in enumerate(user_ids)}
    user_of_row = np.fromiter(map(user_index.__getitem__, interactions.users[rows].tolist()),
                              dtype=np.int64, count=len(rows))
    item_of_row = np.fromiter(map(internal.__getitem__, interactions.items[rows].tolist()),
                              dtype=np.int64, count=len(rows))
    times = interactions.timestamps[rows].astype(np.float64)
    # Stable lexsort: by user, then time, then original file order (rows are ascending).
    order = np.lexsort((np.arange(len(rows)), times, user_of_row))
    boundaries = np.searchsorted(user_of_row[order], np.arange(len(user_ids) + 1))
    ordered_items = item_of_row[order]
    sequences = [ordered_items[boundaries[u]:boundaries[u + 1]].copy()
                 for u in range(len(user_ids))]
    return SequenceDataset(name=name, items=catalogue, users=user_ids, sequences=sequences)


def attribute_report(catalogue: ItemCatalogue) -> dict[str, int]:
    """`items_without_<family>`: kept items with no value of each attribute family."""
    return {f"items_without_{name}": items_without(values)
            for name, values in sorted(catalogue.attributes.items())}
