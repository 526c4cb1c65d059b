"""CI fails when the one-node SLURM cluster cannot start: the SLURM tests must run there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

START = Path(__file__).resolve().parents[1] / ".ci" / "start-slurm"


def _checkout(tmp_path: Path, start_rc: int) -> tuple[Path, dict[str, str]]:
    """A copy of .ci/start-slurm beside a scripts/slurm-local.sh that exits ``start_rc``."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(START, tmp_path / ".ci" / "start-slurm")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "slurm-local.sh").write_text(f"#!/usr/bin/env bash\nexit {start_rc}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/usr/bin/env bash\nexit 0\n")
    sbatch.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return tmp_path, env


def _run(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(root / ".ci" / "start-slurm")], env=env, text=True,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_ci_fails_when_slurm_does_not_start(tmp_path: Path, ci: str) -> None:
    root, env = _checkout(tmp_path, start_rc=1)
    done = _run(root, {**env, "CI": ci})
    assert done.returncode != 0
    assert "did not start" in done.stderr and "failing" in done.stderr


def test_outside_ci_a_failed_start_only_warns(tmp_path: Path) -> None:
    root, env = _checkout(tmp_path, start_rc=1)
    done = _run(root, env)
    assert done.returncode == 0 and "slurm tests will skip" in done.stderr


def test_ci_passes_when_slurm_starts(tmp_path: Path) -> None:
    root, env = _checkout(tmp_path, start_rc=0)
    assert _run(root, {**env, "CI": "true"}).returncode == 0


def test_ci_run_uses_the_failing_start() -> None:
    script = (START.parent / "run").read_text()
    lines = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert "bash .ci/start-slurm" in lines
    assert lines.index("bash .ci/start-slurm") < lines.index("nox -s tests")
    assert "set -euo pipefail" in lines  # a failed start stops the script
