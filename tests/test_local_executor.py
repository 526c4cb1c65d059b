"""Local executors: failures block only dependents; parallel workers and the debug cluster."""

from __future__ import annotations

import json
import sys

import pytest

from harness.data.synthetic import ensure_synthetic
from harness.launch.executor import launchable, stage_process_context, threads_per_worker
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
    # Loader workers inside a spawned stage process get the collate function pickled.
    assert main(_args(tmp_path, cluster, "data.num_workers=2")) == 0
    assert "2 ran, 0 already done, 0 failed" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("*/COMPLETE"))) == 2
    if cluster == "cluster.workers=2":  # training ran on its share of the CPUs; the eval,
        for env in (tmp_path / "runs").glob("*/env.json"):  # timed, alone on all of them
            threads = json.loads(env.read_text())["device"]["torch_threads"]
            alone = env.parent.name.startswith("eval-")
            assert threads == threads_per_worker(1 if alone else 2), env.parent.name


@pytest.mark.skipif(sys.platform != "linux", reason="fork servers: Linux here")
def test_stage_processes_start_with_the_harness_already_imported():
    """Stage processes fork from a server that imported the stage runner (and torch) once,
    instead of spending seconds on imports each; the server itself ran no torch code."""
    context = stage_process_context()
    assert context.get_start_method() == "forkserver"
    probe = ("sorted(m for m in ('harness.stage', 'torch', 'timm', 'transformers') "
             "if m in __import__('sys').modules)")
    with context.Pool(1) as pool:
        assert pool.apply(eval, (probe,)) == ["harness.stage", "timm", "torch", "transformers"]
        # No intra-op work ran before the fork: the child still sets its own thread count.
        assert pool.apply(eval, ("__import__('torch').set_num_threads(1) or "
                                 "__import__('torch').get_num_threads()",)) == 1


def test_threads_per_worker_splits_the_cpus():
    assert threads_per_worker(2, cpus=2) == 1
    assert threads_per_worker(3, cpus=8) == 2
    assert threads_per_worker(4, cpus=2) == 1
    assert threads_per_worker(1, cpus=16) == 16


def test_timed_stages_run_alone_and_others_together():
    class Stage:
        def __init__(self, task):
            self.task = task

    train, other, evaluation, bench = (Stage(t) for t in ("finetune", "pretrain", "eval", "bench"))
    assert launchable([train, evaluation, other], []) == [train, other]
    assert launchable([evaluation, bench], ["finetune"]) == []  # waits for the training
    assert launchable([evaluation, bench], []) == [evaluation]  # one at a time
    assert launchable([train], ["bench"]) == []  # nothing joins a timed stage
