"""The training loop every model shares: resumable, logged, stopping on non-finite losses."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.train.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from harness.train.optim import build_optimizer, build_scheduler


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the term."""


class Preempted(RuntimeError):
    """SLURM asked the job to stop (SIGTERM/SIGUSR2); a checkpoint was written first."""


class StopSignals:
    """Turns SIGTERM / SIGUSR2 into a flag the loop checks at each step boundary.

    SLURM sends one of them before a time limit or preemption; stopping between steps is what
    makes the checkpoint consistent (never mid-update).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class ResumableSampler(Sampler[int]):
    """An endless stream of per-epoch permutations that can start at any sample position.

    Batches are consecutive slices of this stream, so the data position of a run is a single
    number (samples consumed) and a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return sys.maxsize


@dataclass(frozen=True)
class TrainSummary:
    """What a finished training run reports into ``result.json``."""

    steps: int
    samples_seen: int
    wall_s: float
    final_losses: dict[str, float]


def _to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _check_finite(losses: Mapping[str, Tensor], step: int) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLossError(
                f"step {step}: loss term {name!r} is {value.item()}; training stopped, the last "
                f"good checkpoint is kept")


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line) plus a plain progress line on stdout."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush, so a killed job keeps its curve."""
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in record.items())
        print(f"[train] {shown}", flush=True)

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def train(model: nn.Module, dataset: Dataset, collate: Callable[[list], dict[str, Tensor]],
          cfg: Mapping[str, Any], run_dir: Path, *, init_state: dict[str, Tensor] | None = None
          ) -> TrainSummary:
    """Train ``model`` for ``cfg['steps']`` steps, resuming from ``checkpoints/latest.pt``."""
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    torch.manual_seed(int(cfg["seed"]))
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step, samples, wall = 0, 0, 0.0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, samples, wall = state["step"], state["samples_seen"], state["wall_s"]
        set_rng_state(state["rng"])
        print(f"[train] resumed from {ckpt_path} at step {step}", flush=True)

    batch_size, total = int(cfg["batch_size"]), int(cfg["steps"])
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                        sampler=ResumableSampler(len(dataset), int(cfg["seed"]), samples),
                        num_workers=int(cfg.get("num_workers", 0)),
                        pin_memory=device.type == "cuda", drop_last=True)

    def save(complete: bool) -> None:
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "samples_seen": samples,
                     "wall_s": wall, "rng": rng_state(), "complete": complete}, ckpt_path)

    log = MetricsLog(run_dir / "metrics.jsonl")
    losses: dict[str, Tensor] = {}
    model.train()
    batches = iter(loader)
    with StopSignals() as stop:
        try:
            while step < total:
                t0 = time.perf_counter()
                batch = _to_device(next(batches), device)
                t1 = time.perf_counter()
                losses = _optimise(model, batch, optimizer, scheduler, cfg, step)
                step += 1
                samples += batch_size
                t2 = time.perf_counter()
                wall += t2 - t0
                if step % int(cfg["log_every"]) == 0 or step == total:
                    log.write({"step": step, "loss": float(sum(losses.values())),
                               "lr": scheduler.get_last_lr()[0],
                               **{f"loss/{k}": float(v) for k, v in losses.items()},
                               "data_s": t1 - t0, "step_s": t2 - t0,
                               "samples_per_s": batch_size / max(t2 - t0, 1e-9)})
                if stop.received is not None and step < total:
                    save(complete=False)
                    raise Preempted(f"signal {signal.Signals(stop.received).name} at step {step}:"
                                    f" checkpoint written to {ckpt_path}; rerun to resume")
                if step % int(cfg["ckpt_every"]) == 0 and step < total:
                    save(complete=False)
        finally:
            log.close()
    save(complete=True)
    return TrainSummary(steps=step, samples_seen=samples, wall_s=wall,
                        final_losses={k: float(v) for k, v in losses.items()})


def _optimise(model: nn.Module, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Mapping[str, Any],
              step: int) -> dict[str, Tensor]:
    """One forward/backward/update; returns the detached loss terms."""
    losses = model.losses(batch)
    _check_finite(losses, step + 1)  # steps are counted from 1 in logs and messages
    loss = torch.stack(list(losses.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.get("grad_clip"):
        nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
    optimizer.step()
    scheduler.step()
    if hasattr(model, "clamp_logit_scale"):
        model.clamp_logit_scale()
    return {k: v.detach() for k, v in losses.items()}
