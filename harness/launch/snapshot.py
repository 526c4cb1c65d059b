"""Freeze the code a grid was submitted with, so later edits never reach queued jobs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.launch.provenance import REPO_ROOT

# Without git (an unpacked release), these folders are what a job imports or reads.
CODE_DIRS = ("harness", "cookie", "baselines", "configs")


def _listed_files(root: Path) -> list[Path] | None:
    """Tracked plus untracked-but-not-ignored files, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return [Path(p) for p in out.stdout.decode().split("\0") if p]


def snapshot_code(dest: Path, root: Path = REPO_ROOT) -> Path:
    """Copy the checkout's code into ``dest`` (once); returns ``dest``."""
    if (dest / ".snapshot-complete").is_file():
        return dest
    files = _listed_files(root)
    if files is None:
        files = [p.relative_to(root) for d in CODE_DIRS for p in (root / d).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        source = root / rel
        if rel.parts and rel.parts[0] in ("results", "tests", "docs", "bench") or not source.is_file():
            continue  # jobs never read these; keep snapshots small
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (tmp / ".snapshot-complete").write_text(str(root) + "\n")
    tmp.rename(dest)
    return dest
