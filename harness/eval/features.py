"""Encode an evaluation split once: image and text embeddings of a DualEncoder.

Embeddings are cached on disk under a key made of the checkpoint's identity, the dataset,
the split and the preprocessing, so a second evaluation of the same thing (another metric,
a report rebuilt, a re-run after a crash) reads them instead of encoding again. Under
torch.distributed each rank encodes one contiguous shard and the shards are gathered in
rank order: every item exactly once, no sampler padding inflating the gallery.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from harness.atomic import atomic_write
from harness.data.karpathy import CaptionCorpus
from harness.data.loaders import ImageFiles, worker_context
from harness.data.transforms import ImageTransform
from harness.dist import current, gather_objects
from harness.interfaces import DualEncoder
from harness.procs import ignore_stop_signals

Tokenize = Callable[[Sequence[str]], dict[str, Tensor]]


def _autocast(device: torch.device) -> object:
    # bf16 on GPU halves the encode time; CPU stays fp32 so smoke numbers are exact.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """This rank's contiguous ``[start, stop)`` of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _gather_shards(parts: list[Tensor]) -> Tensor:
    """Every rank's rows in rank order (a rank with an empty shard contributes nothing)."""
    local = torch.cat(parts) if parts else None
    shards = [local] if current().world_size == 1 else gather_objects(local)
    return torch.cat([shard for shard in shards if shard is not None])


@torch.inference_mode()
def encode_images(model: DualEncoder, corpus: CaptionCorpus, transform: ImageTransform, *,
                  batch_size: int, device: torch.device, num_workers: int = 0) -> Tensor:
    """Embeddings of every image of ``corpus`` in corpus order, fp32 on CPU."""
    env = current()
    start, stop = shard_bounds(corpus.n_images, env.rank, env.world_size)
    loader = DataLoader(ImageFiles(corpus.image_paths[start:stop], transform),
                        batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals,
                        multiprocessing_context=worker_context(num_workers))
    out = []
    with _autocast(device):
        for images in loader:
            out.append(model.encode_image(images.to(device, non_blocking=True)).float().cpu())
    return _gather_shards(out)


@torch.inference_mode()
def encode_texts(model: DualEncoder, captions: Sequence[str], tokenize: Tokenize, *,
                 batch_size: int, device: torch.device) -> Tensor:
    """Embeddings of every caption in order, fp32 on CPU."""
    env = current()
    start, stop = shard_bounds(len(captions), env.rank, env.world_size)
    mine = captions[start:stop]
    out = []
    with _autocast(device):
        for first in range(0, len(mine), batch_size):
            tokens = {k: v.to(device) for k, v in tokenize(mine[first:first + batch_size]).items()}
            out.append(model.encode_text(tokens).float().cpu())
    return _gather_shards(out)


def checkpoint_identity(path: Path) -> str:
    """Content identity of a checkpoint file: size, mtime and a hash of its first and last MiB
    (hashing a multi-GB file in full would cost more than encoding a Karpathy split)."""
    stat = path.stat()
    h = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as handle:
        h.update(handle.read(1 << 20))
        handle.seek(max(0, stat.st_size - (1 << 20)))
        h.update(handle.read(1 << 20))
    return h.hexdigest()[:16]


def feature_key(checkpoint: Path, dataset: str, split: str,
                preprocessing: Mapping[str, Any]) -> str:
    """Cache key of one split's embeddings under one checkpoint and preprocessing."""
    blob = json.dumps({"checkpoint": checkpoint_identity(checkpoint), "dataset": dataset,
                       "split": split, "preprocessing": preprocessing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_embeddings(cache_dir: Path | None, key: str,
                      compute: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, bool]:
    """``(image_emb, text_emb, hit)``: read from ``cache_dir/<key>.pt`` or compute and store."""
    if cache_dir is None:
        img, txt = compute()
        return img, txt, False
    path = cache_dir / f"{key}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return stored["image"], stored["text"], True
    img, txt = compute()
    if current().is_main:
        atomic_write(path, lambda handle: torch.save({"image": img, "text": txt}, handle))
    return img, txt, False
