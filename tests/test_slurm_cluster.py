"""The local one-node SLURM cluster (scripts/slurm-local.sh) runs, accounts and chains jobs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

TIMEOUT_S = 60


def _run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def _sbatch(partition: str, tmp_path: Path, *args: str) -> str:
    out = _run("sbatch", "--parsable", f"--partition={partition}", "--job-name=pytest-slurm",
               *args, cwd=tmp_path)
    return out.strip().split(";")[0]


def _sacct(job_id: str) -> tuple[str, str]:
    """(State, ExitCode) of the job allocation as slurmdbd records it, ('', '') if not yet."""
    out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode")
    line = out.strip().splitlines()[0] if out.strip() else "|"
    state, exit_code = line.split("|")
    return state.split(" ")[0], exit_code  # "CANCELLED by 0" -> "CANCELLED"


def _wait_sacct(job_id: str, states: set[str]) -> tuple[str, str]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        state, exit_code = _sacct(job_id)
        if state in states:
            return state, exit_code
        assert time.monotonic() < deadline, f"job {job_id}: sacct state {state!r}, wanted {states}"
        time.sleep(0.25)


def _scontrol_fields(job_id: str) -> dict[str, str]:
    out = _run("scontrol", "-o", "show", "job", job_id)
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def test_sbatch_wait_runs_job_and_sacct_reports_completed(slurm_cluster, tmp_path):
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/bash\necho \"hello from job $SLURM_JOB_ID on $SLURM_JOB_PARTITION\"\n")
    job_id = _sbatch(slurm_cluster, tmp_path, "--wait", "--output=hello-%j.out", str(script))
    out = (tmp_path / f"hello-{job_id}.out").read_text()
    assert out.strip() == f"hello from job {job_id} on {slurm_cluster}"
    assert _wait_sacct(job_id, {"COMPLETED", "FAILED"}) == ("COMPLETED", "0:0")


def test_sacct_reports_failed_with_exit_code(slurm_cluster, tmp_path):
    job_id = _sbatch(slurm_cluster, tmp_path, "--output=/dev/null", "--wrap=exit 3")
    assert _wait_sacct(job_id, {"COMPLETED", "FAILED"}) == ("FAILED", "3:0")


def test_afterok_on_failed_job_never_runs_dependent(slurm_cluster, tmp_path):
    # Held until both dependents exist, so the failure is seen through the dependency.
    failing = _sbatch(slurm_cluster, tmp_path, "--hold", "--output=/dev/null", "--wrap=exit 3")
    marker = tmp_path / "ran"
    wrap = f"--wrap=touch {marker}"
    killed = _sbatch(slurm_cluster, tmp_path, f"--dependency=afterok:{failing}",
                     "--kill-on-invalid-dep=yes", "--output=/dev/null", wrap)
    stuck = _sbatch(slurm_cluster, tmp_path, f"--dependency=afterok:{failing}",
                    "--kill-on-invalid-dep=no", "--output=/dev/null", wrap)
    try:
        _run("scontrol", "release", failing)
        assert _wait_sacct(failing, {"COMPLETED", "FAILED"})[0] == "FAILED"
        # --kill-on-invalid-dep=yes: cancelled as soon as the dependency can never be met.
        assert _wait_sacct(killed, {"CANCELLED", "COMPLETED", "FAILED"})[0] == "CANCELLED"
        job = _scontrol_fields(killed)
        assert (job["JobState"], job["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
        # Without it the job stays pending for ever, with the reason on show.
        deadline = time.monotonic() + TIMEOUT_S
        while (job := _scontrol_fields(stuck))["Reason"] != "DependencyNeverSatisfied":
            assert time.monotonic() < deadline, f"job {stuck}: {job['JobState']} {job['Reason']}"
            time.sleep(0.25)
        assert job["JobState"] == "PENDING"
        assert job["Dependency"] == f"afterok:{failing}(failed)"
    finally:
        subprocess.run(["scancel", failing, killed, stuck], capture_output=True)
    assert not marker.exists()
