"""Atomic checkpoints: a killed write never leaves a half-written ``latest.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_write

# Per tensor record in torch.save's zip: a local header, the name and alignment padding.
_RECORD_OVERHEAD = 64


def _storage_bytes(obj: Any, seen: set[tuple[str, int]]) -> int:
    """Bytes of the distinct tensor (and NumPy array) storages reachable from ``obj``."""
    if isinstance(obj, torch.Tensor):
        try:
            storage = obj.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse and other storage-less layouts
            return 0
        key = (str(obj.device), storage.data_ptr())
        if key in seen or obj.device.type == "meta":
            return 0
        seen.add(key)  # views and tied weights share one storage, saved once
        return storage.nbytes() + _RECORD_OVERHEAD
    if isinstance(obj, dict):
        return sum(_storage_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_storage_bytes(v, seen) for v in obj)
    nbytes = getattr(obj, "nbytes", None)  # NumPy arrays (RNG states) are pickled inline
    return nbytes if isinstance(nbytes, int) else 0


def estimate_size(obj: Any) -> int:
    """A lower bound on the bytes ``torch.save(obj)`` writes: each tensor storage once."""
    return _storage_bytes(obj, set())


def checkpoint_note(path: Path) -> str:
    """Whether a checkpoint exists at ``path``, and at which step, for an error message."""
    if not path.is_file():
        return f"no checkpoint was written yet ({path} does not exist)"
    try:
        # mmap: the step is in the pickle, tensors stay on disk unread.
        step = torch.load(path, map_location="cpu", mmap=True, weights_only=False)["step"]
    except Exception:  # an unreadable file still gets named
        return f"the last checkpoint is {path} (its step could not be read)"
    return f"the last good checkpoint is {path} (step {step})"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``.

    Refuses up front, with :class:`harness.atomic.DiskFullError`, when the filesystem has less
    free space than the tensors need; on any failure the previous checkpoint stays in place.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), size_hint=estimate_size(obj),
                 describe_previous=checkpoint_note)


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
