"""The Python tensor table is the golden one the Rust reader is also pinned to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpr.bundle_schema import expected_shapes

GOLDEN = Path(__file__).parent / "golden" / "tensor_tables.json"
CASES = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_expected_shapes_match_the_golden_table(case: dict) -> None:
    shapes = expected_shapes(case["config"], case["attribute_widths"])
    assert {name: list(shape) for name, shape in shapes.items()} == case["shapes"]


def test_the_golden_file_covers_both_backbones_and_a_bundle_without_intent() -> None:
    kinds = {case["config"]["backbone"]["kind"] for case in CASES}
    assert kinds == {"sasrec", "gru4rec"}
    assert any("intent" not in case["config"] for case in CASES)


def test_the_schema_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, dpr.bundle_schema; "
            "assert 'torch' not in sys.modules, 'bundle_schema imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
