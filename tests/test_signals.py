"""Stop signals delivered the way the world delivers them: to the whole process group.

``timeout``, ``kill -- -PGID``, a terminal's Ctrl-C and SLURM signal every process of a job,
DataLoader workers included. Workers must leave the signal to the main process, which writes a
checkpoint at the next step boundary and exits with the requeue status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.procs import REQUEUE_EXIT, STOP_SIGNALS
from harness.train.checkpoint import load_checkpoint
from harness.train.loop import Preempted, train
from harness.train.sampling import build_loader

REPO = Path(__file__).resolve().parents[1]


class Dispositions(torch.utils.data.Dataset):
    """Each sample is the worker's disposition of every stop signal (1 = ignored)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS])


def test_training_loader_workers_ignore_stop_signals():
    loader = build_loader(Dispositions(), torch.stack, batch_size=4, seed=0, start=0, rank=0,
                          world_size=1, num_workers=2, pin_memory=False)
    batches = iter(loader)
    seen = torch.cat([next(batches) for _ in range(4)])  # both workers' batches
    del batches
    assert seen.all(), seen
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # this process untouched


class Points(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


def _stack(items):
    return {"x": torch.stack([i["x"] for i in items])}


class Interrupted(torch.nn.Module):
    """Sends this process ``sigs`` during step ``k``'s forward (a user pressing Ctrl-C)."""

    def __init__(self, k: int, sigs: tuple[int, ...]) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.k, self.sigs, self.calls = k, sigs, 0

    def losses(self, batch):
        self.calls += 1
        if self.calls == self.k:
            for sig in self.sigs:
                os.kill(os.getpid(), sig)
        return {"mse": (self.lin(batch["x"]) ** 2).mean()}


CFG = {"steps": 10, "batch_size": 8, "lr": 0.01, "weight_decay": 0.0, "warmup_steps": 1,
       "grad_clip": 0.0, "log_every": 1, "ckpt_every": 100, "seed": 0, "num_workers": 0,
       "device": "cpu", "tensorboard": False, "progress": False}


def test_sigint_checkpoints_at_the_step_boundary(tmp_path):
    with pytest.raises(Preempted, match="signal SIGINT at step 4"):
        train(Interrupted(4, (signal.SIGINT,)), Points(), _stack, CFG, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 4 and not state["complete"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_second_sigint_aborts_at_once_without_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(Interrupted(4, (signal.SIGINT, signal.SIGINT)), Points(), _stack, CFG, tmp_path)
    assert not (tmp_path / "checkpoints" / "latest.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _command(run_root: Path, data_root: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "harness.run", "task=finetune", "model=clip", "data=synthetic",
            f"run_root={run_root}", f"data.root={data_root}", "data.generate.n_images=40",
            "+data.generate.pretrain_pairs=16", "data.num_workers=2", f"scale.train.steps={steps}",
            "scale.train.batch_size=16", "scale.train.warmup_steps=2", "task.log_every=1",
            "task.ckpt_every=1000", "task.progress=false", "task.tensorboard=false"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_DISTRIBUTED": "0",
            "PYTHONPATH": str(REPO)}


def _logged(run_root: Path, step: int) -> bool:
    return any(f'"step": {step},' in m.read_text()
               for m in run_root.glob("finetune-*/metrics.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_to_the_process_group_with_loader_workers_checkpoints(tmp_path, sig):
    from harness.data.synthetic import generate

    data, runs = tmp_path / "data", tmp_path / "runs"
    generate(data, n_images=40, pretrain_pairs=16)
    # A session of its own: the signal goes to this run's group (main process + 2 workers),
    # as `timeout`, Ctrl-C and SLURM deliver it, and never to pytest.
    proc = subprocess.Popen(_command(runs, data, steps=60), env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _logged(runs, 3) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    name = signal.Signals(sig).name
    assert proc.returncode == REQUEUE_EXIT, out[-3000:]
    assert f"Preempted: signal {name} at step" in out and "killed by signal" not in out
    (run_dir,) = runs.glob("finetune-*")
    stopped = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert 3 <= stopped["step"] < 60 and not stopped["complete"]
    assert not (run_dir / "FAILED").exists()

    again = subprocess.run(_command(runs, data, steps=60), env=_env(), cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"at step {stopped['step']}" in again.stdout
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["complete"]


@pytest.mark.slow
def test_worker_signalled_while_starting_survives():
    """A spawned worker imports torch for a second before its worker_init_fn runs."""
    from torch.utils.data import DataLoader

    from harness.procs import ignore_stop_signals, stop_signals_blocked

    loader = DataLoader(Dispositions(), batch_size=4, num_workers=1, worker_init_fn=
                        ignore_stop_signals, multiprocessing_context="spawn")
    with stop_signals_blocked():
        batches = iter(loader)
    for worker in batches._workers:  # still importing: no handler of its own yet
        os.kill(worker.pid, signal.SIGUSR2)
    assert next(batches).all()
    del batches
