"""One distributed entry for every launcher: torchrun, srun / submitit (SLURM), or one process.

:func:`world_info_from_env` reads who this process is; :func:`init_distributed` starts the
process group (NCCL on GPU, gloo on CPU) when there is more than one process. Every helper
here is a no-op on a single process, so the training loop has one code path.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

# An interactive allocation (salloc) exports SLURM_NTASKS>1 to a plain `python` process too;
# setting this to 0 forces one process whatever the environment says.
FORCE_SINGLE = "HARNESS_DISTRIBUTED"


@dataclass(frozen=True)
class DistEnv:
    """Who this process is and where the rendezvous happens."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # torchrun | submitit | slurm | single

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and results."""
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First hostname of a SLURM node list (``gpu[03-05,9],cpu1`` -> ``gpu03``)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _slurm_port(environ: Mapping[str, str]) -> int:
    if "MASTER_PORT" in environ:
        return int(environ["MASTER_PORT"])
    # Every task of a job must agree without talking: derive the port from the job id.
    return 20000 + int(environ.get("SLURM_JOB_ID", "0")) % 40000


def _submitit_env() -> DistEnv | None:
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return None
    env = TorchDistributedEnvironment()
    return DistEnv(env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port,
                   "submitit")


def world_info_from_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Rank, world size, local rank and master from torchrun, submitit, SLURM, or defaults."""
    env = os.environ if environ is None else environ
    if env.get(FORCE_SINGLE) == "0":
        return DistEnv()
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also when started inside SLURM)
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
                       "torchrun")
    if environ is None and env.get("SUBMITIT_EXECUTOR") == "slurm":
        found = _submitit_env()
        if found is not None:
            return found
    if "SLURM_PROCID" in env:
        # A step started by srun knows its own task count; the allocation's may be larger.
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return DistEnv(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or first_host(nodes), _slurm_port(env), "slurm")
    return DistEnv()


_CURRENT = DistEnv()


def init_distributed(device_type: str | None = None, timeout_s: float = 1800.0) -> DistEnv:
    """Start the process group if the environment asks for several processes (idempotent)."""
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        return _CURRENT
    env = world_info_from_env()
    if not env.distributed:
        _CURRENT = env
        return env
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank % max(1, torch.cuda.device_count()))
    backend = "nccl" if device_type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world_size,
                                timeout=dt.timedelta(seconds=timeout_s))
    except Exception as exc:  # the rendezvous address is what a user needs to check
        raise RuntimeError(f"rank {env.rank}/{env.world_size} ({env.launcher}): cannot join the "
                           f"process group at {env.master_addr}:{env.master_port} with "
                           f"{backend}: {exc}") from exc
    _CURRENT = env
    return env


def current() -> DistEnv:
    """The environment of the running process group (single process when none)."""
    if dist.is_available() and dist.is_initialized():
        if _CURRENT.world_size == dist.get_world_size():
            return _CURRENT
        return DistEnv(dist.get_rank(), dist.get_world_size(), 0, launcher="external")
    return DistEnv()


def is_distributed() -> bool:
    """A process group with more than one member is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (builds caches), the others after it, from its results."""
    main = current().is_main
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:  # also when the block failed: the others then fail on their own, not hang
            barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(values: Tensor) -> Tensor:
    """Element-wise maximum over ranks: how ranks agree on stop and non-finite flags."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_reduce_mean(values: Tensor) -> Tensor:
    """Element-wise mean over ranks (``values`` itself on one process)."""
    if is_distributed():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def broadcast_parameters(model: nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere (what DDP does when it wraps a model)."""
    if not is_distributed():
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(model: nn.Module) -> None:
    """Average gradients over ranks in one flat buffer per dtype (the feature-cache path)."""
    if not is_distributed():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    world = dist.get_world_size()
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in same:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def cleanup() -> None:
    """Leave the process group (safe to call when none is running)."""
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = DistEnv()
