"""Grids through real sbatch on the one-node cluster (scripts/slurm-local.sh)."""

from __future__ import annotations

import json

import pytest

from harness.run import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _args(tmp_path, *extra):
    return ["grid=smoke", "cluster=slurm_local", f"run_root={tmp_path / 'runs'}",
            f"results_dir={tmp_path / 'results'}", f"data.root={tmp_path / 'data'}",
            "data.generate.n_images=60", "scale.train.steps=6", "task.log_every=2",
            "data.num_workers=0", "cluster.wait=true", *extra]


def _manifest(tmp_path):
    paths = sorted((tmp_path / "runs" / ".grids").glob("smoke-*.json"))
    return json.loads(paths[-1].read_text())


def test_dag_runs_with_afterok_and_rerun_skips_done(slurm_cluster, tmp_path, capsys):
    assert main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "2 submitted" in out
    stages = _manifest(tmp_path)["stages"]
    train = next(s for s in stages.values() if s["task"] == "finetune")
    evaluation = next(s for s in stages.values() if s["task"] == "eval")
    assert evaluation["dependency"] == f"afterok:{train['job_id']}"
    assert (tmp_path / "results" / "tables" / "smoke.md").is_file()
    eval_dir = next((tmp_path / "runs").glob("eval-*"))
    result = json.loads((eval_dir / "result.json").read_text())
    assert result["metrics"]["rsum"] > 0
    env = json.loads((eval_dir / "env.json").read_text())
    assert env["git"]["sha"] is None or len(env["git"]["sha"]) == 40
    # Jobs ran from the snapshot, not from the checkout.
    snapshots = list((tmp_path / "runs" / ".snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "harness" / "stage.py").is_file()
    assert env["code_path"] == str(snapshots[0] / "harness")

    assert main(_args(tmp_path)) == 0
    assert "0 submitted, 2 already done" in capsys.readouterr().out


def test_failed_stage_blocks_dependents_and_rerun_resubmits_it(slurm_cluster, tmp_path, capsys):
    from harness.data.synthetic import ensure_synthetic

    ensure_synthetic(tmp_path / "data", n_images=60, seed=0, image_size=64)
    annotation = json.loads((tmp_path / "data" / "dataset_synthetic.json").read_text())
    train_image = next(i for i in annotation["images"] if i["split"] == "train")
    broken = tmp_path / "data" / train_image["filepath"] / train_image["filename"]
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[: len(good_bytes) // 3])  # a truncated JPEG

    assert main(_args(tmp_path)) == 1
    out = capsys.readouterr().out
    train_dir = next((tmp_path / "runs").glob("finetune-*"))
    eval_dir = next((tmp_path / "runs").glob("eval-*"))
    assert f"{train_dir.name} failed" in out
    failed = json.loads((train_dir / "FAILED").read_text())
    assert "DataError" in failed["error"] and train_image["filename"] in failed["error"]
    assert not (eval_dir / "env.json").exists()  # afterok never satisfied: it never started
    assert main([*_args(tmp_path), "dry_run=true"]) == 0
    plan = capsys.readouterr().out
    assert f"{train_dir.name} finetune clip synthetic failed" in plan
    assert f"{eval_dir.name} eval clip synthetic pending" in plan

    broken.write_bytes(good_bytes)
    assert main(_args(tmp_path)) == 0
    assert "2 submitted" in capsys.readouterr().out
    assert (eval_dir / "result.json").is_file()


def test_rejected_sbatch_option_is_reported_with_its_stage(slurm_cluster, tmp_path, capsys):
    assert main(_args(tmp_path, "cluster.partition=no_such_partition")) == 1
    out = capsys.readouterr().out
    assert "sbatch refused it" in out and "finetune-clip-synthetic-" in out
    assert "partition" in out.lower()
