"""Per-sample seeds: what makes a sample's randomness a function of its position alone.

Data loading (``harness.data``) and training (``harness.train``) both seed from
``(seed, position, ...)`` tuples, so the helpers live below both layers.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 over the parts)."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


@contextmanager
def seeded(*parts: int) -> Iterator[None]:
    """Seed ``random``, NumPy and torch (CPU) from ``parts`` for the block.

    Outside a DataLoader worker the caller's torch RNG state is restored afterwards: in the
    main process it also drives dropout, and a data fetch must not move it. Python's and
    NumPy's states are left as the sample set them (restoring NumPy's costs ~0.3 ms a sample):
    training steps do not draw from them, and they stay a deterministic function of position.
    """
    seed = mix_seed(*parts)
    saved = torch.get_rng_state() if get_worker_info() is None else None
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    # torch.manual_seed also seeds every accelerator backend (~0.5 ms); the CPU generator is
    # the one transforms use.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved)
