"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Temp files and folders are created with the modes ``open()`` and ``mkdir()`` use (0666 / 0777
less the umask, default ACLs applied by the kernel), not ``tempfile``'s private 0600 / 0700:
on a shared cluster a colleague must be able to read results, tables and checkpoints.

A write that does not fit raises :class:`DiskFullError` naming the path, the bytes needed and
the bytes free, and leaves the previous file in place.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Callable

# Quota exhaustion (EDQUOT, common on cluster home and scratch folders) is a full disk too.
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_TEMP_ATTEMPTS = 100


class DiskFullError(OSError):
    """A write that does not fit on its filesystem; the message names the path and the sizes."""


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(folder: Path, prefix: str, suffix: str) -> Path:
    return folder / f"{prefix}{secrets.token_hex(4)}{suffix}"


def create_temp_file(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new, uniquely named file in ``folder`` opened for writing, mode 0666 less the umask."""
    for _ in range(_TEMP_ATTEMPTS):
        tmp = _temp_name(folder, prefix, suffix)
        try:
            # O_EXCL: never another process's temp; the kernel applies umask and default ACLs.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temp file name {prefix}*{suffix} after "
                          f"{_TEMP_ATTEMPTS} tries")


def create_temp_dir(folder: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``folder``, mode 0777 less the umask."""
    for _ in range(_TEMP_ATTEMPTS):
        tmp = _temp_name(folder, prefix, "")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temp folder name {prefix}* after "
                          f"{_TEMP_ATTEMPTS} tries")


def free_bytes(folder: Path) -> int:
    """Bytes this user may still write on the filesystem holding ``folder``."""
    return shutil.disk_usage(folder).free


def previous_file(path: Path) -> str:
    """What a failed write of ``path`` left: the old file, unchanged, or nothing."""
    if path.exists():
        return f"the previous {path.name} is kept unchanged at {path}"
    return f"nothing was written at {path} (no earlier version existed)"


def disk_full_error(path: Path, *, free: int, needed: int | None = None,
                    written: int | None = None, left: str = "") -> DiskFullError:
    """The error for a write of ``path`` that does not fit; ``left`` says what is kept."""
    if needed is not None:
        what = f"not enough disk space for {path}: needs at least {needed:,} bytes, {free:,} free"
    else:
        what = f"disk full while writing {path}: {written or 0:,} bytes written, {free:,} free"
    return DiskFullError(errno.ENOSPC, f"{what}; {left or previous_file(path)}")


def _full_disk_cause(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT behind ``exc``, also when a library re-raised it as another type."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return current
        # torch.save reports a failed write as RuntimeError, the OSError as its context.
        current = current.__cause__ or current.__context__
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, size_hint: int | None = None,
                 describe_previous: Callable[[Path], str] = previous_file) -> None:
    """Call ``write`` on a temp file beside ``path``, fsync it, rename it over ``path``.

    ``size_hint`` (bytes, a lower bound) refuses the write up front when the filesystem has
    less free space. A full disk raises :class:`DiskFullError` naming ``path``; whatever the
    failure, the temp file is removed and ``path`` keeps its previous content.
    ``describe_previous`` words what is kept in that message.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if size_hint is not None:
        free = free_bytes(path.parent)
        if size_hint > free:
            raise disk_full_error(path, free=free, needed=size_hint,
                                  left=describe_previous(path))
    fd, tmp = create_temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = _size(tmp)
        tmp.unlink(missing_ok=True)
        if _full_disk_cause(exc) is not None:
            raise disk_full_error(path, free=free_bytes(path.parent), written=written,
                                  left=describe_previous(path)) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON (sorted keys, indented) written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
