"""Data that is never lost: a training run killed with SIGKILL resumes from its last
checkpoint, checkpoints and exports are written atomically, and a failed export never
replaces a good bundle (served by the Rust reader afterwards, not just present).

Training, checkpoints and export are PyTorch: those tests import it where they run and are
skipped without it (`_torch`, `_export`); the rest runs with numpy and the extension alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dpr import Recommender
from test_recommender import _catalogue, _model


def _torch() -> ModuleType:
    """torch, or the test is skipped (training and checkpoints are PyTorch)."""
    return pytest.importorskip("torch")


def _export() -> ModuleType:
    """dpr.export (it needs torch), or the test is skipped."""
    _torch()
    from dpr import export

    return export

# The same run in the child (killed) and here (resumed, and straight through for reference).
RUN = """
import torch
from dpr.data import synthetic_dataset
from dpr.train import BackboneTrainConfig, train_backbone
from dpr.train.experiment import make_backbone

def run(out, epochs):
    dataset = synthetic_dataset(num_users=200, num_items=80, seed=5, min_length=8,
                                max_length=20)
    torch.manual_seed(0)
    backbone = make_backbone("gru4rec", dataset.num_items, dim=16, max_len=20)
    config = BackboneTrainConfig(lr=3e-3, max_epochs=epochs, patience=10**6, batch_size=32)
    return train_backbone(backbone, dataset.split(), config, out, progress=False)
"""


def _run(out: Path | None, epochs: int) -> Any:
    scope: dict[str, Any] = {}
    exec(RUN, scope)  # the same source the child runs
    return scope["run"](out, epochs)


def test_training_killed_by_sigkill_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    torch = _torch()
    from dpr.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    child = textwrap.dedent(RUN) + textwrap.dedent(f"""
        torch.set_num_threads({torch.get_num_threads()})
        run({str(out)!r}, 10_000)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE)
    last = out / "backbone_last.pt"
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), (process.poll(), process.stderr and process.stderr.read())
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
        if process.stderr:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    done = load_checkpoint(last)["training"]["next_epoch"]   # complete, never truncated
    assert done >= 1

    resumed = _run(out, done + 2)
    assert [r.epoch for r in resumed.history] == list(range(done + 2))
    straight = _run(None, done + 2)
    for name, value in straight.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[name], value, rtol=1e-4,
                                   atol=1e-5, msg=name)
    assert load_checkpoint(last)["training"]["next_epoch"] == done + 2


def test_checkpoint_write_failure_keeps_the_previous_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    torch = _torch()
    from dpr.train import checkpoint as checkpoint_module
    from dpr.train.checkpoint import load_checkpoint, save_atomic

    path = tmp_path / "ckpt.pt"
    save_atomic({"epoch": 1, "weights": torch.arange(5)}, path)

    def half_written(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # a BaseException too: nothing may be left half-done

    monkeypatch.setattr(checkpoint_module.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    save_atomic({"epoch": 3}, path)
    assert load_checkpoint(path)["epoch"] == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_training_data_errors_name_file_and_line(tmp_path: Path) -> None:
    from dpr.data import read_csv_pair

    (tmp_path / "interactions.csv").write_text("user,item\nu,a\nu,b,c,d\n")
    (tmp_path / "items.csv").write_text("item,title,genre\na,A,Drama\nb,B,Comedy\n")
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3\b"):
        read_csv_pair(tmp_path / "interactions.csv", tmp_path / "items.csv")


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    export = _export()
    out = tmp_path_factory.mktemp("export") / "bundle"
    export.export_bundle(_model("sasrec"), _catalogue(), out, training={"run": "good"})
    return out, {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
                 if p.is_file()}


def _writes_in_one_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    export = _export()
    count = {"n": 0}
    original = export.write_synced

    def counting(path: Path, data: bytes) -> None:
        count["n"] += 1
        original(path, data)

    monkeypatch.setattr(export, "write_synced", counting)
    export.export_bundle(_model("gru4rec"), _catalogue(), tmp_path / "probe")
    monkeypatch.undo()
    return count["n"]


def test_failed_export_at_any_write_keeps_the_good_bundle(
        good_bundle: tuple[Path, dict[str, bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    export = _export()
    out, before = good_bundle
    writes = _writes_in_one_export(tmp_path, monkeypatch)
    assert writes >= 5          # weights, items, encoder files, dpr.json
    original = export.write_synced
    for fail_at in range(1, writes + 1):
        calls = {"n": 0}

        def failing(path: Path, data: bytes, fail_at: int = fail_at,
                    calls: dict[str, int] = calls) -> None:
            calls["n"] += 1
            if calls["n"] == fail_at:
                original(path, data[: len(data) // 2])      # half the file, then the error
                raise OSError(f"disk full at write {fail_at}")
            original(path, data)

        monkeypatch.setattr(export, "write_synced", failing)
        with pytest.raises(OSError, match=f"disk full at write {fail_at}"):
            export.export_bundle(_model("gru4rec"), _catalogue(), out, training={"run": "bad"})
        monkeypatch.undo()
        after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after == before, f"bundle changed by a failure at write {fail_at}"
        assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"], fail_at
    assert Recommender.load(out).query([1000, 1007], "no horror please", k=3)


def test_failed_swap_restores_the_good_bundle(good_bundle: tuple[Path, dict[str, bytes]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    export = _export()
    out, before = good_bundle
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".bundle.tmp-"):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        export.export_bundle(_model("gru4rec"), _catalogue(), out, training={"run": "bad"})
    monkeypatch.undo()
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]
    assert Recommender.load(out).num_items == len(_catalogue()["item_ids"])


def test_export_interrupted_by_keyboard_interrupt(good_bundle: tuple[Path, dict[str, bytes]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    export = _export()
    out, before = good_bundle

    def interrupted(path: Path, value: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_bundle(_model("gru4rec"), _catalogue(), out)
    monkeypatch.undo()
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in out.parent.iterdir()) == ["bundle"]

