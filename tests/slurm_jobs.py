"""Helpers for tests that drive real SLURM jobs: wait for a condition, read a job's fields."""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any, Callable

import pytest


def poll(what: str, check: Callable[[], Any], timeout_s: float = 300.0,
         every_s: float = 0.5) -> Any:
    """``check()``'s first truthy value; fails the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job``'s ``Key=Value`` fields (empty once SLURM forgot the job)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S+)", out.stdout))
