"""Full disks, file modes and honest failure messages.

The full-disk tests that need a real ``ENOSPC`` run a child process in a private mount namespace
(``unshare --mount``, plus ``--map-root-user`` when not root) on a tiny tmpfs: the kernel itself
refuses the writes, the mount disappears with the child, and nothing on the host changes. They
skip where the system forbids such namespaces. The child runs this file as a script
(``python tests/test_storage.py <scenario> <mount>``) and prints one JSON report.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn

from harness.atomic import DiskFullError, atomic_write
from harness.train.checkpoint import atomic_save, estimate_size, load_checkpoint
from harness.train.loop import NonFiniteLossError, train

REPO_ROOT = Path(__file__).resolve().parents[1]
CHUNK = 4096


# -- a tiny training problem --------------------------------------------------------------------

class Toy(nn.Module):
    """Linear regression; during call ``fill_at`` another writer fills ``disk`` (see fill_disk),
    and from call ``nan_at`` on the loss is NaN."""

    def __init__(self, *, fill_at: int | None = None, disk: Path | None = None,
                 nan_at: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.fill_at, self.disk, self.nan_at = fill_at, disk, nan_at
        self.calls = 0

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == self.fill_at:
            fill_disk(self.disk / "filler")
        loss = ((self.lin(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return {"mse": loss}


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.linspace(-1, 1, 4) * (i % 7)
        return {"x": x, "y": x.sum()}


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _cfg(steps: int, ckpt_every: int) -> dict[str, Any]:
    return {"steps": steps, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0, "warmup_steps": 1,
            "grad_clip": 1.0, "log_every": 1, "ckpt_every": ckpt_every, "seed": 0,
            "num_workers": 0, "device": "cpu", "progress": False}


def fill_disk(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem refuses, as a colleague's job would."""
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * CHUNK)
        except OSError:
            pass


def _error(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "errno": getattr(exc, "errno", None),
            "message": str(exc)}


# -- child-process scenarios (run on a tmpfs mounted at argv[2]) -----------------------------

def scenario_write(disk: Path) -> dict[str, Any]:
    """Writes larger than the disk, through torch.save and through a plain write."""
    keep = disk / "result.json"
    atomic_write(keep, lambda handle: handle.write(b'{"old": true}\n'))
    report: dict[str, Any] = {}
    writers: dict[str, Callable[[Any], Any]] = {
        "torch": lambda handle: torch.save({"w": torch.zeros(200_000)}, handle),
        "bytes": lambda handle: handle.write(b"x" * 400_000),
    }
    for name, write in writers.items():
        try:
            atomic_write(keep, write)
            report[name] = None
        except Exception as exc:  # reported, the test judges it
            report[name] = _error(exc)
    report["content"] = keep.read_text()
    report["files"] = sorted(os.listdir(disk))
    return report


def scenario_train(disk: Path) -> dict[str, Any]:
    """Final saves on a disk that filled up: once after checkpoints, once before any."""
    report: dict[str, Any] = {}
    # 12 steps, a checkpoint every 3: the last one is step 9; the disk fills during step 12.
    run = disk / "run"
    try:
        train(Toy(fill_at=12, disk=disk), Points(), _collate, _cfg(12, 3), run)
        report["after"] = None
    except Exception as exc:
        report["after"] = _error(exc)
    ckpt = run / "checkpoints" / "latest.pt"
    state = load_checkpoint(ckpt)
    report["kept_step"], report["kept_complete"] = state["step"], state["complete"]
    report["checkpoint_files"] = sorted(os.listdir(ckpt.parent))
    (disk / "filler").unlink()
    # No checkpoint before the end, and the disk fills before the first metrics line.
    fresh = disk / "fresh"
    try:
        train(Toy(fill_at=1, disk=disk), Points(), _collate, _cfg(4, 100), fresh)
        report["before"] = None
    except Exception as exc:
        report["before"] = _error(exc)
    report["fresh_files"] = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*"))
    return report


