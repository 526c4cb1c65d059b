"""Loader workers of an eval stage are forked where safe, even in a spawned stage process."""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from harness.data.loaders import worker_context
from harness.eval.features import encode_images

# Set in the test process only: a forked worker inherits 1, a spawned one re-imports 0.
PARENT_STATE = 0

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="fork is used on Linux only")


class Report:
    """A 'transform' saying how its worker started and whether it ignores stop signals."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        return torch.tensor([float(PARENT_STATE), float(ignored)])


class Identity(torch.nn.Module):
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images


@linux_only
def test_forks_when_nothing_forbids_it() -> None:
    assert worker_context(2).get_start_method() == "fork"
    assert worker_context(0) is None  # no workers, nothing to start


@linux_only
def test_another_thread_or_cuda_keeps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert worker_context(2) is None
    finally:
        release.set()
        other.join()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert worker_context(2) is None


@linux_only
def test_a_queue_in_use_keeps_the_default() -> None:
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    queue.put(1)  # starts its feeder thread, which lives as long as the queue is open
    try:
        assert worker_context(2) is None
    finally:
        assert queue.get(timeout=10) == 1
        queue.close()
        queue.join_thread()


@pytest.fixture
def spawn_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a stage process started by spawn: "spawn" is the process-wide default, and
    PARENT_STATE is 1 here, so a forked worker sees 1 and a spawned one re-imports 0."""
    default = multiprocessing.context._default_context
    monkeypatch.setattr(default, "_actual_context", multiprocessing.get_context("spawn"))
    monkeypatch.setattr(sys.modules[__name__], "PARENT_STATE", 1)


@linux_only
def test_eval_workers_fork_under_an_inherited_spawn_default(
    tmp_path: Path, spawn_default: None
) -> None:
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), (i, 0, 0)).save(paths[-1])
    corpus = SimpleNamespace(n_images=4, image_paths=paths)
    out = encode_images(Identity(), corpus, Report(), batch_size=2,
                        device=torch.device("cpu"), num_workers=2)
    assert out[:, 0].tolist() == [1.0] * 4  # forked: the parent's state is there
    assert out[:, 1].tolist() == [1.0] * 4  # and worker_init_fn still ignores SIGTERM


class ParentState(torch.utils.data.Dataset):
    """Items saying whether their worker inherited the parent's state and ignores SIGTERM."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        return torch.tensor([float(PARENT_STATE), float(ignored)])


def training_loader() -> torch.utils.data.DataLoader:
    """The training loader of ParentState items, two workers, four items a batch."""
    from harness.train.sampling import build_loader

    return build_loader(ParentState(), torch.stack, batch_size=4, seed=0, start=0, rank=0,
                        world_size=1, num_workers=2, pin_memory=False)


def first_two_batches(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    """The loader's first eight items; its workers shut down when this returns."""
    batches = iter(loader)
    return torch.cat([next(batches), next(batches)])


@linux_only
def test_training_workers_fork_under_an_inherited_spawn_default(spawn_default: None) -> None:
    items = first_two_batches(training_loader())
    assert items[:, 0].tolist() == [1.0] * 8  # forked workers
    assert items[:, 1].tolist() == [1.0] * 8  # stop signals ignored


@linux_only
def test_a_loader_built_as_the_last_ones_workers_exit_still_forks(spawn_default: None) -> None:
    # As in a re-ranking eval: the first stage's encode loader shuts down, the cross-encoder's
    # loader is built at once. The old loader's queue feeders are still exiting then, half of
    # the time; they must not count as a thread that forbids forking.
    started_by = []
    loader = training_loader()
    for _ in range(8):
        started_by.append(first_two_batches(loader)[:, 0].tolist())
        loader = training_loader()  # at once, as its workers and their queue feeders exit
    assert started_by == [[1.0] * 8] * 8  # every loader forked its workers
