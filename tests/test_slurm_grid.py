"""Grids through real sbatch on the one-node cluster (scripts/slurm-local.sh)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from slurm_jobs import poll, scontrol_job

from harness.run import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _args(tmp_path, *extra, steps=6, wait=True):
    return ["grid=smoke", "cluster=slurm_local", f"run_root={tmp_path / 'runs'}",
            f"results_dir={tmp_path / 'results'}", f"data.root={tmp_path / 'data'}",
            "data.generate.n_images=60", f"scale.train.steps={steps}", "task.log_every=2",
            "data.num_workers=0", f"cluster.wait={str(wait).lower()}", *extra]


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


def _logged_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_preempted_stage_requeues_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path,
                                                                   capsys):
    # Small batches and many steps: the job is still training when the signal arrives.
    args = _args(tmp_path, "scale.train.batch_size=8", "task.ckpt_every=1000",
                 steps=400, wait=False)
    assert main(args) == 0
    stages = _manifest(tmp_path)["stages"]
    train = next(s for s in stages.values() if s["task"] == "finetune")
    train_dir = next((tmp_path / "runs").glob("finetune-*"))
    job_id = train["job_id"]

    poll("the first logged steps", lambda: len(_logged_steps(train_dir)) >= 3)
    # What SLURM sends before a time limit or on preemption (submitit: --signal=USR2@delay).
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    poll("the requeue", lambda: int(scontrol_job(job_id).get("Restarts", 0)) >= 1)
    stopped_at = max(_logged_steps(train_dir))
    assert (train_dir / "checkpoints" / "latest.pt").is_file()
    assert not (train_dir / "result.json").exists()
    # SLURM holds a requeued job back (BeginTime) for about two minutes; release it now.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)

    eval_dir = next((tmp_path / "runs").glob("eval-*"))

    def finished() -> bool:
        return any((d / name).is_file() for d, name in
                   ((eval_dir, "result.json"), (eval_dir, "FAILED"), (train_dir, "FAILED")))

    poll("the resumed stage and its evaluation", finished, timeout_s=600)
    assert not (train_dir / "FAILED").exists(), (train_dir / "FAILED").read_text()
    assert (eval_dir / "result.json").is_file()

    steps = _logged_steps(train_dir)
    assert max(steps) == 400
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / ".slurm" / job_id).glob("*.out"))
    resumed = re.search(r"resumed from \S+ at step (\d+)", logs)
    assert resumed, logs[-3000:]
    # It resumed from the step the signal stopped it at, not from the start.
    assert 0 < int(resumed.group(1)) and int(resumed.group(1)) >= stopped_at
    assert int(scontrol_job(job_id).get("Restarts", 0)) == 1
    capsys.readouterr()
    assert main(args) == 0
    assert "0 submitted, 2 already done" in capsys.readouterr().out
