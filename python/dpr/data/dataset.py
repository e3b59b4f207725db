"""Core data types: raw interactions, the item catalogue, sequences and the leave-one-out split."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

PADDING = 0
"""Internal item id reserved for padding; real items are numbered 1..N."""


@dataclass
class Interactions:
    """Raw user–item events with the dataset's own (external) ids, in file order.

    `ratings` is NaN where the source has no rating; `timestamps` is NaN where the source
    row has no timestamp (such rows are dropped by preprocessing, with a count reported).
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "ratings", "timestamps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.source or 'interactions'}: column {name!r} has "
                                 f"{len(getattr(self, name))} rows, users has {n}")

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class ItemMetadata:
    """Item descriptions keyed by external id: a title and multi-valued attributes.

    `attributes[name][i]` is the tuple of values (e.g. genres) of item `ids[i]`.
    """

    ids: list[Hashable]
    titles: list[str]
    attributes: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.titles) != len(self.ids):
            raise ValueError(f"{self.source or 'items'}: {len(self.titles)} titles "
                             f"for {len(self.ids)} ids")
        for name, values in self.attributes.items():
            if len(values) != len(self.ids):
                raise ValueError(f"{self.source or 'items'}: attribute {name!r} has "
                                 f"{len(values)} rows for {len(self.ids)} ids")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.source or 'items'}: duplicate item ids")


class ItemCatalogue:
    """The items a model knows, addressed by internal id 1..N (0 is padding)."""

    def __init__(self, ids: Sequence[Hashable], titles: Sequence[str],
                 attributes: dict[str, list[tuple[str, ...]]] | None = None) -> None:
        self.ids: list[Hashable] = list(ids)
        self.titles: list[str] = list(titles)
        self.attributes: dict[str, list[tuple[str, ...]]] = dict(attributes or {})
        if len(self.titles) != len(self.ids):
            raise ValueError("item catalogue: titles and ids differ in length")
        for name, values in self.attributes.items():
            if len(values) != len(self.ids):
                raise ValueError(f"item catalogue: attribute {name!r} differs in length from ids")
        self._row = {external: row for row, external in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            raise ValueError("item catalogue: duplicate item ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_items(self) -> int:
        """Number of real items N (internal ids run 1..N)."""
        return len(self.ids)

    def internal_id(self, external: Hashable) -> int:
        """Internal id (1..N) of an external item id; KeyError if unknown."""
        try:
            return self._row[external] + 1
        except KeyError:
            raise KeyError(f"unknown item id {external!r}") from None

    def external_id(self, internal: int) -> Hashable:
        """External id of an internal id 1..N."""
        if not 1 <= internal <= len(self.ids):
            raise KeyError(f"internal item id {internal} outside 1..{len(self.ids)}")
        return self.ids[internal - 1]

    def title(self, internal: int) -> str:
        return self.titles[internal - 1]

    def values_of(self, name: str, internal: int) -> tuple[str, ...]:
        """Attribute values (e.g. genres) of one item."""
        return self._attribute(name)[internal - 1]

    def attribute_values(self, name: str) -> list[str]:
        """Every distinct value of an attribute, sorted."""
        return sorted({v for values in self._attribute(name) for v in values})

    def attribute_matrix(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Boolean (N+1, V) matrix: row i marks the values item i has; row 0 (padding) is empty."""
        values = self.attribute_values(name)
        column = {v: j for j, v in enumerate(values)}
        matrix = np.zeros((len(self.ids) + 1, len(values)), dtype=bool)
        for row, item_values in enumerate(self._attribute(name)):
            for v in item_values:
                matrix[row + 1, column[v]] = True
        return matrix, values

    def steered_matrix(self, families: Sequence[str]
                       ) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """The attribute block steering scores with: boolean (N+1, A), the families' matrices
        side by side in the order given, and its columns as (family, value) pairs."""
        if len(set(families)) != len(families):
            raise ValueError(f"steered families named twice: {list(families)}")
        matrices, columns = [np.zeros((len(self.ids) + 1, 0), dtype=bool)], []
        for family in families:
            matrix, values = self.attribute_matrix(family)
            matrices.append(matrix)
            columns += [(family, v) for v in values]
        return np.concatenate(matrices, axis=1), columns

    def items_with(self, name: str, value: str) -> np.ndarray:
        """Internal ids of the items whose attribute `name` contains `value`."""
        hits = [row + 1 for row, vs in enumerate(self._attribute(name)) if value in vs]
        return np.asarray(hits, dtype=np.int64)

    def _attribute(self, name: str) -> list[tuple[str, ...]]:
        try:
            return self.attributes[name]
        except KeyError:
            known = ", ".join(sorted(self.attributes)) or "none"
            raise KeyError(f"unknown item attribute {name!r} (known: {known})") from None


@dataclass
class LeaveOneOutSplit:
    """Per user: training prefix, validation target, test target (0 where a user has none).

    Validation history is `train[u]`; test history is `train[u]` followed by the validation item.
    """

    train: list[np.ndarray]
    valid_targets: np.ndarray
    test_targets: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.train)

    def evaluation_cases(self, stage: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) for the users that have a target at `stage` ('valid' or 'test')."""
        if stage == "valid":
            users = np.flatnonzero(self.valid_targets)
            histories = [self.train[u] for u in users]
            return histories, self.valid_targets[users]
        if stage == "test":
            users = np.flatnonzero(self.test_targets)
            histories = [np.append(self.train[u], self.valid_targets[u]) for u in users]
            return histories, self.test_targets[users]
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


@dataclass
class SequenceDataset:
    """Chronological item sequences per user over a catalogue, ready to split.

    `sequences[u]` holds internal item ids (int64, 1..N) in time order for user `users[u]`.
    `report` counts what preprocessing read, dropped and kept.
    """

    name: str
    items: ItemCatalogue
    users: list[Hashable]
    sequences: list[np.ndarray]
    report: dict[str, int | float | str] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return self.items.num_items

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def split(self) -> LeaveOneOutSplit:
        """Leave-one-out: last item is the test, second-last the validation target."""
        train, valid, test = [], [], []
        for seq in self.sequences:
            if len(seq) >= 3:
                train.append(seq[:-2])
                valid.append(seq[-2])
                test.append(seq[-1])
            else:
                train.append(seq)
                valid.append(PADDING)
                test.append(PADDING)
        return LeaveOneOutSplit(train, np.asarray(valid, dtype=np.int64),
                                np.asarray(test, dtype=np.int64))


def last_window(sequence: np.ndarray, max_len: int) -> np.ndarray:
    """The most recent `max_len` items of a sequence."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return sequence[-max_len:]
