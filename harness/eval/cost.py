"""The cost side of a model (``task=bench``): parameters, FLOPs and protocol times.

Costs do not depend on the weights, so the model is built with random weights at the
configured scale; FLOPs are counted shape-only (no weights allocated), times are measured on
dummy inputs and extrapolated to the full protocol where the budget runs out (labelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from harness.eval.efficiency import (
    cross_encoder_costs,
    cross_protocol_flops,
    dual_encoder_costs,
    dual_protocol_flops,
    efficiency_block,
    resolve_protocol,
)
from harness.eval.flops import flops_summary
from harness.eval.param_parts import param_parts
from harness.interfaces import is_cross_encoder


def dummy_batch(n_images: int, n_texts: int, image_size: int, text_len: int, vocab_size: int,
                device: torch.device, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Normalised random images and full-length random token ids (the costliest texts)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, image_size, image_size, generator=g)
    # Ids above the special tokens (the harness's WordPiece puts them at 0-4).
    ids = torch.randint(5, vocab_size, (n_texts, text_len), generator=g)
    tokens = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    return images.to(device), tokens


def _has_dual_head(model: nn.Module) -> bool:
    return callable(getattr(model, "encode_image", None)) and callable(
        getattr(model, "encode_text", None))


def _protocol_flops(flops: Mapping[str, Any], n_images: int, n_texts: int, embed_dim: int | None,
                    k_test: int) -> dict[str, int]:
    image, text = int(flops["image_encode_flops"]), int(flops["text_encode_flops"])
    if "pair_score_flops" in flops:
        first_stage = 0
        if "first_stage_image_flops" in flops:  # the model's own dual head ranks for top-k
            first_stage = dual_protocol_flops(
                n_images, n_texts, image_flops=int(flops["first_stage_image_flops"]),
                text_flops=int(flops["first_stage_text_flops"]),
                embed_dim=int(embed_dim or 0))["total_flops"]
        return cross_protocol_flops(n_images, n_texts, image_flops=image, text_flops=text,
                                    pair_flops=int(flops["pair_score_flops"]), k=k_test,
                                    first_stage_flops=first_stage)
    return dual_protocol_flops(n_images, n_texts, image_flops=image, text_flops=text,
                               embed_dim=int(embed_dim or 0))


@dataclass(frozen=True)
class FirstStageModel:
    """Another model whose embeddings pick a cross-encoder's top-k (``task.first_stage``)."""

    name: str
    build: Callable[[], nn.Module]
    image_size: int


def _first_stage_costs(first: FirstStageModel, protocol: str, *, text_len: int,
                       vocab_size: int, device: torch.device, precision: str, budget_s: float,
                       encode_batch: int) -> dict[str, Any]:
    """The dual-encoder protocol cost of a named first stage, on its own image size."""
    torch.manual_seed(0)
    model = first.build().to(device).eval()
    if not _has_dual_head(model):
        raise ValueError(f"task.first_stage={first.name}: the model has no encode_image/"
                         "encode_text, so it cannot pick candidates")
    images, tokens = dummy_batch(encode_batch, encode_batch, first.image_size, text_len,
                                 vocab_size, device)
    cost = dual_encoder_costs(model, images, tokens, protocol=protocol, device=device,
                              budget_s=budget_s, precision=precision)
    flops = flops_summary(first.build, image_size=first.image_size, text_len=text_len)
    _, n_images, n_texts = resolve_protocol(protocol)
    cost["flops"] = _protocol_flops(flops, n_images, n_texts, cost["embed_dim"], 0)
    return {**cost, "model": first.name}


def model_costs(build: Callable[[], nn.Module], *, image_size: int, text_len: int,
                vocab_size: int, protocols: Sequence[str], device: torch.device,
                precision: str, budget_s: float, encode_batch: int, pair_batch: int,
                k_test: int, first_stage: FirstStageModel | None = None) -> dict[str, Any]:
    """The ``efficiency`` block of a bench stage: params, FLOPs, and each protocol's costs;
    a cross-encoder's top-k re-ranking counts ``first_stage``'s protocol (else its own head)."""
    flops = flops_summary(build, image_size=image_size, text_len=text_len)
    torch.manual_seed(0)
    model = build().to(device).eval()
    params = param_parts(model, image_size=image_size, text_len=text_len)
    images, tokens = dummy_batch(encode_batch, encode_batch, image_size, text_len, vocab_size,
                                 device)
    costs: dict[str, Any] = {}
    embed_dim = None
    if first_stage is not None and not is_cross_encoder(model):
        raise ValueError(f"task.first_stage={first_stage.name}: only a cross-encoder re-ranks "
                         "a first stage's candidates")
    for protocol in protocols:
        name, n_images, n_texts = resolve_protocol(protocol)
        first = None
        if first_stage is not None:
            first = _first_stage_costs(first_stage, name, text_len=text_len,
                                       vocab_size=vocab_size, device=device, precision=precision,
                                       budget_s=budget_s, encode_batch=encode_batch)
        elif _has_dual_head(model):
            first = dual_encoder_costs(model, images, tokens, protocol=name, device=device,
                                       budget_s=budget_s, precision=precision)
            embed_dim = first["embed_dim"]
        if is_cross_encoder(model):
            cost = cross_encoder_costs(model, images, tokens, protocol=name, device=device,
                                       budget_s=budget_s, pair_batch_size=pair_batch, k=k_test,
                                       first_stage=first, precision=precision)
            if first is not None:
                cost["first_stage"] = first
        else:
            cost = first
        cost["flops"] = _protocol_flops(flops, n_images, n_texts, embed_dim, k_test)
        if first_stage is not None and first is not None and "topk_rerank_flops" in cost["flops"]:
            cost["flops"]["topk_rerank_flops"] += int(first["flops"]["total_flops"])
        costs[name] = cost
    block = efficiency_block(device=device, precision=precision, params=params, flops=flops,
                             costs=costs)
    block["batch_sizes"] = {"encode": encode_batch, "pairs": pair_batch}
    block["text_len"] = text_len
    return block


def protocol_seconds(block: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per protocol: total seconds of each retrieval mode the model supports, with status."""
    out: dict[str, dict[str, Any]] = {}
    for name, cost in block.get("protocols", {}).items():
        modes: dict[str, Any] = {}
        if cost.get("kind") == "dual_encoder":
            modes["embedding"] = {"seconds": cost["total_s"], "status": cost["status"]}
        for mode in ("full_scoring", "topk_rerank"):
            if mode in cost:
                modes[mode] = {"seconds": cost[mode]["total_s"], "status": cost[mode]["status"]}
        out[name] = modes
    return out
