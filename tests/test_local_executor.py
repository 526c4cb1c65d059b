"""Local executors: failures block only dependents; parallel workers and the debug cluster."""

from __future__ import annotations

import json

import pytest

from harness.data.synthetic import ensure_synthetic
from harness.run import main


def _args(tmp_path, *extra):
    return ["grid=smoke", f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'res'}",
            f"data.root={tmp_path / 'data'}", "data.generate.n_images=60",
            "scale.train.steps=3", "data.num_workers=0", *extra]


def test_failed_stage_blocks_its_dependent_and_keeps_going(tmp_path, capsys):
    ensure_synthetic(tmp_path / "data", n_images=60, seed=0, image_size=64)
    (tmp_path / "data" / "dataset_synthetic.json").write_text('{"images": [}')
    assert main(_args(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "1 failed, 1 not run (dependency failed)" in out
    assert "malformed JSON at line 1" in out and "error.txt" in out
    train_dir = next((tmp_path / "runs").glob("finetune-*"))
    assert json.loads((train_dir / "FAILED").read_text())["log"].endswith("error.txt")
    assert not list((tmp_path / "runs").glob("eval-*"))
    table = (tmp_path / "res" / "tables" / "smoke.md").read_text()
    row = next(line for line in table.splitlines() if "| clip |" in line)
    assert "missing" in row or "pending" in row  # a row without a result is never filled in


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["cluster.workers=2", "cluster=debug"])
def test_parallel_workers_and_debug_cluster_run_the_grid(tmp_path, capsys, cluster):
    assert main(_args(tmp_path, cluster)) == 0
    assert "2 ran, 0 already done, 0 failed" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("*/COMPLETE"))) == 2
