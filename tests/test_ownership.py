"""Stage ownership: one runner per stage, dead owners detected, done means a valid record,
a stopped grid leaves no stage process behind, and the report never overwrites tables with
nothing. Faults are real: processes killed with signals, files cut byte for byte."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.launch.lock import StageBusy, acquire, process_start, read_owner
from harness.launch.store import stage_state, stage_status

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "HARNESS_DISTRIBUTED": "0"}


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll until ``predicate()``; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _gone(pid: int) -> bool:
    return process_start(pid) is None


def _group_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# --- the lock ----------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from harness.launch.lock import acquire
lock = acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def test_live_owner_refuses_a_second_runner_and_a_killed_one_is_taken_over(tmp_path):
    run_dir = tmp_path / "finetune-clip-synthetic-00000000"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StageBusy, match=f"pid {holder.pid} on host"):
            acquire(run_dir)
        assert stage_status(run_dir) == "running"
        holder.send_signal(signal.SIGKILL)  # a crash: no handler, no cleanup
        holder.wait(30)
    finally:
        holder.kill()
    status, why = stage_state(run_dir)
    assert status == "interrupted" and f"pid {holder.pid}" in why and "gone" in why
    lock = acquire(run_dir)  # the kernel dropped the dead owner's flock: taken over
    assert read_owner(run_dir)["pid"] == os.getpid()
    lock.release()
    assert read_owner(run_dir) == {} and stage_status(run_dir) == "pending"


FORKING_HOLDER = """
import os, sys, time
from pathlib import Path
from harness.launch.lock import acquire
lock = acquire(Path(sys.argv[1]))
child = os.fork()  # as a data-loader worker is forked from its stage process
if child == 0:
    # The child says its pid once it runs, i.e. after its at-fork handlers: the test must not
    # look at the lock while a child that was never scheduled still shares it (a busy machine).
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def test_a_forked_child_does_not_keep_a_dead_owners_lock(tmp_path):
    run_dir = tmp_path / "finetune-clip-synthetic-00000000"
    holder = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(run_dir)], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        assert not _gone(child)  # the forked child outlives the owner
        assert stage_status(run_dir) == "interrupted"
        acquire(run_dir).release()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


def test_a_reused_pid_is_not_the_owner(tmp_path):
    # The recorded pid runs (it is this test's parent), but it is another process than the
    # one that took the lock: the start times differ.
    run_dir = tmp_path / "eval-clip-synthetic-00000000"
    run_dir.mkdir()
    (run_dir / "LOCK").write_text(json.dumps({
        "pid": os.getppid(), "host": socket.gethostname(), "start": "1", "job_id": None,
        "time": 0}))
    assert process_start(os.getppid()) not in (None, "1")
    assert stage_status(run_dir) == "interrupted"
    acquire(run_dir).release()


# --- done means COMPLETE and a valid record ----------------------------------------------------

def _bench_cfg(tmp_path: Path):
    from harness.config import compose

    return compose(["task=bench", "model=clip", f"run_root={tmp_path / 'runs'}"])


def test_complete_beside_a_truncated_record_is_rerun(tmp_path, monkeypatch):
    import harness.stage as stage

    calls = []
    monkeypatch.setitem(stage.TASKS, "bench", lambda cfg, d, r: calls.append(d) or {})
    cfg, runs = _bench_cfg(tmp_path), tmp_path / "runs"
    run_dir = stage.run_stage(cfg, runs)
    assert stage_status(run_dir) == "done" and len(calls) == 1
    record = (run_dir / "result.json").read_bytes()
    (run_dir / "result.json").write_bytes(record[: len(record) // 2])  # a torn write
    status, why = stage_state(run_dir)
    assert status == "interrupted" and "not valid JSON" in why
    from harness.analysis.collect import read_stage
    assert read_stage(run_dir)["status"] == "interrupted"
    stage.run_stage(cfg, runs)
    assert len(calls) == 2 and stage_status(run_dir) == "done"
    assert json.loads((run_dir / "result.json").read_text())["stage_id"] == run_dir.name


BLOCKED_STAGE = """
import sys, time
from pathlib import Path
import harness.stage as stage
from harness.config import compose
stage.TASKS["bench"] = lambda cfg, run_dir, run_root: time.sleep(600)
cfg = compose(sys.argv[1:])
stage.run_stage(cfg, Path(cfg.run_root))
"""


def test_a_killed_stage_reads_interrupted_not_running_and_is_rerun(tmp_path, monkeypatch):
    import harness.stage as stage

    cfg, runs = _bench_cfg(tmp_path), tmp_path / "runs"
    run_dir = stage.stage_dir(cfg, runs)
    child = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_STAGE, "task=bench", "model=clip", f"run_root={runs}"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: (run_dir / "RUNNING").is_file(), child, "the stage started")
        assert stage_status(run_dir) == "running"
        with pytest.raises(StageBusy):
            stage.run_stage(cfg, runs)  # a second runner does not run it as well
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert stage_status(run_dir) == "interrupted"
    calls = []
    monkeypatch.setitem(stage.TASKS, "bench", lambda cfg, d, r: calls.append(d) or {})
    stage.run_stage(cfg, runs)
    assert calls == [run_dir] and stage_status(run_dir) == "done"


# --- two grids at once, and stopping a grid ----------------------------------------------------

def _grid_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["grid=smoke", f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'res'}",
            f"data.root={tmp_path / 'data'}", "data.generate.n_images=40",
            "scale.train.steps=5000", "scale.train.batch_size=8", "data.num_workers=0",
            "task.progress=false", "task.tensorboard=false", "task.log_every=1", *extra]