SCENARIOS = {"write": scenario_write, "train": scenario_train}


# -- the tmpfs fixture --------------------------------------------------------------------------

def _namespace_command(mount: Path, size_kib: int, argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace with a ``size_kib`` tmpfs at ``mount``."""
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = 'mount -t tmpfs -o size="$1"k tmpfs "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", *user, "sh", "-c", script, "sh", str(size_kib), str(mount),
            *argv]


Tmpfs = namedtuple("Tmpfs", "run mount")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """Runs a scenario of this file on a tiny private tmpfs; skips where that is forbidden."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a private tmpfs")
    probe = subprocess.run(_namespace_command(mount, 64, ["true"]), capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}")

    def run(scenario: str, size_kib: int) -> tuple[dict[str, Any], str]:
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        argv = [sys.executable, str(Path(__file__).resolve()), scenario, str(mount)]
        proc = subprocess.run(_namespace_command(mount, size_kib, argv), capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr

    yield Tmpfs(run, mount)


# -- full disk ----------------------------------------------------------------------------------

def test_real_enospc_names_the_path_keeps_the_old_file_and_removes_the_temp(tmpfs):
    """Kernel ENOSPC on a 256 KiB tmpfs, raw and wrapped by torch.save in a RuntimeError."""
    report, _ = tmpfs.run("write", 256)
    path = tmpfs.mount / "result.json"
    for name in ("torch", "bytes"):
        error = report[name]
        assert error is not None, f"{name}: a write larger than the disk succeeded"
        assert error["type"] == "DiskFullError" and error["errno"] == 28, error
        assert f"disk full while writing {path}:" in error["message"], error
        assert f"the previous result.json is kept unchanged at {path}" in error["message"]
    assert report["content"] == '{"old": true}\n'
    assert report["files"] == ["result.json"]  # no temp file left behind


def test_final_save_on_a_full_disk_keeps_the_last_checkpoint_and_names_it(tmpfs):
    """Real training on a 1 MiB tmpfs that another writer fills during the last step."""
    report, stderr = tmpfs.run("train", 1024)
    ckpt = tmpfs.mount / "run" / "checkpoints" / "latest.pt"
    after = report["after"]
    assert after is not None and after["type"] == "DiskFullError", after
    assert f"not enough disk space for {ckpt}: needs at least " in after["message"], after
    assert f"the last good checkpoint is {ckpt} (step 9)" in after["message"], after
    assert report["kept_step"] == 9 and report["kept_complete"] is False
    assert report["checkpoint_files"] == ["latest.pt"]

    fresh = tmpfs.mount / "fresh"
    before = report["before"]
    assert before is not None and before["type"] == "DiskFullError", before
    assert (f"no checkpoint was written yet ({fresh / 'checkpoints' / 'latest.pt'} does not "
            "exist)") in before["message"], before
    assert "checkpoints/latest.pt" not in report["fresh_files"]
    # The metrics log hit the full disk first; it warned and training went on to the save.
    assert f"cannot write {fresh / 'metrics.jsonl'} at step 1" in stderr


def test_checkpoint_save_refuses_up_front_when_free_space_is_short(tmp_path, monkeypatch):
    """The pre-check, with ``shutil.disk_usage`` reporting 1,000 bytes free."""
    path = tmp_path / "checkpoints" / "latest.pt"
    atomic_save({"step": 3, "w": torch.zeros(10)}, path)
    before = path.read_bytes()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    big = {"step": 4, "w": torch.zeros(10_000)}
    with pytest.raises(DiskFullError) as info:
        atomic_save(big, path)
    message = str(info.value)
    assert f"not enough disk space for {path}: needs at least {estimate_size(big):,} bytes, " \
           "1,000 free; " in message
    assert f"the last good checkpoint is {path} (step 3)" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]


