"""Training checkpoints (`torch.save` pickles): written atomically, read onto the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dpr.atomic import atomic_write


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over `path`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_atomic` (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)
