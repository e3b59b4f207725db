"""The S3-Rec preprocessing of the Amazon review datasets (Zhou et al., CIKM 2020).

Two files per dataset, side by side: `<Name>.txt`, one line per user, `user item1 item2 ...`
in chronological order (no timestamps, ratings or titles), and `<Name>_item2attributes.json`,
`{"item": [attribute ids]}`. The attribute ids share one numbering for brands and categories,
and their names were not kept. S3-Rec lists an item's brand first, then its categories, so an
id that is only ever listed first is a brand; every other id is a category. The two become
the families `brand` and `category`, with values named by id (`"brand 17"`, `"category 3"`):
nothing a prompt could name, so they serve filters only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dpr.data.dataset import Interactions, ItemMetadata

BRAND, CATEGORY = "brand", "category"
ATTRIBUTES_SUFFIX = "_item2attributes.json"


def read_s3rec(sequences_path: str | os.PathLike[str]) -> tuple[Interactions, ItemMetadata]:
    """Read `<Name>.txt` and the `<Name>_item2attributes.json` beside it.

    Interactions keep each user's order; their timestamps are positions in the file, so the
    chronological sort keeps it. Items that appear in sequences but not in the attribute file
    get no values. A malformed line raises ValueError naming the file and line.
    """
    path = Path(sequences_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (format 's3rec' takes <Name>.txt)")
    attributes_path = path.with_name(path.stem + ATTRIBUTES_SUFFIX)
    if not attributes_path.is_file():
        raise FileNotFoundError(f"{attributes_path}: the attribute file beside {path.name} is "
                                "missing")
    users: list[int] = []
    items: list[int] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            user, *sequence = (int(f) for f in fields)
        except ValueError:
            raise ValueError(f"{path}, line {line_number}: ids must be integers") from None
        if not sequence:
            raise ValueError(f"{path}, line {line_number}: user {user} has no items")
        users.extend([user] * len(sequence))
        items.extend(sequence)
    interactions = Interactions(
        users=np.asarray(users, dtype=np.int64), items=np.asarray(items, dtype=np.int64),
        ratings=np.full(len(items), np.nan), timestamps=np.arange(len(items), dtype=np.float64),
        source=str(path))
    return interactions, _metadata(attributes_path, sorted(set(items)))


def _metadata(path: Path, item_ids: list[int]) -> ItemMetadata:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        listed = {int(item): [int(a) for a in ids] for item, ids in raw.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: expected {{\"item\": [attribute ids]}}: {e}") from None
    later = {a for ids in listed.values() for a in ids[1:]}
    brands = {ids[0] for ids in listed.values() if ids and ids[0] not in later}
    brand_of, categories_of = [], []
    for item in item_ids:
        ids = listed.get(item, [])
        brand_of.append(tuple(f"{BRAND} {a}" for a in ids if a in brands))
        categories_of.append(tuple(f"{CATEGORY} {a}" for a in ids if a not in brands))
    return ItemMetadata(list(item_ids), [str(item) for item in item_ids],
                        {BRAND: brand_of, CATEGORY: categories_of}, source=str(path))
