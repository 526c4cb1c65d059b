"""Stage ownership: one runner per stage directory, and a record of who that runner is.

``<run_dir>/LOCK`` holds the owner's identity (pid, host, the process's start time from
``/proc/<pid>/stat``, the SLURM job id) while the owner holds an exclusive ``flock`` on it.
The kernel drops the flock when the owner dies, however it dies, so a later runner takes the
stage over; the identity is what other processes (``dry_run``, the report, a runner on a
filesystem where flock is only local) read to tell a live owner from a dead one. A pid alone
is not enough: pids are reused, so a live process with the same pid but another start time
is not the owner.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.record import LOCK_FILE

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the identity check remains
    fcntl = None  # type: ignore[assignment]



class StageBusy(RuntimeError):
    """Another live runner owns this stage; the message says who."""


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if unknown/dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):  # a zombie has exited; only its entry is left
        return None
    return fields[19]  # field 22 of proc(5), counted from field 3


def process_age_s(pid: int | None = None) -> float | None:
    """Seconds since ``pid`` (default: this process) started, or None where /proc cannot say."""
    start = process_start(os.getpid() if pid is None else pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(start) / os.sysconf("SC_CLK_TCK")) if start else None
    except (OSError, ValueError, IndexError):
        return None


def owner_identity(job_id: str | None = None) -> dict[str, Any]:
    """This process as a lock owner: pid, host, start time, SLURM job id, wall time."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": process_start(pid),
            "job_id": job_id, "time": time.time()}


def pid_alive(info: Mapping[str, Any]) -> bool | None:
    """Whether the process an identity names still runs; None when this host cannot tell."""
    pid, host = info.get("pid"), info.get("host")
    if not pid or host != socket.gethostname():
        return None
    if Path("/proc/self/stat").exists():
        start = process_start(int(pid))
        if start is None:
            return False
        return info.get("start") in (None, start)  # a recorded start time must match
    try:  # no /proc (macOS): signal 0 only says whether the pid exists
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_owner(run_dir: Path) -> dict[str, Any]:
    """The identity in a stage's LOCK file; empty when there is none (free stage)."""
    try:
        text = (run_dir / LOCK_FILE).read_text()
    except OSError:
        return {}
    try:
        info = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def describe(info: Mapping[str, Any]) -> str:
    """``pid 123 on host h since 2026-12-01 00:00:00 UTC (job 45)``."""
    if not info.get("pid"):
        return "an owner still writing its record"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("time") or 0)))
    job = f" (SLURM job {info['job_id']})" if info.get("job_id") else ""
    return f"pid {info.get('pid')} on host {info.get('host')} since {since}{job}"


# Descriptors of the locks this process holds. A forked child (a data-loader worker) closes
# its copies: otherwise it would keep the flock alive after its parent stage process died.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


@dataclass
class StageLock:
    """An acquired stage lock; :meth:`release` (or process death) frees it."""

    path: Path
    fd: int

    def release(self) -> None:
        """Clear the owner record, then drop the flock (the file stays: see :func:`acquire`)."""
        if self.fd < 0:
            return
        _HELD.discard(self.fd)
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def acquire(run_dir: Path, *, job_id: str | None = None,
            alive: Callable[[Mapping[str, Any]], bool] | None = None) -> StageLock:
    """Own ``run_dir`` or raise :class:`StageBusy` naming the live owner.

    ``alive`` judges a recorded owner whose flock is free (another host on a filesystem where
    flock does not reach, a SLURM job); by default a process on this host is checked by pid
    and start time, and an owner elsewhere is trusted only while it holds the flock.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    # The file is never deleted: unlinking it would let a waiting runner flock an orphaned
    # inode while a third creates a fresh file, and both would think they own the stage.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StageBusy(f"{run_dir.name} is held by another runner: "
                                f"{describe(read_owner(run_dir))}") from None
        info = read_owner(run_dir)
        if info and not _is_me(info, job_id) and (alive or _default_alive)(info):
            raise StageBusy(f"{run_dir.name} is held by another runner: {describe(info)}")
        data = (json.dumps(owner_identity(job_id), sort_keys=True) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    _HELD.add(fd)
    return StageLock(path, fd)


def _is_me(info: Mapping[str, Any], job_id: str | None) -> bool:
    # A requeued SLURM job (same id) takes over from its own earlier, preempted attempt.
    if job_id and str(info.get("job_id")) == str(job_id):
        return True
    me = owner_identity()
    return info.get("pid") == me["pid"] and info.get("host") == me["host"] \
        and info.get("start") == me["start"]


def _default_alive(info: Mapping[str, Any]) -> bool:
    # Only reached with the flock free: on this host a live pid with the recorded start time
    # would hold it, so a free flock and a dead pid both mean the owner is gone. An owner on
    # another host is trusted (flock may not cross hosts there).
    state = pid_alive(info)
    return True if state is None else state
