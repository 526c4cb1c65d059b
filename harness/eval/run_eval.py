"""Evaluate a trained model on one split: embedding retrieval for dual encoders (plus the
unimodal tasks), full scoring or top-k re-ranking for cross-encoders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from harness.data.karpathy import CaptionCorpus
from harness.data.loaders import ImageFiles, worker_context
from harness.data.transforms import ImageTransform
from harness.eval.features import cached_embeddings, encode_images, encode_texts
from harness.eval.retrieval import metrics_from_ranks, retrieval_ranks_from_embeddings
from harness.eval.unimodal import unimodal_metrics
from harness.procs import ignore_stop_signals

Tokenize = Callable[[Sequence[str]], dict[str, Tensor]]


def evaluate_dual(model: nn.Module, corpus: CaptionCorpus, transform: ImageTransform,
                  tokenize: Tokenize, *, batch_size: int, device: torch.device,
                  num_workers: int, cache_dir: Path | None = None, cache_key: str = "",
                  ranks_out: dict[str, Tensor] | None = None
                  ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """(metrics incl. unimodal, protocol fields, timings) of an embedding model; embeddings
    come from ``cache_dir/<cache_key>.pt`` when an earlier evaluation stored them, and each
    query's rank goes to ``ranks_out`` by direction (i2t, t2i, t2t, i2i) when given."""
    def encode() -> tuple[Tensor, Tensor]:
        img = encode_images(model, corpus, transform, batch_size=batch_size, device=device,
                            num_workers=num_workers)
        txt = encode_texts(model, corpus.captions, tokenize, batch_size=batch_size,
                           device=device)
        return img, txt

    t0 = time.perf_counter()
    img, txt, hit = cached_embeddings(cache_dir, cache_key, encode)
    t1 = time.perf_counter()
    txt2img = torch.tensor(corpus.txt2img)
    i2t, t2i = retrieval_ranks_from_embeddings(img, txt, txt2img, device=device)
    metrics = metrics_from_ranks(i2t, t2i)
    t2 = time.perf_counter()
    if ranks_out is not None:
        ranks_out.update(i2t=i2t, t2i=t2i)
    # Same embeddings, other queries: the paper's "text matching" and "image retrieval".
    metrics.update(unimodal_metrics(img, txt, txt2img, corpus.scene_ids, device=device,
                                    ranks_out=ranks_out))
    protocol = {"first_stage": None, "k_test": None, "fusion": None}
    # A cache hit's encode time is a read, not an encode: say so next to the number.
    return metrics, protocol, {"encode_s": round(t1 - t0, 3), "rank_s": round(t2 - t1, 3),
                               "features_from_cache": hit}


def evaluate_cross(model: nn.Module, corpus: CaptionCorpus, transform: ImageTransform,
                   tokenize: Tokenize, *, task: Mapping[str, Any], device: torch.device,
                   num_workers: int, first_stage: tuple[Tensor, Tensor, str] | None = None,
                   ranks_out: dict[str, Tensor] | None = None
                   ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """(metrics, protocol fields, timings) of a pair-scoring model; ``task.mode=auto`` scores
    every pair when that fits ``task.max_pairs`` and re-ranks the top ``k_test`` otherwise.
    ``first_stage`` = (image embeddings, text embeddings, run id) of another model's eval:
    its top ``k_test`` candidates are re-ranked (``task.mode`` must then be auto or topk)."""
    from harness.eval.rerank import cross_encoder_retrieval

    mode = task["mode"]
    if first_stage is not None:
        if mode == "full":
            raise ValueError(f"task.first_stage={first_stage[2]} re-ranks top-k candidates; "
                             "task.mode=full scores every pair instead (use auto or topk)")
        mode = "topk"
    elif mode == "auto":
        mode = "full" if corpus.n_images * corpus.n_texts <= int(task["max_pairs"]) else "topk"
    given = {} if first_stage is None else {"first_stage": first_stage[:2],
                                            "first_stage_name": first_stage[2]}
    batch = int(task["batch_size"])
    images = DataLoader(ImageFiles(corpus.image_paths, transform), batch_size=batch,
                        num_workers=num_workers, worker_init_fn=ignore_stop_signals,
                        multiprocessing_context=worker_context(num_workers))
    metrics, protocol, timings = cross_encoder_retrieval(
        model, images, corpus.captions, torch.tensor(corpus.txt2img), mode=mode,
        k_test=int(task["k_test"]), fusion=task["fusion"], tokenize=tokenize,
        batch_pairs=int(task["batch_pairs"]), feature_batch_size=batch, device=device,
        max_pairs=int(task["max_pairs"]), allow_over_budget=bool(task["allow_over_budget"]),
        ranks_out=ranks_out, **given)
    protocol = {**protocol, "mode": mode}
    return metrics, protocol, timings
