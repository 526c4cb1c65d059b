"""Timing primitives: latency statistics, budgeted batch workloads, hardware description.

Every timed region is bracketed by ``torch.cuda.synchronize`` on CUDA (kernels run
asynchronously) and runs under ``torch.inference_mode``. A workload is **measured** outright when
it completes within its time budget, otherwise **extrapolated** linearly from the whole batches
that did; the record says which and how large the sample was.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Callable, Mapping, Sequence

import torch

#: Precision name -> autocast dtype (``None``: no autocast, plain fp32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock seconds of repeated calls of one function."""

    median_s: float
    p90_s: float
    mean_s: float
    min_s: float
    repeats: int

    @classmethod
    def from_times(cls, times: Sequence[float]) -> LatencyStats:
        """Summary of per-call durations in seconds."""
        ordered = sorted(times)
        return cls(
            median_s=_percentile(ordered, 0.5), p90_s=_percentile(ordered, 0.9),
            mean_s=statistics.fmean(ordered), min_s=ordered[0], repeats=len(ordered),
        )

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON-ready form."""
        return asdict(self)


def _percentile(ordered: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default), so p90 >= median always.
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _sync(device: torch.device) -> None:
    # Kernels run asynchronously: without this the clock would stop before the work does.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    device: torch.device | str,
    budget_s: float | None = None,
) -> LatencyStats:
    """Time ``repeats`` calls of ``fn`` under inference mode, after ``warmup`` untimed calls.

    With ``budget_s``, timing stops early once that many seconds were timed (after at least
    ``min(3, repeats)`` calls); ``repeats`` in the result says how many ran.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    device = torch.device(device)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        while len(times) < repeats:
            _sync(device)
            start = perf_counter()
            fn()
            _sync(device)
            times.append(perf_counter() - start)
            if budget_s is not None and sum(times) > budget_s and len(times) >= min(3, repeats):
                break
    return LatencyStats.from_times(times)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_info(device: torch.device | str) -> dict[str, object]:
    """Hardware string and the software versions that timings depend on."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hardware = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        hardware = f"{_cpu_name()} ({os.cpu_count()} logical CPUs)"
    return {
        "hardware": hardware, "device": device.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(),
    }


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def in_precision(
    fn: Callable[[int], object], device: torch.device, precision: str
) -> Callable[[int], object]:
    """``fn`` wrapped so that every call runs under :func:`autocast_context`."""
    def run(n: int) -> object:
        with autocast_context(device, precision):
            return fn(n)
    return run


def _warm_up(
    step: Callable[[int], object], batch_size: int, device: torch.device, batches: int
) -> int:
    """Run untimed batches, halving the batch size on out-of-memory; the size that fits."""
    while True:
        try:
            for _ in range(batches):
                step(batch_size)
            _sync(device)
            return batch_size
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _run_within_budget(
    step: Callable[[int], object], sizes: Sequence[int], device: torch.device, budget_s: float
) -> tuple[int, float]:
    """Run batches until all are done or the budget is spent: ``(units done, seconds)``."""
    done, start = 0, perf_counter()
    for index, size in enumerate(sizes):
        step(size)
        done += size
        if index + 1 < len(sizes):
            # The clock is read per batch, so on CUDA each batch must finish before it is read.
            _sync(device)
            if perf_counter() - start > budget_s:
                break
    _sync(device)
    return done, perf_counter() - start


def time_workload(
    step: Callable[[int], object],
    *,
    units: int,
    batch_size: int,
    device: torch.device | str,
    budget_s: float,
    unit: str = "items",
    warmup: int = 1,
) -> dict[str, object]:
    """Seconds to run ``units`` items through ``step(n)``: measured, or extrapolated past budget.

    Batches run in order until all are done (``measured``) or ``budget_s`` is spent; then the
    time of the whole batches done so far is scaled linearly to ``units`` (``extrapolated``). At
    least one untimed warm-up batch runs first, which also finds a batch size that fits memory.
    """
    if units < 1 or batch_size < 1:
        raise ValueError(f"need units >= 1 and batch_size >= 1, got {units} and {batch_size}")
    device = torch.device(device)
    warmup = max(1, warmup)
    with torch.inference_mode():
        used_batch = _warm_up(step, min(batch_size, units), device, warmup)
        full, rest = divmod(units, used_batch)
        sizes = [used_batch] * full + ([rest] if rest else [])
        sample_units, sample_s = _run_within_budget(step, sizes, device, budget_s)
    measured = sample_units == units
    seconds = sample_s if measured else sample_s / sample_units * units
    return {
        "status": "measured" if measured else "extrapolated", "seconds": seconds,
        "unit": unit, "units": units, "seconds_per_unit": seconds / units,
        "batch_size": used_batch, "requested_batch_size": batch_size,
        "sample_units": sample_units, "sample_seconds": sample_s, "warmup_batches": warmup,
        "budget_s": budget_s,
    }


def overall_status(parts: Sequence[Mapping[str, object]]) -> str:
    """``measured`` if every workload was, else ``extrapolated``."""
    return "measured" if all(p["status"] == "measured" for p in parts) else "extrapolated"
