"""``cluster=slurm``: submit a grid's whole DAG at once with submitit and SLURM dependencies.

Each stage is one submitit job running :class:`StageJob`, which composes the stage's config
and calls the same stage runner as ``python -m harness.run task=...``. Dependents are queued
with ``afterok`` on their parent's job, so the command returns as soon as everything is queued
(``cluster.wait=true`` blocks and reports). Jobs import the code from a snapshot taken at
submission, so editing the checkout afterwards does not change queued or requeued jobs.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.launch.grid import PlannedStage
from harness.launch.job import GridReport, StageJob, record_grid
from harness.launch.snapshot import snapshot_code
from harness.launch.store import RUNNING_MARKER, mark, read_marker


def _resources(cluster: Mapping[str, Any], task: str) -> dict[str, Any]:
    merged = dict(cluster["resources"]["default"])
    merged.update(cluster["resources"].get(task) or {})
    return merged


def _resource_key(cluster: Mapping[str, Any], task: str, name: str) -> str:
    """The config key a resource value came from (the task's entry, else ``default``)."""
    own = cluster["resources"].get(task) or {}
    return f"cluster.resources.{task if name in own else 'default'}.{name}"


def partition_nodes(partition: str | None) -> list[tuple[int, int]] | None:
    """(CPUs, GPUs) of each node of ``partition`` (the default one when None); None if unknown."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%G"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    nodes = []
    for line in out.stdout.splitlines():
        name, cpus, gres = (line.split("|") + ["", ""])[:3]
        default = name.endswith("*")
        if (partition is None and default) or name.rstrip("*") == partition:
            gpus = sum(int(m) for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
            nodes.append((int(cpus.rstrip("+") or 0), gpus))
    return nodes or None


def check_allocation(plan: Sequence[PlannedStage], cluster: Mapping[str, Any],
                     nodes: list[tuple[int, int]] | None) -> None:
    """Refuse, before anything is submitted, tasks a node cannot hold (SLURM would queue the
    job forever, reason PartitionConfig); ``nodes`` is :func:`partition_nodes`'s answer."""
    where = f"partition {cluster.get('partition') or '(default)'}"
    for stage in plan:
        res = _resources(cluster, stage.task)
        tasks, cpus = int(res["tasks_per_node"]), int(res["cpus_per_task"])
        gpus = int(res.get("gpus_per_node") or 0)
        key = _resource_key(cluster, stage.task, "tasks_per_node")
        if tasks < 1:
            raise ValueError(f"{key}={tasks}: must be at least 1 ({stage.label})")
        if gpus and tasks > gpus:
            raise ValueError(f"{key}={tasks} is larger than "
                             f"{_resource_key(cluster, stage.task, 'gpus_per_node')}={gpus}: "
                             f"each rank needs its own GPU ({stage.label})")
        if nodes is None:
            continue
        fit = [n for n in nodes if n[0] >= tasks * cpus and n[1] >= gpus]
        if len(fit) < int(res["nodes"]):
            largest = max(c for c, _ in nodes)
            raise ValueError(
                f"{key}={tasks} x {_resource_key(cluster, stage.task, 'cpus_per_task')}={cpus} "
                f"needs {tasks * cpus} CPUs{f' and {gpus} GPUs' if gpus else ''} on each of "
                f"{res['nodes']} node(s); {where} has {len(fit)} such node(s) (largest: "
                f"{largest} CPUs), so SLURM would queue {stage.label} forever")


def _executor_for(stage: PlannedStage, cluster: Mapping[str, Any], folder: Path,
                  setup: list[str], dependency: str | None) -> Any:
    import submitit

    res = _resources(cluster, stage.task)
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                     slurm_max_num_timeout=int(cluster["max_requeues"]))
    additional = dict(cluster.get("additional") or {})
    if dependency:
        # A parent that failed can never satisfy afterok: let SLURM drop the child at once
        # instead of leaving it pending forever.
        additional.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    params: dict[str, Any] = {
        "name": stage.run_dir.name, "nodes": res["nodes"], "tasks_per_node": res["tasks_per_node"],
        "cpus_per_task": res["cpus_per_task"], "mem_gb": res["mem_gb"],
        "timeout_min": res["timeout_min"], "slurm_signal_delay_s": cluster["signal_delay_s"],
        "slurm_setup": setup,
        "slurm_additional_parameters": additional,
    }
    if res.get("gpus_per_node"):
        params["gpus_per_node"] = res["gpus_per_node"]
    for key in ("partition", "account", "qos", "constraint"):
        if cluster.get(key):
            params[f"slurm_{key}"] = cluster[key]
    executor.update_parameters(**params)
    return executor


