"""What produced a run: code version, packages and hardware, for ``env.json``."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.resources import checkout_root

# None when the harness runs as an installed package: there is no checkout to ask git about.
REPO_ROOT: Path | None = checkout_root()
DISTRIBUTION = "cookie-harness"
PACKAGES = ("torch", "torchvision", "timm", "transformers", "tokenizers", "hydra-core",
            "omegaconf", "submitit", "numpy", "pillow", "webdataset")


SNAPSHOT_GIT = ".snapshot-git.json"  # the git state a submission snapshot was taken from


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def repo_git_state(root: Path) -> dict[str, Any]:
    """SHA and dirty flag of the git work tree whose top level is ``root`` (else None, None)."""
    # A checkout copied into some other repository (or a venv inside a user's project) must not
    # report that repository's commit as the harness's.
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return {"sha": None, "dirty": None}
    sha = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def git_state() -> dict[str, Any]:
    """Commit SHA and whether the work tree differs from it (None outside a git checkout)."""
    if REPO_ROOT is None:
        return {"sha": None, "dirty": None}
    recorded = REPO_ROOT / SNAPSHOT_GIT
    if recorded.is_file():  # a job importing a snapshot: the checkout's state at submission
        return {**json.loads(recorded.read_text()), "snapshot": True}
    return repo_git_state(REPO_ROOT)


def install_state() -> dict[str, Any]:
    """How the harness was obtained: a checkout, or an installed distribution and its version."""
    try:
        version: str | None = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = None
    return {"kind": "checkout" if REPO_ROOT is not None else "package",
            "distribution": DISTRIBUTION, "version": version}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    """CPU/GPU description and thread count."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda_version"] = torch.version.cuda
    return info


def environment() -> dict[str, Any]:
    """The whole ``env.json`` record."""
    return {"git": git_state(), "install": install_state(), "packages": package_versions(), "device": device_info(),
            "python": platform.python_version(),
            # Where the code was imported from: a submission snapshot for SLURM jobs.
            "code_path": str(Path(__file__).resolve().parents[1])}
