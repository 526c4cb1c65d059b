"""Multi-task SLURM jobs and SIGUSR2 to jobs whose loader has workers (one-node cluster).

SLURM signals every process of a job step, loader workers included. A two-task job must train
as one process on the same global batch would, write its run directory from rank 0 only, and
come back from a USR2 requeue on both ranks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_jobs import poll, scontrol_job

from harness.launch.slurm import check_allocation
from harness.run import main
from harness.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 60

# Dropout off and a tower without batch statistics: then two ranks on halves of a batch compute
# what one process computes on the whole of it (BatchNorm would normalise each half by its own
# statistics, and each rank draws its own dropout masks).
EXACT_MODEL = ["model.image_tower.name=test_vit", "~model.image_tower.kwargs.output_stride",
               "+model.image_tower.kwargs.img_size=64",
               "+model.text_tower.hidden_dropout_prob=0.0",
               "+model.text_tower.attention_probs_dropout_prob=0.0"]


def _stage_args(root: Path, data: Path, steps: int, batch: int = 16) -> list[str]:
    return [f"run_root={root / 'runs'}", f"data.root={data}",
            f"data.generate.n_images={N_IMAGES}", f"scale.train.steps={steps}",
            f"scale.train.batch_size={batch}", "scale.train.warmup_steps=2", "task.log_every=1",
            "task.ckpt_every=1000", "task.progress=false", "data.num_workers=2"]


def _grid_args(root: Path, data: Path, steps: int, *extra: str, batch: int = 16) -> list[str]:
    # One thread per rank: two ranks and four loader workers share the node's two CPUs.
    return ["grid=smoke", "cluster=slurm_local", f"results_dir={root / 'results'}",
            "cluster.wait=false", 'cluster.setup=["export OMP_NUM_THREADS=1"]',
            *_stage_args(root, data, steps, batch), *extra]


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finetune_job(root: Path) -> tuple[str, Path]:
    (manifest,) = sorted((root / "runs" / ".grids").glob("smoke-*.json"))
    stages = json.loads(manifest.read_text())["stages"]
    job = next(s for s in stages.values() if s["task"] == "finetune")
    return str(job["job_id"]), next((root / "runs").glob("finetune-*"))


def _usr2_and_requeue(root: Path) -> dict:
    """Signal the finetune job like SLURM before a time limit; wait for the grid to finish."""
    job_id, train_dir = _finetune_job(root)
    poll("the first logged steps", lambda: len(_records(train_dir)) >= 3)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    poll("the requeue", lambda: int(scontrol_job(job_id).get("Restarts", 0)) >= 1)
    stopped = load_checkpoint(train_dir / "checkpoints" / "latest.pt")
    failed = train_dir / "FAILED"
    assert not failed.exists(), failed.read_text()
    # SLURM holds a requeued job back (BeginTime) for about two minutes; release it now.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    eval_dir = next((root / "runs").glob("eval-*"))
    poll("the resumed stage and its evaluation",
          lambda: any(p.is_file() for p in (eval_dir / "result.json", eval_dir / "FAILED",
                                            train_dir / "FAILED")), timeout_s=600)
    assert not failed.exists(), failed.read_text()
    logs = {int(m.group(1)): p.read_text()
            for p in (root / "runs" / ".slurm" / job_id).glob("*_log.out")
            if (m := re.search(r"_(\d+)_log\.out$", p.name))}
    return {"job_id": job_id, "train_dir": train_dir, "eval_dir": eval_dir, "logs": logs,
            "stopped": stopped, "restarts": int(scontrol_job(job_id).get("Restarts", 0))}


@pytest.mark.slurm
@pytest.mark.slow
def test_usr2_to_a_job_whose_loader_has_workers_requeues_and_resumes(slurm_cluster, tmp_path):
    from harness.data.synthetic import ensure_synthetic

    data = tmp_path / "data"
    ensure_synthetic(data, n_images=N_IMAGES, seed=0, image_size=64)
    assert main(_grid_args(tmp_path, data, 300, batch=8)) == 0
    run = _usr2_and_requeue(tmp_path)
    assert run["restarts"] == 1
    assert not run["stopped"]["complete"] and run["stopped"]["step"] >= 3
    log = run["logs"][0]
    assert "killed by signal" not in log
    assert f"resumed from {run['train_dir'] / 'checkpoints' / 'latest.pt'} at step " \
           f"{run['stopped']['step']}" in log, log[-3000:]
    assert [r["step"] for r in _records(run["train_dir"])] == list(range(1, 301))
    assert (run["eval_dir"] / "result.json").is_file()


@pytest.fixture(scope="module")
def two_tasks(slurm_cluster, tmp_path_factory):
    """A two-task finetune job (2 loader workers per rank) stopped by USR2, requeued, resumed;
    and one process trained on the same stage config, for comparison."""
    from harness.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("two_tasks")
    data = root / "data"
    ensure_synthetic(data, n_images=N_IMAGES, seed=0, image_size=64)
    steps = 40
    assert main(_grid_args(root, data, steps, "cluster.resources.finetune.tasks_per_node=2",
                           *EXACT_MODEL)) == 0
    run = _usr2_and_requeue(root)
    single = root / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_DISTRIBUTED": "0",
           "PYTHONPATH": str(REPO)}
    ref = subprocess.run([sys.executable, "-m", "harness.run", "task=finetune", "model=clip",
                          "data=synthetic", *_stage_args(single, data, steps), *EXACT_MODEL],
                         env=env, cwd=root, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:]
    run["single_dir"] = next((single / "runs").glob("finetune-*"))
    run["steps"] = steps
    return run


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_job_has_world_size_2_and_only_rank_0_writes(two_tasks):
    train_dir, logs = two_tasks["train_dir"], two_tasks["logs"]
    result = json.loads((train_dir / "result.json").read_text())
    assert result["train"]["world_size"] == 2
    assert sorted(logs) == [0, 1]
    # Metrics: one line per step, written once (a second writer would repeat steps).
    assert [r["step"] for r in _records(train_dir)] == list(range(1, two_tasks["steps"] + 1))
    # TensorBoard: one event file per attempt of rank 0 (each writer opens its own file).
    events = list((train_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == two_tasks["restarts"] + 1, events
    name = train_dir.name
    assert f"[stage] {name}: running finetune" in logs[0]
    assert f"[stage] {name}" not in logs[1]


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_loss_is_the_loss_of_the_global_batch(two_tasks):
    two = _records(two_tasks["train_dir"])
    one = _records(two_tasks["single_dir"])
    assert [r["step"] for r in two] == [r["step"] for r in one]
    # Each rank contrasts its 8 rows with all 16 (gathered); the logged value is the mean
    # over ranks. Local negatives only, or rank 0's share alone, would differ by far more.
    for a, b in zip(two, one):
        assert a["loss/itc"] == pytest.approx(b["loss/itc"], rel=1e-4, abs=1e-5), a["step"]


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_weights_equal_one_process_on_the_same_global_batch(two_tasks):
    two = load_checkpoint(two_tasks["train_dir"] / "checkpoints" / "latest.pt")
    one = load_checkpoint(two_tasks["single_dir"] / "checkpoints" / "latest.pt")
    assert two["complete"] and one["complete"] and two["world_size"] == 2
    assert two["model"].keys() == one["model"].keys()
    worst = max(float((two["model"][k].float() - one["model"][k].float()).abs().max())
                for k in one["model"])
    assert worst < 1e-4, worst


@pytest.mark.slurm
@pytest.mark.slow
def test_usr2_requeue_of_the_two_task_job_resumes_both_ranks(two_tasks):
    stopped = two_tasks["stopped"]
    assert two_tasks["restarts"] == 1 and not stopped["complete"]
    assert stopped["world_size"] == 2 and len(stopped["rng_per_rank"]) == 2
    for rank, log in two_tasks["logs"].items():
        assert "killed by signal" not in log
        assert re.search(rf"resumed from \S+ at step {stopped['step']} \(rank {rank}/2\)", log), \
            log[-3000:]


def _stage(task: str):
    from types import SimpleNamespace

    return SimpleNamespace(task=task, label=f"{task}:clip:synthetic")


def _cluster(**finetune):
    return {"partition": None, "resources": {
        "default": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1},
        "finetune": finetune}}


def test_tasks_per_node_a_node_cannot_hold_is_refused_naming_the_key():
    stage = [_stage("finetune")]
    with pytest.raises(ValueError, match=r"cluster\.resources\.finetune\.tasks_per_node=4 x "
                                         r"cluster\.resources\.default\.cpus_per_task=1 needs 4"):
        check_allocation(stage, _cluster(tasks_per_node=4), nodes=[(2, 0)])
    with pytest.raises(ValueError, match=r"finetune\.tasks_per_node=8 is larger than "
                                         r"cluster\.resources\.finetune\.gpus_per_node=4"):
        check_allocation(stage, _cluster(tasks_per_node=8, gpus_per_node=4), nodes=None)
    check_allocation(stage, _cluster(tasks_per_node=2), nodes=[(2, 0)])  # fits: no error


@pytest.mark.slurm
def test_tasks_per_node_larger_than_the_node_fails_before_anything_runs(slurm_cluster,
                                                                        tmp_path, capsys):
    data = tmp_path / "data"
    args = _grid_args(tmp_path, data, 4, "cluster.resources.finetune.tasks_per_node=64")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "cluster.resources.finetune.tasks_per_node=64" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / ".grids").exists()  # nothing submitted
    assert not list((tmp_path / "runs").glob("finetune-*"))