def test_size_estimate_is_a_lower_bound_that_counts_shared_storage_once(tmp_path):
    """Tied weights and views are saved once; the estimate must not refuse saves that fit."""
    shared = torch.randn(50_000)
    obj = {"a": shared, "b": shared, "view": shared[:100], "opt": {"m": torch.zeros(1000)},
           "rng": [torch.get_rng_state()], "step": 5}
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    tensor_bytes = shared.nbytes + 1000 * 4 + torch.get_rng_state().nbytes
    assert tensor_bytes <= estimate_size(obj) <= path.stat().st_size


# -- non-finite loss message --------------------------------------------------------------------

def test_nan_message_names_the_last_checkpoint_and_its_step(tmp_path):
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    with pytest.raises(NonFiniteLossError) as info:
        train(Toy(nan_at=8), Points(), _collate, _cfg(12, 3), tmp_path)
    assert f"the last good checkpoint is {ckpt} (step 6)" in str(info.value)
    assert load_checkpoint(ckpt)["step"] == 6


def test_nan_message_says_when_no_checkpoint_exists(tmp_path):
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    with pytest.raises(NonFiniteLossError) as info:
        train(Toy(nan_at=2), Points(), _collate, _cfg(12, 3), tmp_path)
    message = str(info.value)
    assert f"no checkpoint was written yet ({ckpt} does not exist)" in message
    assert "last good checkpoint" not in message and not ckpt.exists()


# -- file modes ---------------------------------------------------------------------------------

@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Sets the process umask for one test, restoring the previous one after it."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, str]:
    """``relative path -> octal mode`` of ``root`` and everything below it."""
    return {str(p.relative_to(root.parent)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in [root, *root.rglob("*")]}


def _wrong_modes(root: Path, umask: int) -> dict[str, str]:
    want = {True: oct(0o777 & ~umask), False: oct(0o666 & ~umask)}
    return {name: mode for name, mode in _modes(root).items()
            if mode != want[(root.parent / name).is_dir()]}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], indirect=True, ids=oct)
def test_writers_honour_the_umask(tmp_path, umask):
    """Results, checkpoints, tables, figures and the vocabulary cache, written directly."""
    import pandas as pd

    from harness.analysis.plots import training_curves
    from harness.data.text import build_vocab
    from harness.launch.store import atomic_write_json, atomic_write_text

    out = tmp_path / "out"
    run = out / "runs" / "finetune-toy"
    atomic_write_json(run / "result.json", {"ok": True})
    atomic_save({"w": torch.zeros(3)}, run / "checkpoints" / "latest.pt")
    atomic_write_text(out / "results" / "tables" / "grid.md", "| a |\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    frame = pd.DataFrame([{"task": "finetune", "run_dir": str(run), "model": "toy",
                           "dataset": "d", "status": "done", "stage_id": "finetune-toy"}])
    figures = training_curves(frame, "grid", out / "results" / "figures")
    vocab = build_vocab(["a red circle", "a blue square"] * 5, out / "vocab", vocab_size=50)
    assert figures and (vocab / "vocab.txt").is_file()
    assert _wrong_modes(out, umask) == {}


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022], indirect=True, ids=oct)
def test_a_real_grid_writes_files_others_can_read(tmp_path, umask):
    """``harness.run grid=smoke`` (tiny): every file 0644 and every folder 0755 under umask 022."""
    from harness.run import main

    base = tmp_path / "grid"
    assert main(["grid=smoke", f"run_root={base / 'runs'}", f"results_dir={base / 'res'}",
                 f"data.root={base / 'data'}", "data.generate.n_images=60",
                 "scale.train.steps=3", "data.num_workers=0"]) == 0
    modes = _modes(base)
    for part in ("/result.json", "/checkpoints/latest.pt", "/tables/smoke.md",
                 "/figures/smoke_recall_at_k.png", "/vocab.txt", "runs/.features"):
        assert any(part in name for name in modes), f"the grid wrote no {part}"
    assert _wrong_modes(base, umask) == {}


if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](Path(sys.argv[2]))), flush=True)
