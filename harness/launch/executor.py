"""Executors: run a planned grid's stages (``cluster=local`` runs them here, in order)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager
from multiprocessing.connection import wait as connection_wait
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from harness.launch.grid import PlannedStage
from harness.launch.job import GridReport, StageJob, record_grid
from harness.launch.lock import StageBusy
from harness.launch.store import FAILED_MARKER, read_marker

# Stages whose result includes timings (latency, protocol seconds): with parallel workers they
# run alone, so no other stage shares the CPUs or the GPU while they measure.
TIMED_TASKS = frozenset({"bench", "eval"})
# What the stage processes' fork server imports once: the stage runner (and torch), and the
# tower libraries it imports when it builds a model.
STAGE_PRELOAD = ("harness.stage", "timm", "transformers")


class GridInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the grid process; its stages were stopped and waited for."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`GridInterrupted` in the main thread."""
    def handle(signum: int, frame: Any) -> None:
        raise GridInterrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its owner handles signals then
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, handle) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_in_job(overrides: Sequence[str], run_root: str, grid: str) -> str:
    """One stage through the job object a SLURM job runs (cluster=debug)."""
    return StageJob(overrides, run_root, grid)()


def _run_in_worker(overrides: Sequence[str], run_root: str, grid: str) -> str:
    """One stage, composed and run in this (worker) process."""
    from harness.config import compose
    from harness.stage import run_stage

    return str(run_stage(compose(overrides), Path(run_root), grid=grid, overrides=overrides))


def launchable(ready: Sequence[PlannedStage], running_tasks: Sequence[str]
               ) -> list[PlannedStage]:
    """The ready stages to start now: untimed ones together, a timed one only alone."""
    if any(task in TIMED_TASKS for task in running_tasks):
        return []
    untimed = [s for s in ready if s.task not in TIMED_TASKS]
    if untimed or running_tasks:
        return untimed  # timed stages wait until everything else has finished
    return [s for s in ready if s.task in TIMED_TASKS][:1]


def stage_process_context() -> BaseContext:
    """How stage processes start: forked from a server that has imported the harness.

    A fresh interpreter spends about 8 s importing torch, timm and transformers before its
    stage can start; the fork server imports them once and forks each stage process from
    that state in milliseconds. It has run no torch code, so no thread pool is copied into
    a fork (the reason plain fork is not used). Without fork servers (Windows): spawn.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(STAGE_PRELOAD))
    return context


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` stage processes sharing this machine's CPUs."""
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, workers))