def submit_grid(plan: Sequence[PlannedStage], cluster: Mapping[str, Any], run_root: Path,
                grid: str, *, grid_config: Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> tuple[GridReport, Path]:
    """Submit every stage not done or queued, parents first; returns the report and manifest
    (``grid_config``, default ``{"name": grid}``, is the grid's config section)."""
    todo = [s for s in plan if s.status() not in ("done", "running")]
    if todo:
        check_allocation(todo, cluster, partition_nodes(cluster.get("partition")))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(cluster["folder"]).resolve()
    setup: list[str] = list(cluster.get("setup") or [])
    if cluster.get("snapshot", True):
        code = snapshot_code(run_root / ".snapshots" / stamp)
        # PYTHONPATH precedes the editable install's path, so jobs import the snapshot (and
        # read its configs); the working directory stays the submission's, as do relative
        # paths. PYTHONSAFEPATH (Python >= 3.11) stops `python -m` from putting that working
        # directory, possibly the checkout itself, in front of the snapshot.
        setup += [f"export PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}",
                  "export PYTHONSAFEPATH=1"]
    report, jobs = GridReport(), {}
    submissions: dict[str, dict[str, Any]] = {}
    for stage in plan:
        name = stage.run_dir.name
        status = stage.status()
        parent_job = jobs.get(stage.parent.run_dir) if stage.parent else None
        if status == "done":
            report.skipped.append(name)
            entry = {"status": "done"}
        elif stage.parent is not None and stage.parent.run_dir.name in report.failed:
            report.blocked[name] = f"depends on {stage.parent.run_dir.name}"
            entry = {"status": "blocked"}
        elif status == "running":
            job_id = read_marker(stage.run_dir, RUNNING_MARKER).get("job_id")
            if job_id:  # a local run elsewhere has no job to depend on
                jobs[stage.run_dir] = str(job_id)
            report.skipped.append(name)
            entry = {"status": "running", "job_id": job_id}
        else:
            dependency = f"afterok:{parent_job}" if parent_job else None
            try:
                executor = _executor_for(stage, cluster, folder, setup, dependency)
                job = executor.submit(StageJob(stage.overrides, str(run_root.resolve()), grid))
            except Exception as exc:  # sbatch's message is the useful part
                report.failed[name] = f"sbatch refused it: {exc}".strip()
                submissions[name] = {"status": "refused", "error": str(exc)}
                continue
            jobs[stage.run_dir] = job.job_id
            stage.run_dir.mkdir(parents=True, exist_ok=True)
            mark(stage.run_dir, RUNNING_MARKER, job_id=job.job_id, state="queued",
                 log=str(job.paths.stdout))
            report.done.append(name)
            entry = {"status": "submitted", "job_id": job.job_id, "log": str(job.paths.stdout),
                     "dependency": dependency}
        submissions[name] = entry
    report.manifest = record_grid(plan, grid_config or {"name": grid}, run_root,
                                  executor="slurm", overrides=overrides,
                                  submissions=submissions)
    return report, report.manifest


def wait_for(plan: Sequence[PlannedStage], poll_s: float = 5.0, timeout_s: float | None = None
             ) -> dict[str, str]:
    """Block until no stage is queued or running; final status of each stage."""
    start = time.monotonic()
    while True:
        states = {s.run_dir.name: s.status() for s in plan}
        if "running" not in states.values():
            return states
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return states
        time.sleep(poll_s)
