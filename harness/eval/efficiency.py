"""Retrieval cost model: index cost, query cost and the time of a full evaluation protocol.

A dual encoder encodes every image and every text once (the *index*), then ranks with one matrix
product and a top-k per query. A cross-encoder caches unimodal features, then runs one forward
per scored (image, text) pair: every pair for full scoring, or ``k`` per query when re-ranking a
first stage's top-k. This gap is the paper's "3/1000 inference time" claim.

Each workload is timed on one fixed synthetic batch, repeated, and is **measured** outright when
its estimate fits the time budget, otherwise **extrapolated** linearly from a measured sample
(see :func:`harness.eval.timing.time_workload`). Data loading, decoding and tokenisation are never
included. Results are plain dicts for the ``efficiency`` block of ``result.json``; FLOPs, where
shown, are 2 x multiply-accumulates (see :mod:`harness.eval.flops`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from harness.eval.flops import FLOPS_CONVENTION
from harness.eval.timing import (
    LatencyStats,
    autocast_context,
    hardware_info,
    in_precision,
    measure_latency,
    overall_status,
    time_workload,
)
from harness.interfaces import CrossEncoder, DualEncoder, TextTokens, TokenFeatures
from harness.record import Efficiency

__all__ = [
    "PROTOCOLS", "LatencyStats", "measure_latency", "time_workload", "hardware_info",
    "resolve_protocol", "dual_encoder_costs", "cross_encoder_costs", "dual_protocol_flops",
    "cross_protocol_flops", "inference_time_ratio", "efficiency_block",
]

#: Karpathy test protocols as ``(n_images, n_texts)``.
PROTOCOLS: dict[str, tuple[int, int]] = {"coco_5k": (5000, 25000), "flickr30k_1k": (1000, 5000)}

NOT_INCLUDED = ["data loading", "image decoding and resizing", "tokenisation",
                "host-to-device copies of inputs"]

Workload = dict[str, object]


def resolve_protocol(protocol: str | tuple[int, int]) -> tuple[str, int, int]:
    """``(name, n_images, n_texts)`` for a name in :data:`PROTOCOLS` or an explicit size pair."""
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise KeyError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        return (protocol, *PROTOCOLS[protocol])
    n_images, n_texts = (int(n) for n in protocol)
    if n_images < 1 or n_texts < 1:
        raise ValueError(f"protocol sizes must be positive, got {protocol}")
    return (f"custom_{n_images}x{n_texts}", n_images, n_texts)


def _rows(tokens: TextTokens, n: int) -> dict[str, Tensor]:
    return {key: value[:n] for key, value in tokens.items()}


def _seconds(workloads: Mapping[str, Workload]) -> float:
    return sum(float(w["seconds"]) for w in workloads.values())


def _encode_workloads(
    encode_image: Callable[[int], object],
    encode_text: Callable[[int], object],
    batch_sizes: tuple[int, int],
    sizes: tuple[int, int],
    **timing: object,
) -> dict[str, Workload]:
    return {
        "image": time_workload(encode_image, units=sizes[0], batch_size=batch_sizes[0],
                               unit="images", **timing),
        "text": time_workload(encode_text, units=sizes[1], batch_size=batch_sizes[1],
                              unit="texts", **timing),
    }


def _unit_gallery(n: int, dim: int, device: torch.device) -> Tensor:
    # Only shapes set the cost of a matrix product and a top-k, so random embeddings will do.
    return torch.nn.functional.normalize(torch.randn(n, dim, device=device), dim=-1)


def _rank_step(queries: Tensor, gallery: Tensor, k: int) -> Callable[[int], object]:
    k = min(k, gallery.shape[0])
    return lambda n: torch.topk(queries[:n] @ gallery.T, k, dim=1)


def _query_latency(
    encode_one: Callable[[int], Tensor], gallery: Tensor, k: int, **timing: object
) -> dict[str, float | int]:
    k = min(k, gallery.shape[0])
    call = lambda: torch.topk(encode_one(1).float() @ gallery.T, k)  # noqa: E731
    return measure_latency(call, **timing).to_dict()


def dual_encoder_costs(
    model: DualEncoder,
    images: Tensor,
    tokens: TextTokens,
    *,
    protocol: str | tuple[int, int],
    device: torch.device | str,
    budget_s: float,
    k: int = 10,
    precision: str = "fp32",
    rank_batch_size: int = 1024,
    query_repeats: int = 20,
    warmup: int = 1,
) -> dict[str, object]:
    """Index cost, per-query cost and full-protocol seconds of an embedding-based retriever.

    ``images`` and ``tokens`` are one batch each, already on ``device``; their lengths are the
    encode batch sizes. ``budget_s`` bounds each timed workload separately, and the
    ``query_repeats`` single-query timings of each direction.
    """
    device = torch.device(device)
    name, n_images, n_texts = resolve_protocol(protocol)
    timing = {"device": device, "budget_s": budget_s, "warmup": warmup}
    encode_image = in_precision(lambda n: model.encode_image(images[:n]), device, precision)
    encode_text = in_precision(lambda n: model.encode_text(_rows(tokens, n)), device, precision)
    index = _encode_workloads(encode_image, encode_text,
                              (len(images), len(tokens["input_ids"])), (n_images, n_texts),
                              **timing)
    with torch.inference_mode():
        dim = int(encode_image(1).shape[-1])
        image_gallery = _unit_gallery(n_images, dim, device)
        text_gallery = _unit_gallery(n_texts, dim, device)
    # Each direction ranks from its own product: the similarity matrix is computed twice.
    ranking = {
        "i2t": time_workload(_rank_step(image_gallery, text_gallery, k), units=n_images,
                             batch_size=rank_batch_size, unit="queries", **timing),
        "t2i": time_workload(_rank_step(text_gallery, image_gallery, k), units=n_texts,
                             batch_size=rank_batch_size, unit="queries", **timing),
    }
    query_timing = {"device": device, "budget_s": budget_s, "warmup": max(1, warmup),
                    "repeats": query_repeats}
    query = {
        "i2t": _query_latency(encode_image, text_gallery, k, **query_timing),
        "t2i": _query_latency(encode_text, image_gallery, k, **query_timing),
    }
    return {
        "kind": "dual_encoder", "protocol": name, "n_images": n_images, "n_texts": n_texts,
        "k": k, "embed_dim": dim, "precision": precision, **hardware_info(device),
        "index": {**index, "seconds": _seconds(index)},
        "ranking": {**ranking, "seconds": _seconds(ranking)},
        "query": query, "total_s": _seconds(index) + _seconds(ranking),
        "status": overall_status([*index.values(), *ranking.values()]),
        "includes": ["image encode", "text encode", "similarity in fp32, once per direction",
                     "top-k per query"],
        "excludes": NOT_INCLUDED,
    }


def _pair_step(
    model: CrossEncoder, images: Tensor, tokens: TextTokens, batch_size: int,
) -> Callable[[int], object]:
    # One image and one text, repeated: a batch of pairs costs the same whatever its rows hold.
    with torch.inference_mode():
        image = model.image_features(images[:1])
        text = model.text_features(_rows(tokens, 1))
        rows = torch.zeros(batch_size, dtype=torch.long, device=image.tokens.device)
        image, text = image.select(rows), text.select(rows)

    def score(n: int) -> object:
        return model.score_pairs(TokenFeatures(image.tokens[:n], image.mask[:n]),
                                 TokenFeatures(text.tokens[:n], text.mask[:n]))
    return score


def _first_stage_query_s(first_stage: Mapping[str, object] | float | None) -> dict[str, float]:
    if not isinstance(first_stage, Mapping):
        return {"i2t": 0.0, "t2i": 0.0}
    query: Mapping[str, Mapping[str, float]] = first_stage["query"]
    return {direction: float(query[direction]["median_s"]) for direction in ("i2t", "t2i")}


def _rerank_block(
    pairs: Workload, k: int, features: Mapping[str, Workload],
    first_stage: Mapping[str, object] | float | None,
) -> dict[str, object]:
    first_s = float(first_stage["total_s"]) if isinstance(first_stage, Mapping) else first_stage
    # A first stage given as bare seconds carries no status: only what was timed here counts.
    parts = [*features.values(), pairs]
    if isinstance(first_stage, Mapping):
        parts.append(first_stage)
    per_pair = float(pairs["seconds_per_unit"])
    first_query = _first_stage_query_s(first_stage)
    return {
        "k": k, "pairs": pairs, "first_stage_s": first_s,
        "total_s": _seconds(features) + float(pairs["seconds"]) + (first_s or 0.0),
        "status": overall_status(parts),
        "per_query_s": {d: k * per_pair + first_query[d] for d in ("i2t", "t2i")},
        "includes": ["image features", "text features", f"{k} pair forwards per query",
                     "first stage" if first_s is not None else "no first stage (none given)"],
    }


def cross_encoder_costs(
    model: CrossEncoder,
    images: Tensor,
    tokens: TextTokens,
    *,
    protocol: str | tuple[int, int],
    device: torch.device | str,
    budget_s: float,
    pair_batch_size: int = 256,
    k: int | None = None,
    first_stage: Mapping[str, object] | float | None = None,
    precision: str = "fp32",
    warmup: int = 1,
) -> dict[str, object]:
    """Full-scoring seconds of a pair-scoring retriever, and top-k re-ranking seconds if ``k``.

    ``first_stage`` is the first stage's :func:`dual_encoder_costs` result or its seconds;
    ``budget_s`` bounds each timed workload separately.
    """
    device = torch.device(device)
    name, n_images, n_texts = resolve_protocol(protocol)
    timing = {"device": device, "budget_s": budget_s, "warmup": warmup}
    features = _encode_workloads(
        in_precision(lambda n: model.image_features(images[:n]), device, precision),
        in_precision(lambda n: model.text_features(_rows(tokens, n)), device, precision),
        (len(images), len(tokens["input_ids"])), (n_images, n_texts), **timing)
    with autocast_context(device, precision):
        score = in_precision(_pair_step(model, images, tokens, pair_batch_size), device, precision)
    pairs = time_workload(score, units=n_images * n_texts, batch_size=pair_batch_size,
                          unit="pairs", **timing)
    per_pair = float(pairs["seconds_per_unit"])
    result: dict[str, object] = {
        "kind": "cross_encoder", "protocol": name, "n_images": n_images, "n_texts": n_texts,
        "precision": precision, **hardware_info(device),
        "features": {**features, "seconds": _seconds(features)},
        "full_scoring": {
            "pairs": pairs, "total_s": _seconds(features) + float(pairs["seconds"]),
            "status": overall_status([*features.values(), pairs]),
            "per_query_s": {"i2t": n_texts * per_pair, "t2i": n_images * per_pair},
            "includes": ["image features", "text features", "one pair forward per pair"],
        },
        "excludes": NOT_INCLUDED,
    }
    if k is not None:
        rerank = time_workload(score, units=k * (n_images + n_texts),
                               batch_size=pair_batch_size, unit="pairs", **timing)
        result["topk_rerank"] = _rerank_block(rerank, k, features, first_stage)
    return result


def dual_protocol_flops(
    n_images: int, n_texts: int, *, image_flops: int, text_flops: int, embed_dim: int
) -> dict[str, int]:
    """FLOPs (2 x MACs) of a dual-encoder protocol: encode everything, one similarity product."""
    index = n_images * image_flops + n_texts * text_flops
    similarity = 2 * n_images * n_texts * embed_dim
    return {"index_flops": index, "similarity_flops": similarity,
            "total_flops": index + similarity}


def cross_protocol_flops(
    n_images: int, n_texts: int, *, image_flops: int, text_flops: int, pair_flops: int,
    k: int | None = None, first_stage_flops: int = 0,
) -> dict[str, int]:
    """FLOPs (2 x MACs) of full scoring, and of top-k re-ranking when ``k`` is given."""
    features = n_images * image_flops + n_texts * text_flops
    flops = {"feature_flops": features, "full_scoring_flops": features
             + n_images * n_texts * pair_flops}
    if k is not None:
        flops["topk_rerank_flops"] = (features + k * (n_images + n_texts) * pair_flops
                                      + first_stage_flops)
    return flops


def inference_time_ratio(
    dual: Mapping[str, object], cross: Mapping[str, object], *, cross_mode: str = "full_scoring"
) -> dict[str, object]:
    """Dual-encoder over cross-encoder protocol seconds (the paper reports about 3/1000)."""
    cross_part: Mapping[str, object] = cross[cross_mode]
    dual_s = float(dual["total_s"])
    cross_s = float(cross_part["total_s"])
    same_hardware = dual.get("hardware") == cross.get("hardware")
    return {
        "ratio": dual_s / cross_s, "dual_total_s": dual_s, "cross_total_s": cross_s,
        "cross_mode": cross_mode, "same_hardware": same_hardware,
        "status": overall_status([dual, cross_part]),
    }


def efficiency_block(
    *,
    device: torch.device | str,
    precision: str,
    params: Mapping[str, int] | None = None,
    flops: Mapping[str, object] | None = None,
    costs: Mapping[str, Mapping[str, object]] | None = None,
) -> Efficiency:
    """The ``efficiency`` block of ``result.json`` (:class:`harness.record.Efficiency`)."""
    return {
        "flops_convention": FLOPS_CONVENTION, "precision": precision, **hardware_info(device),
        "params": dict(params or {}), "flops": dict(flops or {}),
        "protocols": {name: dict(cost) for name, cost in (costs or {}).items()},
    }
