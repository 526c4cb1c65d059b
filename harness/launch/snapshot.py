"""Freeze the code a grid was submitted with, so later edits never reach queued jobs.

From a checkout the snapshot is the checkout's files (configs/ included); from an installed
package it is the installed packages themselves, whose ``harness/_data`` carries the configs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

from harness.launch.provenance import REPO_ROOT, SNAPSHOT_GIT, repo_git_state

# Without git (an unpacked release), these folders are what a job imports or reads.
CODE_DIRS = ("harness", "cookie", "baselines", "configs")
ROOT_FILES = ("pyproject.toml",)
PACKAGES = ("harness", "cookie", "baselines")


def _listed_files(root: Path) -> list[Path] | None:
    """Tracked plus untracked-but-not-ignored files, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return [Path(p) for p in out.stdout.decode().split("\0") if p]


def _checkout_files(root: Path) -> dict[Path, Path]:
    """Relative path -> source file for a checkout (or an unpacked release)."""
    files = _listed_files(root)
    if files is None:
        files = [p.relative_to(root) for d in CODE_DIRS for p in (root / d).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        # harness.resources recognises a checkout by its pyproject.toml beside configs/.
        files += [Path(f) for f in ROOT_FILES if (root / f).is_file()]
    return {rel: root / rel for rel in files}


def _installed_files() -> dict[Path, Path]:
    """Relative path -> source file for the installed packages, wherever each was imported from."""
    out: dict[Path, Path] = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"cannot snapshot package {name!r}: it is not importable")
        pkg_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
        for p in pkg_dir.rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                out[Path(name) / p.relative_to(pkg_dir)] = p
    return out


def snapshot_code(dest: Path, root: Path | None = REPO_ROOT) -> Path:
    """Copy the code jobs import into ``dest`` (once); returns ``dest``."""
    if (dest / ".snapshot-complete").is_file():
        return dest
    files = _checkout_files(root) if root is not None else _installed_files()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, source in files.items():
        if rel.parts and rel.parts[0] in ("results", "tests", "docs", "bench") or not source.is_file():
            continue  # jobs never read these; keep snapshots small
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    git = repo_git_state(root) if root is not None else {"sha": None, "dirty": None}
    (tmp / SNAPSHOT_GIT).write_text(json.dumps(git) + "\n")
    (tmp / ".snapshot-complete").write_text(f"{root or 'installed packages'}\n")
    tmp.rename(dest)
    return dest
