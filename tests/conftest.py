"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO_ROOT / "scripts" / "slurm-local.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """Bring up the one-node cluster of scripts/slurm-local.sh (fast when it is already up).

    Skips when SLURM is not installed. Yields the partition name jobs should use.
    """
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (no sbatch on PATH); "
                    "run `scripts/slurm-local.sh start` as root to enable these tests")
    partition = os.environ.get("SLURM_PARTITION", "debug")
    if os.geteuid() != 0:
        # The script manages system daemons and needs root: use a cluster that is already up.
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
        if " is UP" not in ping.stdout:
            pytest.skip("SLURM is installed but no controller answers, and starting the local "
                        "cluster (scripts/slurm-local.sh start) needs root")
        yield partition
        return
    proc = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{SLURM_LOCAL} start failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}", pytrace=False)
    yield partition
