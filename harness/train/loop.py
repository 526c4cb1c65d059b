"""The training loop every model shares: distributed, resumable, logged, stopping on NaN.

One code path for one process and for DDP (``harness.dist``): rank 0 writes
checkpoints and metrics, the others wait at barriers. A checkpoint holds everything a step
depends on (weights, optimizer, scheduler, scaler, every rank's RNG, the data position), so
an interrupted run resumed from ``checkpoints/latest.pt`` ends bitwise identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from harness.dist import (
    DistEnv,
    all_reduce_mean,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
)
from harness.procs import Preempted, StopSignals, stop_signals_blocked
from harness.train.checkpoint import (
    atomic_save,
    checkpoint_note,
    load_checkpoint,
    remove_stale_temps,
    rng_state,
    set_rng_state,
)
from harness.train.metrics import MetricsLog
from harness.train.optim import build_optimizer, build_scheduler
from harness.train.sampling import ResumableSampler, build_loader
from harness.train.step import NonFiniteLossError, Stepper, resolve_precision

__all__ = ["NonFiniteLossError", "Preempted", "ResumableSampler", "StopSignals", "TrainSummary",
           "train"]

LOG = logging.getLogger("harness.train")
# Rank r seeds its RNG with seed + r * stride: dropout differs across ranks, rank 0 keeps the
# single-process seed.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class TrainSummary:
    """What a finished training run reports into ``result.json``."""

    steps: int
    samples_seen: int
    wall_s: float
    final_losses: dict[str, float]
    world_size: int = 1


def _to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _device(cfg: Mapping[str, Any], env: DistEnv) -> torch.device:
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        # TF32 matmuls and cuDNN autotuning: free speed on Ampere+; bf16 autocast does the rest.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", True))
    return device


def batch_sizes(cfg: Mapping[str, Any], world_size: int) -> tuple[int, int, int]:
    """(global batch per step, per-rank batch, micro-batch) with clear errors when uneven."""
    total, accum = int(cfg["batch_size"]), int(cfg.get("accum_steps", 1) or 1)
    if total % world_size:
        raise ValueError(f"task.batch_size={total} (global, per step) is not divisible by the "
                         f"world size {world_size}")
    per_rank = total // world_size
    if accum < 1 or per_rank % accum:
        raise ValueError(f"task.accum_steps={accum} must divide the per-rank batch {per_rank} "
                         f"(task.batch_size={total} / world size {world_size})")
    return total, per_rank, per_rank // accum


def _grad_checkpointing(model: nn.Module, enabled: bool) -> None:
    if not enabled:
        return
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is None:
        LOG.warning("task.grad_checkpointing=true but %s has no set_grad_checkpointing(); "
                    "training without it", type(model).__name__)
        return
    setter(True)


def train(model: nn.Module, dataset: Dataset, collate: Callable[[list], dict[str, Tensor]],
          cfg: Mapping[str, Any], run_dir: Path, *, init_state: dict[str, Tensor] | None = None
          ) -> TrainSummary:
    """Train ``model`` for ``cfg['steps']`` steps, resuming from ``checkpoints/latest.pt``."""
    env = init_distributed(torch.device(cfg["device"]).type if cfg.get("device") else None)
    device = _device(cfg, env)
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    seed = int(cfg["seed"])
    torch.manual_seed(seed + RANK_SEED_STRIDE * env.rank)
    total_batch, per_rank, micro = batch_sizes(cfg, env.world_size)
    if init_state is not None:
        model.load_state_dict(init_state)
    _grad_checkpointing(model, bool(cfg.get("grad_checkpointing", False)))
    model.to(device)
    precision = resolve_precision(cfg.get("precision"), device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step, samples, wall = 0, 0, 0.0
    workers = int(cfg.get("num_workers", 0))
    # Rank 0 decides whether to resume: on a network filesystem another rank might not see
    # the file yet, and ranks that disagree would deadlock at the first collective.
    resume = broadcast_object(ckpt_path.is_file() if env.is_main else None)
    if env.is_main:
        for tmp in remove_stale_temps(ckpt_path):
            print(f"[train] removed {tmp.name}, left by a killed checkpoint write", flush=True)
    if resume:
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        step, samples, wall = state["step"], state["samples_seen"], state["wall_s"]
        _restore_rng(state, env, total_batch, workers, dataset)
        # Every rank says so: a requeued multi-task job shows each rank's restart in its log.
        who = f" (rank {env.rank}/{env.world_size})" if env.distributed else ""
        print(f"[train] resumed from {ckpt_path} at step {step}{who}", flush=True)

    stepper = Stepper(model, optimizer, scheduler, cfg, precision, device)
    if stepper.plain_accumulation and env.is_main:
        LOG.warning("task.accum_steps=%d: %s has no train_features/losses_from_features, so "
                    "contrastive negatives are per micro-batch (%d x %d ranks), not the global "
                    "batch of %d; see docs/training.md", stepper.accum, type(model).__name__,
                    micro, env.world_size, total_batch)
    total = int(cfg["steps"])
    pin = cfg.get("pin_memory", "auto")
    loader = build_loader(dataset, collate, batch_size=per_rank, seed=seed, start=samples,
                          rank=env.rank, world_size=env.world_size, num_workers=workers,
                          pin_memory=device.type == "cuda" if pin == "auto" else bool(pin),
                          prefetch_factor=cfg.get("prefetch_factor"))

    def save(complete: bool) -> None:
        rngs = gather_objects(rng_state())  # collective: every rank calls save at this step
        if env.is_main:
            scaler = precision.scaler.state_dict() if precision.scaler is not None else None
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler, "step": step,
                         "samples_seen": samples, "wall_s": wall, "rng": rngs[0],
                         "rng_per_rank": rngs, "world_size": env.world_size,
                         "batch_size": total_batch, "accum_steps": stepper.accum,
                         "num_workers": workers, "complete": complete}, ckpt_path)
        barrier()

    log: MetricsLog | None = None
    losses: dict[str, Tensor] = {}
    final: dict[str, float] = {}
    log_every, ckpt_every = int(cfg["log_every"]), int(cfg["ckpt_every"])
    interval = {"steps": 0, "data": 0.0, "step": 0.0}
    model.train()
    # Handlers first, then the workers: forked workers inherit this process's handlers, and
    # must not inherit the default ones (or submitit's, which would requeue from a worker).
    batches = None
    with StopSignals() as stop:
        try:
            with stop_signals_blocked():
                batches = iter(loader)
            # The metrics log starts TensorBoard's writer thread: only once the loader workers
            # exist, so a forked worker cannot inherit a lock that thread holds.
            log = MetricsLog(run_dir / "metrics.jsonl",
                             tensorboard_dir=run_dir / "tensorboard"
                             if cfg.get("tensorboard", True) else None, total=total,
                             start=step, progress=cfg.get("progress", "auto"),
                             enabled=env.is_main)
            while step < total:
                t0 = time.perf_counter()
                batch = _to_device(next(batches), device)
                t1 = time.perf_counter()
                result = stepper.step(batch, step + 1, lambda: stop.received is not None)
                losses = result.losses
                step += 1
                samples += total_batch
                t2 = time.perf_counter()
                wall += t2 - t0
                interval["steps"] += 1
                interval["data"] += t1 - t0
                interval["step"] += t2 - t0
                log.tick()
                if step % log_every == 0 or step == total:
                    # Mean over ranks (a collective at the same steps on every rank): the loss
                    # of the whole global batch, not rank 0's share of it.
                    final = dict(zip(losses, all_reduce_mean(
                        torch.stack([v.detach().float() for v in losses.values()])).tolist()))
                    n = interval["steps"]
                    record = {"step": step, "loss": sum(final.values()),
                              "lr": scheduler.get_last_lr()[0],
                              **{f"loss/{k}": v for k, v in final.items()},
                              "data_s": interval["data"] / n, "step_s": interval["step"] / n,
                              "samples_per_s": total_batch * n / max(interval["step"], 1e-9),
                              "samples_per_s_per_rank": per_rank * n / max(interval["step"],
                                                                           1e-9)}
                    if result.grad_norm is not None:
                        record["grad_norm"] = float(result.grad_norm)
                    log.write(record)
                    interval = {"steps": 0, "data": 0.0, "step": 0.0}
                if result.stop and step < total:
                    save(complete=False)
                    name = signal.Signals(stop.received).name if stop.received else "stop"
                    raise Preempted(f"signal {name} at step {step}: checkpoint written to "
                                    f"{ckpt_path}; rerun to resume")
                if step % ckpt_every == 0 and step < total:
                    save(complete=False)
        except NonFiniteLossError as exc:
            # The step cannot know the run directory: say here what a rerun would start from.
            raise NonFiniteLossError(f"{exc}; {checkpoint_note(ckpt_path)}") from exc
        finally:
            if log is not None:
                log.close()
            batches = None  # shut worker processes down before the final save
    save(complete=True)
    return TrainSummary(steps=step, samples_seen=samples, wall_s=wall,
                        final_losses=final,
                        world_size=env.world_size)


def _restore_rng(state: dict[str, Any], env: DistEnv, total_batch: int, workers: int,
                 dataset: Dataset) -> None:
    """This rank's RNG from the checkpoint; warn where a changed setup breaks exactness."""
    saved_world = int(state.get("world_size", 1))
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    if saved_world == env.world_size and len(per_rank) == env.world_size:
        set_rng_state(per_rank[env.rank])
    else:
        LOG.warning("checkpoint was written by %d ranks, this run has %d: RNG streams restart, "
                    "so the run is not bitwise identical to an uninterrupted one",
                    saved_world, env.world_size)
        if env.rank == 0:
            set_rng_state(per_rank[0])
    if int(state.get("batch_size", total_batch)) != total_batch:
        raise ValueError(f"checkpoint was trained with task.batch_size="
                         f"{state['batch_size']}, this run asks for {total_batch}: the data "
                         f"position and schedule would not match; use a new run directory")
    if isinstance(dataset, IterableDataset) and int(state.get("num_workers", workers)) != workers:
        LOG.warning("resuming a shard stream with %d workers (checkpoint: %s): each "
                    "(rank, worker) reads its own stream, so the samples differ from an "
                    "uninterrupted run", workers, state.get("num_workers"))
