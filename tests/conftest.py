"""Shared fixtures: the committed tiny bundles (tests/fixtures/) and their golden outputs.

Nothing here imports torch: a serving test that only needs *a* bundle takes `tiny` (each tiny
bundle in turn) or `tiny_sasrec`, and runs with numpy and the Rust extension alone.
`tests/fixtures/make_tiny_bundles.py` regenerates the bundles (see tests/fixtures/README.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pytest

from dpr import Recommender

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_KINDS = ("sasrec", "gru4rec")


@dataclass(frozen=True)
class TinyBundle:
    """A committed tiny bundle: its path, catalogue (as items.json holds it) and golden section."""

    kind: str
    path: Path
    golden: dict[str, Any]
    """This bundle's section of golden.json."""
    tolerance: dict[str, float]
    """golden.json `tolerance`: `score`, `vector` (max abs difference) and `cosine`."""

    @cached_property
    def items(self) -> dict[str, Any]:
        return json.loads((self.path / "items.json").read_text(encoding="utf-8"))

    @property
    def ids(self) -> list[int | str]:
        """External ids of rows 1..N (`ids[r - 1]` is row r)."""
        return list(self.items["ids"])

    @property
    def titles(self) -> list[str]:
        return list(self.items["titles"])

    @property
    def num_items(self) -> int:
        return len(self.items["ids"])

    @property
    def dim(self) -> int:
        """The backbone width d (user vectors have d + A floats)."""
        return int(self.golden["dim"])

    @property
    def max_len(self) -> int:
        return int(json.loads((self.path / "dpr.json").read_text("utf-8"))["backbone"]["max_len"])

    def values(self, attribute: str) -> list[list[str]]:
        """Each item's values of `attribute`, in row order."""
        spec = self.items["attributes"][attribute]
        return [[spec["values"][v] for v in row] for row in spec["items"]]

    def copy_to(self, folder: Path) -> Path:
        """A private copy (for tests that write into a bundle, e.g. `save_index`)."""
        return Path(shutil.copytree(self.path, folder / self.path.name))


@cache
def _golden() -> dict[str, Any]:
    return json.loads((FIXTURES / "golden.json").read_text(encoding="utf-8"))


def tiny_bundle(kind: str) -> TinyBundle:
    golden = _golden()
    return TinyBundle(kind, FIXTURES / f"tiny_{kind}", golden["bundles"][kind],
                      golden["tolerance"])


@pytest.fixture(scope="session", params=TINY_KINDS)
def tiny(request: pytest.FixtureRequest) -> TinyBundle:
    """Each committed tiny bundle in turn (SASRec with integer ids, GRU4Rec with string ids)."""
    return tiny_bundle(request.param)


@pytest.fixture(scope="session")
def tiny_sasrec() -> TinyBundle:
    return tiny_bundle("sasrec")


@pytest.fixture(scope="session")
def tiny_rec(tiny: TinyBundle) -> Recommender:
    """`dpr.Recommender` over `tiny` (exact scan), loaded once per session."""
    return Recommender.load(tiny.path)
