"""The embedded dataset is one subpackage: its CLI runs as before and the wheel ships it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def test_module_cli_writes_the_dataset(tmp_path: Path) -> None:
    # Run from another directory, as a user would: only PYTHONPATH points at this checkout.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "harness.data.synthetic", "--out", str(out),
                           "--images", "30", "--pretrain-pairs", "10", "--shard-size", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "30 images" in lines[0], proc.stdout
    assert (out / "dataset_synthetic.json").is_file() and (out / ".complete.json").is_file()


def test_module_cli_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness.data.synthetic", "--out",
                           str(tmp_path / "d"), "--images", "5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "n_images" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_package_discovery_includes_the_subpackage() -> None:
    # What setuptools' find_packages finds with pyproject's include patterns is what the
    # wheel holds (no pip wheel needed to see it).
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(where=str(REPO), include=find["packages"]["find"]["include"])
    assert "harness.data.synthetic" in packages
    modules = {p.stem for p in (REPO / "harness" / "data" / "synthetic").glob("*.py")}
    assert {"__init__", "__main__", "build", "captions", "render", "scenes"} <= modules
