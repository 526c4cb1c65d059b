"""Run directories: identity by config hash, atomic writes, and stage status markers.

A stage's directory is ``<run_root>/<task>-<model>-<dataset>-<hash8>``; the hash covers the
stage's resolved config (which names the directories of the stages it depends on), so the
same stage in two grids shares one directory and runs once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Literal, Mapping

# Re-exported: callers in launch/ and older code import the writers from here.
from harness.atomic import atomic_write_json, atomic_write_text  # noqa: F401
from harness.launch.lock import describe, pid_alive, read_owner
from harness.record import DONE_MARKER, FAILED_MARKER, RUNNING_MARKER
from harness.record import record_problem as result_problem

Status = Literal["done", "running", "interrupted", "failed", "pending"]


# Keys that say where things are or how fast to run, not what is computed: two machines with
# data in different folders must agree on a stage's identity.
NON_IDENTITY_KEYS: tuple[str, ...] = (
    "data.root", "data.annotation", "data.image_root", "data.pretrain_manifest",
    "data.pretrain_shards", "data.vocab_cache", "data.num_workers", "data.check_images",
    "task.log_every", "task.num_workers", "task.device", "task.tensorboard", "task.progress",
    "task.pin_memory", "task.prefetch_factor", "task.ddp_find_unused", "task.ddp_static_graph",
    "task.cache_features",
    # Intervals are recomputed from the stored per-query ranks; they do not change the ranks.
    "task.bootstrap",
    "model.params_m",  # a claimed size that tests check, not an input to the stage
    "model.factory",   # where the code lives (module:attr), like any code: not in the identity
)


def _drop_key(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in tree:
        return
    if rest:
        if isinstance(tree[head], dict):
            _drop_key(tree[head], rest)
    else:
        del tree[head]


def stage_hash(identity: Mapping[str, Any]) -> str:
    """First 8 hex digits of the SHA-256 of the identity-relevant part of a resolved config."""
    tree = json.loads(json.dumps(identity, sort_keys=True, default=str))
    for key in NON_IDENTITY_KEYS:
        _drop_key(tree, key)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def stage_dir_name(task: str, model: str, dataset: str, identity: Mapping[str, Any]) -> str:
    """``<task>-<model>-<dataset>-<hash8>``."""
    return f"{task}-{model}-{dataset}-{stage_hash(identity)}"


def stage_identity(cfg: Any) -> dict[str, Any]:
    """The part of a composed config that decides what a stage computes."""
    from harness.config import to_plain

    return {key: to_plain(cfg[key]) for key in ("task", "model", "data", "scale", "seed")}


def stage_dir(cfg: Any, run_root: Path) -> Path:
    """Where the stage described by a composed config keeps its outputs."""
    return run_root / stage_dir_name(cfg.task.name, cfg.model.name, cfg.data.name,
                                     stage_identity(cfg))


# squeue/sacct states of a job that will still run: a stage in one of them is not resubmitted.
ALIVE_JOB_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
    "COMPLETING", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"})


def slurm_job_state(job_id: str) -> str | None:
    """SLURM's state of a job (squeue, then sacct), or None when SLURM cannot say."""
    for cmd in (["squeue", "-h", "-j", job_id, "-o", "%T"],
                ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        words = out.stdout.split() if out.returncode == 0 else []
        if words:
            return words[0]
    return None


def owner_alive(info: Mapping[str, Any]) -> bool:
    """Whether the job or process named in a marker or lock can still finish the stage."""
    if info.get("job_id"):
        state = slurm_job_state(str(info["job_id"]))
        if state is not None:
            return state in ALIVE_JOB_STATES
    alive = pid_alive(info)
    if alive is not None:
        return alive
    # Another host's process cannot be checked from here: trust it while it names one; a
    # marker that names no owner at all (older local runs) has nobody to wait for.
    return bool(info.get("pid") or info.get("job_id"))


def stage_state(run_dir: Path) -> tuple[Status, str | None]:
    """A stage's status and, when it is not plainly done or pending, why.

    ``done`` needs the ``COMPLETE`` marker *and* a valid ``result.json``. ``running`` means a
    live owner: a process holding the stage's lock, or a queued or running SLURM job.
    ``interrupted`` means its owner is gone without a verdict (killed, preempted and not
    requeued, a truncated record): the next run reruns it. A SLURM job dropped before it
    started (its dependency failed) leaves a stage ``pending``.
    """
    if (run_dir / DONE_MARKER).is_file():
        problem = result_problem(run_dir)
        if problem is None:
            return "done", None
        return "interrupted", f"{DONE_MARKER} marker but {problem}"
    if (run_dir / FAILED_MARKER).is_file():
        return "failed", read_marker(run_dir, FAILED_MARKER).get("error")
    owner = read_owner(run_dir)
    if owner:
        if owner_alive(owner):
            return "running", f"owned by {describe(owner)}"
        return "interrupted", f"its owner ({describe(owner)}) is gone"
    if (run_dir / RUNNING_MARKER).is_file():
        info = read_marker(run_dir, RUNNING_MARKER)
        if owner_alive(info):
            return "running", f"owned by {describe(info)}"
        if (run_dir / "env.json").is_file():
            return "interrupted", f"its owner ({describe(info)}) is gone"
    return "pending", None


def stage_status(run_dir: Path) -> Status:
    """done / running / interrupted / failed / pending (see :func:`stage_state`)."""
    return stage_state(run_dir)[0]


def mark(run_dir: Path, marker: str, **info: Any) -> None:
    """Write a status marker (with a timestamp and details), clearing the other markers."""
    for other in (DONE_MARKER, FAILED_MARKER, RUNNING_MARKER):
        if other != marker:
            (run_dir / other).unlink(missing_ok=True)
    atomic_write_json(run_dir / marker, {"time": time.time(), "host": socket.gethostname(),
                                         **info})


def read_marker(run_dir: Path, marker: str) -> dict[str, Any]:
    """Details stored in a marker, or an empty dict."""
    try:
        return json.loads((run_dir / marker).read_text())
    except (OSError, ValueError):
        return {}
