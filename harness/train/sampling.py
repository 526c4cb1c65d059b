"""Data position and per-sample randomness: what makes a resumed run bitwise identical.

The training stream is one endless sequence of dataset indices (a permutation per epoch).
Global batch ``g`` is positions ``[g*B, (g+1)*B)`` of it and rank ``r`` takes its slice, so
the data position of a run is a single number (samples consumed) whatever the world size.
Every sample's augmentation randomness is seeded from ``(seed, position)`` rather than from
the state of whichever DataLoader worker happens to load it: results depend on neither the
number of workers nor where a run was interrupted.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from harness.data.loaders import worker_context
from harness.procs import ignore_stop_signals
from harness.seeding import seeded


class ResumableSampler(Sampler[Any]):
    """An endless stream of per-epoch permutations that can start at any sample position.

    With ``world_size > 1`` this rank yields only its ``batch_size`` slice of each global
    batch of ``batch_size * world_size`` positions. With ``positions=True`` it yields
    ``(index, position)`` pairs for :class:`PositionSeeded`.
    """

    def __init__(self, n: int, seed: int, start: int = 0, *, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1, positions: bool = False) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.start = n, seed, start
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.positions = positions

    def _stream(self, start: int) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(start, self.n)
        position = start
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            for index in order[offset:].tolist():
                yield index, position
                position += 1
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[Any]:
        per_step = self.batch_size * self.world_size
        if self.world_size == 1:
            stream = self._stream(self.start)
        else:
            stream = (pair for pair in self._stream(self.start)
                      if (pair[1] % per_step) // self.batch_size == self.rank)
        for index, position in stream:
            yield (index, position) if self.positions else index

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return sys.maxsize


class PositionSeeded(Dataset):
    """``dataset[index]`` computed under RNGs seeded by ``(seed, position)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        with seeded(self.seed, position):
            return self.dataset[index]


def build_loader(dataset: Dataset, collate: Callable[[list], Any], *, batch_size: int, seed: int,
                 start: int, rank: int, world_size: int, num_workers: int, pin_memory: bool,
                 prefetch_factor: int | None = None) -> DataLoader:
    """The training DataLoader of this rank, starting at global sample position ``start``.

    Map-style datasets go through :class:`ResumableSampler` and :class:`PositionSeeded`;
    iterable ones (WebDataset shards) position themselves through ``set_position``.
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        # Workers leave SIGTERM/SIGUSR2/SIGINT to the main process, which checkpoints first.
        # Forked where that is safe: inside a stage process of cluster.workers>1 the default
        # start method would re-import torch and the harness in every worker.
        kwargs.update(prefetch_factor=prefetch_factor or 2, persistent_workers=False,
                      worker_init_fn=ignore_stop_signals,
                      multiprocessing_context=worker_context(num_workers))
    # The loader's own generator: creating its iterator must not consume the global torch
    # RNG, or a resumed run's dropout masks would be shifted by one draw.
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, IterableDataset):
        set_position = getattr(dataset, "set_position", None)
        if set_position is None:
            raise TypeError(f"{type(dataset).__name__}: iterable training datasets need "
                            f"set_position(rank=, world_size=, batches_done=, batch_size=)")
        set_position(rank=rank, world_size=world_size, batches_done=start // (batch_size
                     * world_size), batch_size=batch_size)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                          num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                          generator=generator, **kwargs)
    assert isinstance(dataset, Sized)
    sampler = ResumableSampler(len(dataset), seed, start, rank=rank, world_size=world_size,
                               batch_size=batch_size, positions=True)
    return DataLoader(PositionSeeded(dataset, seed), batch_size=batch_size, sampler=sampler,
                      collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory,
                      drop_last=True, generator=generator, **kwargs)
