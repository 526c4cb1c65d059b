"""Bootstrap intervals of retrieval metrics from per-query ranks, resampling queries.

Pure functions on 1-based rank arrays (one per direction: ``i2t`` resamples images, ``t2i``
captions, ``t2t`` captions, ``i2i`` images). Each direction is resampled independently with
its own seeded stream, ``samples`` times, vectorised over the resamples, and the interval is
the percentile interval at ``level``.

Drawing ``samples x n`` query indices would cost about as much as a tenth of the ranking pass
at COCO-5K size (25,000 captions x 1,000 resamples), so each statistic is drawn from the exact
distribution a query resample induces, which needs O(samples) random numbers:

* R@K for every K at once: the counts of resampled queries with rank <= K1, in (K1, K2], ...,
  above the largest K are multinomial(n, the observed fractions), so one multinomial draw per
  resample gives all R@K jointly, and RSUM adds the two directions' draws.
* median rank: the k-th smallest of n resampled ranks is the observed sorted rank at index
  floor(n * U) with U the k-th order statistic of n uniforms, Beta(k, n + 1 - k); the next
  order statistic (even n) is U + (1 - U) * Beta(1, n - k).
* mean rank: the only statistic without an O(1) exact draw. A resample's mean is a mean of n
  iid draws from the observed ranks, drawn here from its normal limit (the observed mean, the
  observed spread / sqrt(n)); :func:`resampled_mean_ranks` draws it exactly and slowly, and the
  tests check the two agree.

:mod:`harness.analysis.compare` resamples query indices instead (the paired difference needs
both runs' ranks at the same queries).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
# Directions whose R@K add up to RSUM (the cross-modal ones, as in metrics_from_ranks).
RSUM_DIRECTIONS = ("i2t", "t2i")


def check_ranks(ranks: ArrayLike, name: str) -> np.ndarray:
    """``ranks`` as a 1-D int64 array of 1-based ranks; ValueError naming ``name`` otherwise."""
    arr = np.asarray(ranks)
    if arr.ndim != 1:
        raise ValueError(f"ranks {name!r} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"ranks {name!r} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ranks {name!r} must be integers, got {arr.dtype}")
    if int(arr.min()) < 1:
        j = int(np.argmin(arr))
        raise ValueError(f"ranks {name!r}[{j}] = {int(arr[j])}: ranks are 1-based")
    return arr.astype(np.int64, copy=False)


def check_settings(samples: int, level: float) -> None:
    """ValueError unless ``samples`` is a positive int and 0 < ``level`` < 1."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"bootstrap samples must be a positive integer, got {samples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"bootstrap level must lie strictly between 0 and 1, got {level!r}")


def direction_rng(seed: int, direction: str) -> np.random.Generator:
    """The seeded stream of one direction: the same whichever other directions exist."""
    return np.random.default_rng([int(seed), zlib.crc32(direction.encode())])


def recall_samples(ranks: np.ndarray, ks: Sequence[int], samples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """[samples, len(ks)] resampled R@K in percent, all K from one multinomial per resample."""
    ks = sorted(ks)
    n = ranks.size
    below = np.array([np.count_nonzero(ranks <= k) for k in ks], dtype=np.int64)
    bins = np.diff(np.concatenate([[0], below, [n]]))
    counts = rng.multinomial(n, bins / n, size=samples)
    return 100.0 * np.cumsum(counts[:, :-1], axis=1) / n


def median_samples(ranks: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """[samples] resampled statistical medians, from exact order statistics of uniforms."""
    s = np.sort(ranks).astype(np.float64)
    n = s.size
    k = (n + 1) // 2  # 1-based index of the (lower) middle order statistic
    u = rng.beta(k, n + 1 - k, size=samples)
    low = s[np.minimum((n * u).astype(np.int64), n - 1)]
    if n % 2:
        return low
    # The smallest of the n - k points above U is uniform-min on (U, 1).
    u2 = u + (1.0 - u) * rng.beta(1, n - k, size=samples)
    return (low + s[np.minimum((n * u2).astype(np.int64), n - 1)]) / 2.0


def mean_samples(ranks: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """[samples] resampled mean ranks from their normal limit (mean, population sd / sqrt n)."""
    r = ranks.astype(np.float64)
    drawn = r.mean() + r.std() / np.sqrt(r.size) * rng.standard_normal(samples)
    # A resample's mean lies between the smallest and largest rank; the normal tail of a
    # handful of queries would not.
    return np.clip(drawn, r.min(), r.max())


def resampled_mean_ranks(ranks: np.ndarray, samples: int, rng: np.random.Generator,
                         block: int = 100) -> np.ndarray:
    """[samples] mean ranks of explicit query resamples (exact, O(samples x n))."""
    out = np.empty(samples)
    for b0 in range(0, samples, block):
        b = min(block, samples - b0)
        out[b0:b0 + b] = ranks[rng.integers(0, ranks.size, (b, ranks.size))].mean(1)
    return out


def percentile_interval(values: np.ndarray, level: float) -> list[float]:
    """[low, high]: the central ``level`` percentile interval of ``values``."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return [float(low), float(high)]


def direction_samples(ranks: ArrayLike, direction: str, ks: Sequence[int], samples: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Resampled values of one direction's metrics, keyed like metrics_from_ranks."""
    r = check_ranks(ranks, direction)
    rng = direction_rng(seed, direction)
    recalls = recall_samples(r, ks, samples, rng)
    out = {f"{direction}_R@{k}": recalls[:, i] for i, k in enumerate(sorted(ks))}
    out[f"{direction}_medr"] = median_samples(r, samples, rng)
    out[f"{direction}_meanr"] = mean_samples(r, samples, rng)
    return out


def bootstrap_intervals(ranks: Mapping[str, ArrayLike], ks: Sequence[int] = DEFAULT_KS,
                        samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                        level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """The ``intervals`` block: ``bounds`` (metric -> [low, high] for every R@K, rsum, medr and
    meanr of each direction in ``ranks``), plus ``samples``, ``seed`` and ``level``."""
    check_settings(samples, level)
    ks = tuple(ks)
    if not ks or len(set(ks)) != len(ks) or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks!r}")
    drawn: dict[str, np.ndarray] = {}
    for direction, r in ranks.items():
        drawn.update(direction_samples(r, direction, ks, samples, seed))
    bounds: dict[str, Any] = {key: percentile_interval(v, level) for key, v in drawn.items()}
    if all(d in ranks for d in RSUM_DIRECTIONS):
        # Directions are resampled independently, so their draws add sample by sample.
        rsum = sum(drawn[f"{d}_R@{k}"] for d in RSUM_DIRECTIONS for k in ks)
        bounds["rsum"] = percentile_interval(rsum, level)
    return {"bounds": bounds, "samples": int(samples), "seed": int(seed), "level": float(level)}
