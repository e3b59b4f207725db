"""The item catalogue a model was trained on, as training hands it to export (torch-free)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class _Items(Protocol):
    ids: Sequence[Hashable]
    titles: Sequence[str]
    attributes: Mapping[str, Sequence[Sequence[str]]]


@dataclass(frozen=True)
class Catalogue:
    """External item ids and titles in the model's internal order (items 1..N), and each
    attribute's values per item (`{"genre": [["Comedy"], ["Drama", "War"], ...]}`)."""

    item_ids: list[Any]
    titles: list[str]
    attributes: dict[str, list[list[str]]] = field(default_factory=dict)

    FIELDS = ("item_ids", "titles", "attributes")
    """The keys it occupies in a `dpr.pt` checkpoint's extra dict."""

    @classmethod
    def from_items(cls, items: _Items) -> Catalogue:
        """The catalogue of a dataset's item table (`dpr.data.ItemTable`)."""
        return cls(list(items.ids), [str(t) for t in items.titles],
                   {name: [list(v) for v in values] for name, values in items.attributes.items()})

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> Catalogue:
        """The catalogue stored in a checkpoint's extra dict (`to_extra`)."""
        for key in ("item_ids", "titles"):
            if key not in extra:
                raise ValueError(f"catalogue: missing field {key!r}")
        attributes = extra.get("attributes") or {}
        return cls(list(extra["item_ids"]), [str(t) for t in extra["titles"]],
                   {name: [list(v) for v in values] for name, values in attributes.items()})

    @classmethod
    def coerce(cls, value: Catalogue | Mapping[str, Any]) -> Catalogue:
        """`value` itself, or the catalogue in an extra dict."""
        return value if isinstance(value, Catalogue) else cls.from_extra(value)

    def to_extra(self) -> dict[str, Any]:
        """The catalogue as the plain values a checkpoint's extra dict stores."""
        return {"item_ids": list(self.item_ids), "titles": list(self.titles),
                "attributes": {k: [list(v) for v in vs] for k, vs in self.attributes.items()}}
