"""Torch datasets and batching shared by every model: training pairs and evaluation galleries."""

from __future__ import annotations

import multiprocessing
import random
import sys
import threading
import time
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from harness.data.images import load_rgb
from harness.data.karpathy import CaptionCorpus
from harness.data.transforms import ImageTransform

Item = dict[str, Any]


class CaptionPairs(Dataset[Item]):
    """Training form: one item per caption, with its image and the image's index as id.

    ``image_views=2`` adds a second augmented view (``image2``); ``second_caption`` adds another
    caption of the same image (``caption2``, the caption itself when it is the only one).
    """

    def __init__(self, corpus: CaptionCorpus, transform: ImageTransform, *,
                 image_views: int = 1, second_caption: bool = False, seed: int = 0) -> None:
        self.corpus = corpus
        self.transform = transform
        self.image_views = image_views
        self.second_caption = second_caption
        self._img2txt = corpus.img2txt() if second_caption else None
        self._seed = seed

    def __len__(self) -> int:
        return self.corpus.n_texts

    def __getitem__(self, index: int) -> Item:
        image_index = self.corpus.txt2img[index]
        image = load_rgb(self.corpus.image_paths[image_index])
        item: Item = {"image": self.transform(image), "caption": self.corpus.captions[index],
                      "image_id": image_index}
        if self.image_views > 1:
            item["image2"] = self.transform(image)
        if self._img2txt is not None:
            others = [t for t in self._img2txt[image_index] if t != index] or [index]
            # Seeded by index so a resumed run sees the same pairing as an uninterrupted one.
            item["caption2"] = self.corpus.captions[random.Random(self._seed * 1_000_003 + index)
                                                    .choice(others)]
        return item


class ImageFiles(Dataset[Tensor]):
    """Evaluation form of a gallery: the images of a split, in corpus order."""

    def __init__(self, paths: Sequence[Path], transform: ImageTransform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(load_rgb(self.paths[index]))


class Collate:
    """Items into a model batch, tokenising captions once per batch (in the loader worker).

    A class, not a closure: loader workers started with ``spawn`` (macOS, or a stage run in a
    spawned process such as ``cluster.workers=2``) receive the collate function pickled.
    """

    def __init__(self, tokenize: Callable[[Sequence[str]], dict[str, Tensor]]) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[Item]) -> dict[str, Tensor]:
        batch = {"images": torch.stack([it["image"] for it in items]),
                 "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long)}
        batch.update(self.tokenize([it["caption"] for it in items]))
        if "image2" in items[0]:
            batch["images2"] = torch.stack([it["image2"] for it in items])
        if "caption2" in items[0]:
            second = self.tokenize([it["caption2"] for it in items])
            batch["input_ids2"] = second["input_ids"]
            batch["attention_mask2"] = second["attention_mask"]
        return batch


def make_collate(tokenize: Callable[[Sequence[str]], dict[str, Tensor]]) -> Collate:
    """Collate items into a model batch, tokenising captions once per batch (in the worker)."""
    return Collate(tokenize)


def worker_context(num_workers: int) -> BaseContext | None:
    """DataLoader ``multiprocessing_context``: fork where that is safe, else the default.

    A stage run in a spawned process (``cluster.workers=2``) inherits "spawn" as its start
    method, so each loader worker would re-import torch and the harness (seconds per worker
    on 2 cores) before decoding an image. A fork is safe when nothing the child inherits
    can be half-held: on Linux, with no CUDA context (a forked child cannot use it) and no
    other Python thread (it could hold a lock the child would find taken forever). Torch's
    own intra-op pool is reset in the child by torch, and the workers' ``worker_init_fn``
    (``ignore_stop_signals``) runs in a forked worker just as in a spawned one.
    """
    if num_workers <= 0 or sys.platform != "linux":
        return None
    if torch.cuda.is_initialized() or not _only_thread_left():
        return None
    return multiprocessing.get_context("fork")


# A loader that has just shut its workers down leaves one multiprocessing queue feeder thread
# per worker, which flushes the closed queue and exits within milliseconds. Counted as "another
# thread", it would make the next loader of the process (an eval right after a first stage's
# encode) spawn its workers half of the time.
_FEEDER_THREAD = "QueueFeederThread"  # the name multiprocessing.queues gives it
_FEEDER_SETTLE_S = 1.0


def _only_thread_left(settle_s: float = _FEEDER_SETTLE_S) -> bool:
    """True when this is the process's only Python thread, once finishing feeders have exited.

    A feeder of a queue still in use does not exit: after ``settle_s`` it still counts.
    """
    deadline = time.monotonic() + settle_s
    for thread in threading.enumerate():
        if thread.name == _FEEDER_THREAD and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return threading.active_count() == 1
