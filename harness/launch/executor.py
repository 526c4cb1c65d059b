"""Executors: run a planned grid's stages (``cluster=local`` runs them here, in order)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.launch.grid import PlannedStage
from harness.launch.store import FAILED_MARKER, read_marker

# Stages whose result includes timings (latency, protocol seconds): with parallel workers they
# run alone, so no other stage shares the CPUs or the GPU while they measure.
TIMED_TASKS = frozenset({"bench", "eval"})


@dataclass
class GridReport:
    """What happened to each stage of one grid run."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no stage failed or was blocked by a failed dependency."""
        return not self.failed and not self.blocked

    def summary(self) -> str:
        """Multi-line human summary, failures with their log paths."""
        lines = [f"{len(self.done)} ran, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed, {len(self.blocked)} not run (dependency failed)"]
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed.items()]
        lines += [f"  NOT RUN {name}: {why}" for name, why in self.blocked.items()]
        return "\n".join(lines)


def _run_in_job(overrides: Sequence[str], run_root: str, grid: str) -> str:
    """Module-level so a spawned worker process can unpickle it."""
    from harness.launch.slurm import StageJob

    return StageJob(overrides, run_root, grid)()


def launchable(ready: Sequence[PlannedStage], running_tasks: Sequence[str]
               ) -> list[PlannedStage]:
    """The ready stages to start now: untimed ones together, a timed one only alone."""
    if any(task in TIMED_TASKS for task in running_tasks):
        return []
    untimed = [s for s in ready if s.task not in TIMED_TASKS]
    if untimed or running_tasks:
        return untimed  # timed stages wait until everything else has finished
    return [s for s in ready if s.task in TIMED_TASKS][:1]


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` stage processes sharing this machine's CPUs."""
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, workers))


def _limit_threads(threads: int) -> None:
    """Worker initializer: before torch loads, so its OpenMP pool takes the smaller size."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_local(plan: Sequence[PlannedStage], run_root: Path, grid: str, *,
              in_job: bool = False, workers: int = 1) -> GridReport:
    """Run every stage on this machine in dependency order; failures block dependents only.

    ``workers > 1`` runs independent stages at once, each in its own process with its share
    of the CPUs as torch threads; ``in_job`` runs each stage through the job object a SLURM
    job would run (cluster=debug).
    """
    report = GridReport()
    broken: set[Path] = set()
    finished: set[Path] = set()
    pending = list(plan)

    def settle(stage: PlannedStage, error: BaseException | None) -> None:
        if error is None:
            report.done.append(stage.run_dir.name)
            finished.add(stage.run_dir)
            return
        info = read_marker(stage.run_dir, FAILED_MARKER)
        report.failed[stage.run_dir.name] = (f"{type(error).__name__}: {error} "
                                             f"(log: {info.get('log')})")
        broken.add(stage.run_dir)

    def ready() -> list[PlannedStage]:
        """Stages whose parent is settled; blocked and done ones are settled here too."""
        out = []
        for stage in list(pending):
            parent = stage.parent.run_dir if stage.parent else None
            if parent in broken:
                report.blocked[stage.run_dir.name] = f"depends on {parent.name}"
                broken.add(stage.run_dir)
            elif stage.status() == "done":
                report.skipped.append(stage.run_dir.name)
                finished.add(stage.run_dir)
            elif parent is None or parent in finished:
                out.append(stage)
                continue
            else:
                continue
            pending.remove(stage)
        return out

    if workers <= 1:
        from harness.stage import run_stage  # heavy imports only when something really runs

        while pending:
            batch = ready()
            if not batch:
                break
            for stage in batch:
                pending.remove(stage)
                try:
                    if in_job:
                        _run_in_job(stage.overrides, str(run_root), grid)
                    else:
                        run_stage(stage.cfg, run_root, grid=grid)
                    settle(stage, None)
                except Exception as exc:  # one failed stage must not lose the others' work
                    settle(stage, exc)
        return report

    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    # Each process would otherwise start one thread per core: N workers x N threads on N
    # cores spin against each other and run several times slower than one stage alone.
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_limit_threads,
                             initargs=(threads_per_worker(workers),)) as pool:
        running: dict[Future, PlannedStage] = {}
        while pending or running:
            for stage in launchable(ready(), [s.task for s in running.values()]):
                pending.remove(stage)
                running[pool.submit(_run_in_job, stage.overrides, str(run_root), grid)] = stage
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                settle(running.pop(future), future.exception())
    return report
