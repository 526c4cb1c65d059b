"""Atomic checkpoints: a killed write never leaves a half-written ``latest.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_write


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files a killed :func:`atomic_save` of ``path`` left behind; returns them."""
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on CPU, with an error naming the path when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
