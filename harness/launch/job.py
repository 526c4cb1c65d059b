"""What both executors share: the job object a stage runs in, the grid report, the manifest.

``cluster=local`` (:mod:`harness.launch.executor`) and ``cluster=slurm``
(:mod:`harness.launch.slurm`) both import from here and never from each other.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.launch.grid import TRAINING_TASKS, PlannedStage
from harness.manifest import Manifest, ManifestStage, write_manifest

# How long a rank other than 0 waits, after a stop, for rank 0's requeue to end the job.
REQUEUE_WAIT_S = 120.0


@dataclass
class GridReport:
    """What happened to each stage of one grid run."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every stage is done: none failed, blocked or left to another runner."""
        return not self.failed and not self.blocked and not self.held

    def summary(self) -> str:
        """Multi-line human summary, failures with their log paths."""
        lines = [f"{len(self.done)} ran, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed, {len(self.blocked)} not run (dependency failed)"
                 + (f", {len(self.held)} left to another runner" if self.held else "")]
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed.items()]
        lines += [f"  NOT RUN {name}: {why}" for name, why in self.blocked.items()]
        lines += [f"  HELD {name}: {why}" for name, why in self.held.items()]
        return "\n".join(lines)


def _await_requeue(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)  # SLURM's SIGTERM (submitit logs it) and SIGKILL end this task


class StageJob:
    """The function a SLURM job runs: one stage, resumable when preempted (submitit protocol)."""

    def __init__(self, overrides: Sequence[str], run_root: str, grid: str) -> None:
        self.overrides = list(overrides)
        self.run_root = run_root
        self.grid = grid

    def __call__(self) -> str:
        from harness.config import compose
        from harness.dist import world_info_from_env
        from harness.procs import Preempted
        from harness.stage import run_stage

        try:
            return str(run_stage(compose(self.overrides), Path(self.run_root), grid=self.grid,
                                 overrides=self.overrides))
        except Preempted:
            if world_info_from_env().is_main:
                # The loop saved a checkpoint at a step boundary; hand over to submitit's own
                # USR2 handler (restored by now), which calls checkpoint() and requeues the job.
                signal.raise_signal(signal.SIGUSR2)
            else:
                # Submitit requeues from rank 0 only. Exiting here with an error could make
                # srun (KillOnBadExit) kill rank 0 before it requeued: wait for the requeue to
                # end this task instead, as submitit's own handler does on other ranks.
                _await_requeue(REQUEUE_WAIT_S)
            raise

    def checkpoint(self) -> Any:
        """Requeue with a fresh job object; the stage resumes from ``checkpoints/latest.pt``."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.overrides, self.run_root,
                                                           self.grid))


def manifest_stage(stage: PlannedStage, **submission: Any) -> ManifestStage:
    """A planned stage as the manifest lists it (``submission``: the executor's details)."""
    split = stage.cfg.task.get("split") if stage.task not in TRAINING_TASKS else None
    return ManifestStage(
        stage_id=stage.run_dir.name, label=stage.label, task=stage.task, model=stage.model,
        dataset=stage.dataset, scale=str(stage.cfg.scale.name),
        split=None if split is None else str(split),
        parent=stage.parent.run_dir.name if stage.parent else None,
        overrides=tuple(stage.overrides), submission=dict(submission))


def grid_manifest(plan: Sequence[PlannedStage], grid: Mapping[str, Any], run_root: Path, *,
                  executor: str, overrides: Sequence[str] = (),
                  submissions: Mapping[str, Mapping[str, Any]] | None = None) -> Manifest:
    """The manifest of one run of ``grid`` (its config section) over ``plan``."""
    submissions = submissions or {}
    return Manifest(
        grid=str(grid["name"]),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
        executor=executor, run_root=str(run_root), grid_config=dict(grid),
        overrides=tuple(overrides),
        stages=tuple(manifest_stage(s, **submissions.get(s.run_dir.name, {})) for s in plan))


def record_grid(plan: Sequence[PlannedStage], grid: Mapping[str, Any], run_root: Path, *,
                executor: str, overrides: Sequence[str] = (),
                submissions: Mapping[str, Mapping[str, Any]] | None = None,
                when: str | None = None) -> Path:
    """Write the grid's manifest under ``<run_root>/.grids``; returns its path."""
    return write_manifest(run_root, grid_manifest(plan, grid, run_root, executor=executor,
                                                  overrides=overrides, submissions=submissions),
                          when)