def _start_grid(tmp_path: Path, *extra: str) -> subprocess.Popen:
    # Its own session: the test can signal the grid's whole process group, as a terminal does.
    # Output goes to a file, not a pipe: an orphaned stage process would hold a pipe open.
    with open(tmp_path / "grid.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.run", *_grid_args(tmp_path, *extra)], env=_env(),
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)


def _finish(proc: subprocess.Popen, tmp_path: Path) -> str:
    """Wait for a grid started by :func:`_start_grid`; its output."""
    proc.wait(timeout=300)
    return (tmp_path / "grid.log").read_text()


def _training(runs: Path):
    def check() -> dict | None:
        for metrics in runs.glob("finetune-*/metrics.jsonl"):
            if metrics.read_text().count("\n") >= 2:
                return read_owner(metrics.parent) or None
        return None
    return check


@pytest.mark.slow
def test_second_grid_on_one_run_root_leaves_held_stages_to_the_first(tmp_path, capsys):
    from harness.run import main

    first = _start_grid(tmp_path)
    try:
        _wait(_training(tmp_path / "runs"), first, "the first grid trained")
        (train_dir,) = (tmp_path / "runs").glob("finetune-*")
        logged = (train_dir / "metrics.jsonl").read_text().count("\n")
        assert main(_grid_args(tmp_path)) == 1
        out = capsys.readouterr().out
        assert "0 ran, 0 already done, 0 failed" in out and "2 left to another runner" in out
        assert f"HELD {train_dir.name}: {train_dir.name} is held by another runner: pid" in out
        assert "waits for " + train_dir.name in out
        assert read_owner(train_dir)["pid"] == first.pid  # still the first grid's stage
        assert not (train_dir / "FAILED").exists()
        # A plain SIGTERM to the sequential grid: the stage checkpoints and the grid stops
        # instead of going on to the eval stage.
        first.send_signal(signal.SIGTERM)
        out_first = _finish(first, tmp_path)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 128 + signal.SIGTERM, out_first[-3000:]
    assert "[grid] stopped by SIGTERM" in out_first
    assert (train_dir / "metrics.jsonl").read_text().count("\n") > logged
    assert stage_status(train_dir) == "interrupted"  # not `running` forever
    assert (train_dir / "checkpoints" / "latest.pt").is_file()
    assert not list((tmp_path / "runs").glob("eval-*"))
    assert main([*_grid_args(tmp_path), "dry_run=true"]) == 0
    assert f"{train_dir.name} finetune clip synthetic interrupted" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm-to-grid", "sigint-to-group"])
def test_stopping_a_parallel_grid_stops_and_waits_for_its_stage_processes(tmp_path, sig,
                                                                          to_group):
    grid = _start_grid(tmp_path, "cluster.workers=2")
    try:
        _wait(_training(tmp_path / "runs"), grid, "a stage worker trained")
        (train_dir,) = (tmp_path / "runs").glob("finetune-*")
        worker = read_owner(train_dir)["pid"]
        assert worker != grid.pid  # the stage runs in a worker process
        if to_group:
            os.killpg(grid.pid, sig)  # Ctrl-C in a terminal: every process of the group
        else:
            grid.send_signal(sig)  # `kill <pid>` of the grid only
        out = _finish(grid, tmp_path)
        assert grid.returncode == 128 + sig, out[-3000:]
        # The grid returned only after its workers exited: none runs on unobserved.
        assert _gone(worker), out[-3000:]
        deadline = time.monotonic() + 60  # the multiprocessing resource tracker exits last
        while not _group_empty(grid.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group_empty(grid.pid)
    finally:
        if not _group_empty(grid.pid):
            os.killpg(grid.pid, signal.SIGKILL)
    assert stage_status(train_dir) == "interrupted"
    assert (train_dir / "checkpoints" / "latest.pt").is_file()  # stopped at a step boundary
    assert "Preempted: signal SIGTERM" not in (train_dir / "RUNNING").read_text()
    assert json.loads((train_dir / "RUNNING").read_text())["preempted"] is True


# --- the report -------------------------------------------------------------------------------

def test_report_without_any_run_writes_nothing_unless_told(tmp_path, capsys):
    from harness.manifest import Manifest, ManifestStage, write_manifest
    from harness.report import main

    results = tmp_path / "results"
    table = results / "tables" / "smoke.md"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"| committed | table |\n")
    args = ["--runs", str(tmp_path / "runs"), "--results", str(results), "--grids", "smoke"]
    # A fresh clone: no grid ever ran, so there is no manifest to report.
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no grid manifest for smoke" in err[0]
    # A manifest whose stages have no run directory (a wrong --runs, runs deleted).
    stage = ManifestStage("eval-clip-synthetic-00000000", "eval:clip:synthetic", "eval", "clip",
                          "synthetic", scale="smoke", split="test")
    write_manifest(tmp_path / "runs", Manifest("smoke", "2026-11-30T00:00:00+00:00", "local",
                                               str(tmp_path / "runs"), {"name": "smoke"}, (),
                                               (stage,)))
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs found under" in err[0] and "--allow-empty" in err[0]
    assert table.read_bytes() == b"| committed | table |\n"
    assert sorted(p.name for p in results.rglob("*")) == ["smoke.md", "tables"]
    assert main([*args, "--allow-empty"]) == 0
    assert "missing: never run" in table.read_text()