def _init_worker(threads: int) -> None:
    """Worker initializer: thread limits before torch loads, so its OpenMP pool takes the
    smaller size; Ctrl-C is left to the grid process, which stops workers with SIGTERM (the
    training loop then checkpoints at a step boundary instead of dying mid-step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_local(plan: Sequence[PlannedStage], run_root: Path, grid: str, *,
              in_job: bool = False, workers: int = 1,
              grid_config: Mapping[str, Any] | None = None,
              overrides: Sequence[str] = ()) -> GridReport:
    """Run every stage on this machine in dependency order; failures block dependents only.

    ``workers > 1`` runs independent stages at once, each in its own process with its share
    of the CPUs as torch threads; ``in_job`` runs each stage through the job object a SLURM
    job would run (cluster=debug). A stage another live runner owns is left to it (``held``),
    with its dependents. SIGINT or SIGTERM stops the grid: running stages are sent SIGTERM
    and waited for, then :class:`GridInterrupted` is raised. Before anything runs, the grid's
    manifest (``grid_config``, default ``{"name": grid}``) is written under
    ``<run_root>/.grids`` for the report to read.
    """
    report = GridReport()
    report.manifest = record_grid(plan, grid_config or {"name": grid}, run_root,
                                  executor="debug" if in_job else "local", overrides=overrides)
    broken: set[Path] = set()
    held: set[Path] = set()
    finished: set[Path] = set()
    pending = list(plan)

    def settle(stage: PlannedStage, error: BaseException | None) -> None:
        if error is None:
            report.done.append(stage.run_dir.name)
            finished.add(stage.run_dir)
        elif isinstance(error, StageBusy):
            report.held[stage.run_dir.name] = str(error)
            held.add(stage.run_dir)
        else:
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
            elif parent in held:
                report.held[stage.run_dir.name] = (f"waits for {parent.name}, which another "
                                                   f"runner holds")
                held.add(stage.run_dir)
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

    with stop_on_signals():
        if workers <= 1:
            _run_sequential(pending, ready, settle, run_root, grid, in_job)
        else:
            _run_parallel(pending, ready, settle, run_root, grid, workers)
    return report


def _run_sequential(pending: list[PlannedStage], ready: Any, settle: Any, run_root: Path,
                    grid: str, in_job: bool) -> None:
    from harness.stage import run_stage  # heavy imports only when something really runs
    from harness.train.loop import Preempted

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
                    run_stage(stage.cfg, run_root, grid=grid, overrides=stage.overrides)
                settle(stage, None)
            except Preempted as exc:
                # The loop took the SIGTERM meant for the grid: stop, do not go on to the next
                # stage (the stage has its checkpoint and reads `interrupted`).
                raise GridInterrupted(signal.SIGTERM) from exc
            except Exception as exc:  # one failed stage must not lose the others' work
                settle(stage, exc)


def _run_parallel(pending: list[PlannedStage], ready: Any, settle: Any, run_root: Path,
                  grid: str, workers: int) -> None:
    # One process per stage: it exits when its stage ends, so stopping the grid is "SIGTERM
    # each, wait for each" with nothing left behind; a pool's workers would outlive a stage
    # that caught the SIGTERM.
    context = stage_process_context()
    # Each process would otherwise start one thread per core: N workers x N threads on N
    # cores spin against each other and run several times slower than one stage alone. A
    # timed stage runs alone (launchable), so it takes every core, as it would by itself.
    shared, alone = threads_per_worker(workers), threads_per_worker(1)
    running: dict[Any, tuple[PlannedStage, Any, Any]] = {}  # sentinel -> stage, process, pipe
    try:
        while pending or running:
            free = workers - len(running)
            for stage in launchable(ready(), [s.task for s, _, _ in running.values()])[:free]:
                pending.remove(stage)
                reader, writer = context.Pipe(duplex=False)
                proc = context.Process(target=_stage_process, name=stage.run_dir.name,
                                       args=(stage.overrides, str(run_root), grid,
                                             alone if stage.task in TIMED_TASKS else shared,
                                             writer))
                proc.start()
                writer.close()  # the child's copy is the only writer: EOF when it dies
                running[proc.sentinel] = (stage, proc, reader)
            if not running:
                break
            for sentinel in connection_wait(list(running)):
                stage, proc, reader = running.pop(sentinel)
                proc.join()
                settle(stage, _outcome(proc, reader))
    except BaseException:
        # The grid is stopping (a signal, an error here): its stage processes must not run on
        # unobserved. SIGTERM makes a training stage checkpoint and stop at a step boundary.
        stop_processes([proc for _, proc, _ in running.values()])
        raise


def _stage_process(overrides: Sequence[str], run_root: str, grid: str, threads: int,
                   conn: Any) -> None:
    """A stage process's body: run the stage, send back None or the exception."""
    _init_worker(threads)
    outcome: BaseException | None = None
    try:
        _run_in_worker(overrides, run_root, grid)
    except BaseException as exc:  # reported to the grid, which decides what it means
        outcome = exc
    try:
        conn.send(outcome)
    except Exception:  # an exception that does not pickle: send its text
        conn.send(RuntimeError(f"{type(outcome).__name__}: {outcome}"))
    conn.close()


def _outcome(proc: Any, reader: Any) -> BaseException | None:
    """What a finished stage process reported, or why it could not report."""
    try:
        if reader.poll():
            return reader.recv()
    except (EOFError, OSError):
        pass
    finally:
        reader.close()
    return RuntimeError(f"stage process {proc.pid} exited with code {proc.exitcode} "
                        f"without a result")


def stop_processes(procs: Sequence[Any]) -> None:
    """SIGTERM each stage process and wait for it; a second signal meanwhile kills them."""
    for proc in procs:
        _send(proc.pid, signal.SIGTERM)
    try:
        for proc in procs:
            proc.join()
    except GridInterrupted:
        for proc in procs:
            _send(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.join()


def _send(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
