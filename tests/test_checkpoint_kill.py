"""Killed processes: SIGKILL during a checkpoint write, SIGTERM during real training runs."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.train.checkpoint import atomic_save, load_checkpoint, remove_stale_temps

REPO = Path(__file__).resolve().parents[1]


def _write_then_hang(path: str, ready) -> None:
    """Save version 1, then start version 2 and stop half-way through writing it."""
    import harness.train.checkpoint as ckpt

    atomic_save({"version": 1, "blob": torch.arange(1000)}, Path(path))
    real_save = ckpt.torch.save

    def half_save(obj, handle) -> None:
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        ready.set()
        time.sleep(600)  # SIGKILLed here, mid-write

    ckpt.torch.save = half_save
    atomic_save({"version": 2, "blob": torch.arange(1000)}, Path(path))


def test_sigkill_during_checkpoint_write_leaves_latest_loadable(tmp_path):
    path = tmp_path / "checkpoints" / "latest.pt"
    ctx = multiprocessing.get_context("fork")  # the child needs no fresh interpreter
    ready = ctx.Event()
    child = ctx.Process(target=_write_then_hang, args=(str(path), ready))
    child.start()
    try:
        assert ready.wait(60), "the child never reached the middle of its second write"
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    temps = list(path.parent.glob(".latest.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # really killed mid-write
    state = load_checkpoint(path)
    assert state["version"] == 1 and torch.equal(state["blob"], torch.arange(1000))
    assert remove_stale_temps(path) == temps and not temps[0].exists()


def _command(run_root: Path, data_root: Path) -> list[str]:
    return [sys.executable, "-m", "harness.run", "task=finetune", "model=clip", "data=synthetic",
            f"run_root={run_root}", f"data.root={data_root}", "data.generate.n_images=40",
            "+data.generate.pretrain_pairs=16", "data.num_workers=2", "scale.train.steps=16",
            "scale.train.batch_size=16", "scale.train.warmup_steps=2", "task.log_every=1",
            "task.ckpt_every=100", "task.progress=false", "task.tensorboard=false"]


def _env() -> dict[str, str]:
    # One thread per process: two runs share the CPUs, and oversubscribed OpenMP threads
    # spin-wait into multi-second steps on a busy machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_DISTRIBUTED": "0",
            "PYTHONPATH": str(REPO)}


def _wait_for_step(run_root: Path, step: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for metrics in run_root.glob("finetune-*/metrics.jsonl"):
            if f'"step": {step},' in metrics.read_text():
                return
        time.sleep(0.02)
    pytest.fail(f"run under {run_root} never logged step {step} (exit {proc.poll()})")


def _weights(run_root: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = run_root.glob("finetune-*/checkpoints/latest.pt")
    return load_checkpoint(ckpt)["model"]


def test_sigterm_then_relaunch_is_bitwise_equal_to_uninterrupted(tmp_path):
    from harness.data.synthetic import generate

    data = tmp_path / "data"
    generate(data, n_images=40, pretrain_pairs=16)
    full_root, part_root = tmp_path / "full", tmp_path / "part"
    full = subprocess.Popen(_command(full_root, data), env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    part = subprocess.Popen(_command(part_root, data), env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_step(part_root, 3, part, timeout=120)
        part.send_signal(signal.SIGTERM)
        out_part, _ = part.communicate(timeout=120)
        out_full, _ = full.communicate(timeout=120)
    finally:
        for proc in (full, part):
            if proc.poll() is None:
                proc.kill()
    assert full.returncode == 0, out_full[-3000:]
    assert part.returncode != 0 and "Preempted: signal SIGTERM at step" in out_part, \
        out_part[-3000:]
    (ckpt,) = part_root.glob("finetune-*/checkpoints/latest.pt")
    stopped = load_checkpoint(ckpt)
    assert 3 <= stopped["step"] < 16 and not stopped["complete"]
    again = subprocess.run(_command(part_root, data), env=_env(), cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"resumed from {ckpt} at step {stopped['step']}" in again.stdout
    expected, resumed = _weights(full_root), _weights(part_root)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
