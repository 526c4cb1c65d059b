"""Recall@K, median and mean rank for image-text retrieval: the harness's metric contract
(docs/contracts.md).

The ranks come from :mod:`harness.eval.ranking` (counting, chunked, exact ties by gallery
index); this module turns them into the contract's keys, R@K in percent, and adds COCO's
"1K" protocol (the mean over five folds of 1,000 images).

It also keeps the ranks themselves: :func:`record_per_query` writes every query's rank of its
first positive to ``ranks.npz`` in the run directory (int32 arrays ``i2t``, ``t2i`` and, for
dual encoders, ``t2t``/``i2i`` with 0 for a query that has no positive) and returns the
``per_query`` path and the bootstrap ``intervals`` (:mod:`harness.eval.bootstrap`) for
``result.json``, so any metric and any interval can be recomputed without the model.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.atomic import atomic_write
from harness.eval.bootstrap import DEFAULT_LEVEL, DEFAULT_SAMPLES, DEFAULT_SEED, bootstrap_intervals
from harness.eval.ranking import (  # noqa: F401  (re-exported: the public ranking API)
    CPU_CHUNK_SIZE,
    GPU_CHUNK_SIZE,
    _check_embedding_pair,
    _check_txt2img,
    default_chunk_size,
    multi_positive_ranks,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
PER_QUERY_FILE = "ranks.npz"


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one K for recall@K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"ks must be positive integers, got {ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks has duplicates (rsum would count them twice): {ks!r}")
    return ks


# ------------------------------------------------------------------------------ metrics


def summarize_ranks(
    ranks: Tensor, ks: Sequence[int] = DEFAULT_KS, prefix: str = ""
) -> dict[str, float]:
    """R@K in percent for each K, median and mean of 1-based ranks, keys prefixed."""
    ks = _check_ks(ks)
    ranks = torch.as_tensor(ranks).flatten()
    if ranks.numel() == 0:
        raise ValueError("ranks is empty")
    out = {f"{prefix}R@{k}": 100.0 * float((ranks <= k).double().mean()) for k in ks}
    # The statistical median: the mean of the two middle ranks when their count is even.
    s = ranks.double().sort().values
    n = s.numel()
    out[f"{prefix}medr"] = float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)
    out[f"{prefix}meanr"] = float(s.mean())
    return out


def metrics_from_ranks(
    i2t: Tensor, t2i: Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """The contract's metric dict (R@K both ways, rsum, medr and meanr) from two rank vectors."""
    ks = _check_ks(ks)
    a, b = summarize_ranks(i2t, ks, "i2t_"), summarize_ranks(t2i, ks, "t2i_")
    out = {f"i2t_R@{k}": a[f"i2t_R@{k}"] for k in ks}
    out.update({f"t2i_R@{k}": b[f"t2i_R@{k}"] for k in ks})
    out["rsum"] = sum(out.values())
    for direction, summary in (("i2t", a), ("t2i", b)):
        out[f"{direction}_medr"] = summary[f"{direction}_medr"]
        out[f"{direction}_meanr"] = summary[f"{direction}_meanr"]
    return out


def retrieval_metrics(
    sims: Tensor,
    txt2img: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Retrieval metrics from sims[n_images, n_texts] and each text's image index."""
    ks = _check_ks(ks)
    return metrics_from_ranks(*retrieval_ranks(sims, txt2img, chunk_size), ks)


def retrieval_metrics_from_embeddings(
    img_emb: Tensor,
    txt_emb: Tensor,
    txt2img: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Retrieval metrics from embeddings without materialising the similarity matrix."""
    ks = _check_ks(ks)
    ranks = retrieval_ranks_from_embeddings(img_emb, txt_emb, txt2img, chunk_size, device)
    return metrics_from_ranks(*ranks, ks)


def coco_1k_metrics(
    img_emb: Tensor,
    txt_emb: Tensor,
    txt2img: Tensor,
    n_folds: int = 5,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """COCO "1K" protocol: the mean over folds of consecutive images of each fold's metrics."""
    ks = _check_ks(ks)
    img_emb, txt_emb = _check_embedding_pair(img_emb, txt_emb, ("img_emb", "txt_emb"))
    n_images = img_emb.shape[0]
    txt2img = _check_txt2img(txt2img, n_images, txt_emb.shape[0])
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds <= 0:
        raise ValueError(f"n_folds must be a positive integer, got {n_folds!r}")
    if n_images % n_folds:
        raise ValueError(f"{n_images} images do not split into {n_folds} equal folds")
    size = n_images // n_folds
    folds = []
    for f in range(n_folds):
        texts = ((txt2img >= f * size) & (txt2img < (f + 1) * size)).nonzero().flatten()
        img = img_emb[f * size : (f + 1) * size]
        fold_txt = txt_emb[texts.to(txt_emb.device)]
        folds.append(
            retrieval_metrics_from_embeddings(
                img, fold_txt, txt2img[texts] - f * size, ks, chunk_size, device
            )
        )
    return {key: sum(m[key] for m in folds) / n_folds for key in folds[0]}


# --------------------------------------------------------------------------- per-query ranks


def write_per_query(run_dir: Path, ranks: Mapping[str, Tensor | np.ndarray]) -> str:
    """Write ``ranks.npz`` (one int32 array per direction) atomically; its path in run_dir."""
    arrays = {}
    for direction, r in ranks.items():
        arr = np.asarray(torch.as_tensor(r).cpu())
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"per-query ranks {direction!r} must be a 1-D integer array, got "
                             f"{arr.dtype} of shape {arr.shape}")
        arrays[direction] = arr.astype(np.int32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(Path(run_dir) / PER_QUERY_FILE, lambda handle: handle.write(buffer.getvalue()))
    return PER_QUERY_FILE


def read_per_query(path: Path) -> dict[str, np.ndarray]:
    """Direction -> int32 ranks (0: no positive) from a ``ranks.npz``; ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable per-query rank file ({exc})") from exc


def record_per_query(run_dir: Path, ranks: Mapping[str, Tensor | np.ndarray],
                     bootstrap: Mapping[str, Any] | None = None,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Write ``ranks.npz``; ``{"per_query": its path, "intervals": ...}`` for result.json.

    ``bootstrap`` holds ``samples``, ``seed`` and ``level`` (config ``task.bootstrap``);
    ``samples: 0`` writes the ranks without intervals. Ranks 0 (queries without a positive)
    are left out of the intervals, as they are of the metrics.
    """
    settings = dict(bootstrap or {})
    samples = int(settings.get("samples", DEFAULT_SAMPLES))
    out: dict[str, Any] = {"per_query": write_per_query(run_dir, ranks)}
    if samples > 0:
        kept = {d: r[r > 0] for d, r in
                ((d, np.asarray(torch.as_tensor(r).cpu())) for d, r in ranks.items())}
        out["intervals"] = bootstrap_intervals(
            {d: r for d, r in kept.items() if r.size}, ks, samples,
            int(settings.get("seed", DEFAULT_SEED)), float(settings.get("level", DEFAULT_LEVEL)))
    return out
