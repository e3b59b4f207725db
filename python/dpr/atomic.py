"""Atomic file writes: a crash or an error mid-write never leaves a truncated file or folder.

A file is written to a hidden temporary sibling, fsynced, then renamed over its target; a
folder is filled in a hidden temporary sibling and swapped into place (`staged_dir`). Every
writer of the package (checkpoints, reports, JSON, bundles) goes through here. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], *,
                 mode: str = "wb") -> None:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    `mode` is "wb" (binary) or "w" (UTF-8 text). On any error the temporary file is removed
    and an existing `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(value: Any, path: str | Path) -> None:
    """Write `value` as indented JSON (non-JSON values as their str), atomically."""

    def write(f: IO[str]) -> None:
        json.dump(value, f, indent=2, default=str)
        f.write("\n")

    atomic_write(path, write, mode="w")


def write_synced(path: Path, data: bytes) -> None:
    """Write and fsync one file in place (for files inside a `staged_dir`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (a no-op where the platform cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `out` to fill; on success it replaces `out` (an
    existing `out` is swapped out, and restored if the swap fails); on error it is removed and
    `out` is left untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, swapping out any existing `out` (restored if the swap fails)."""
    aside: Path | None = None
    if out.exists() or out.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        aside.rmdir()
        os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except BaseException:
        if aside is not None:
            os.rename(aside, out)
        raise
    fsync_dir(out.parent)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()
