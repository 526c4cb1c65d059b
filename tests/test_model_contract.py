"""Every registered model keeps the contract the shared layer relies on, at smoke size.

A new model is a Python file and a config; this test is what tells its author that the
harness can train it (finite ``losses()``), evaluate it (one of the two protocols), resume
it (state dict round trip) and cost it (FLOPs on shape-only tensors) before any run.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from harness.config import compose
from harness.eval.flops import flops_summary
from harness.interfaces import CrossEncoder, DualEncoder, is_cross_encoder
from harness.model_check import build_model, random_tokens, random_train_batch
from harness.registry import MODELS

BATCH = 4


@pytest.fixture(scope="module", params=MODELS.names())
def setup(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """(model name, its composed smoke config): a registered model must have a config."""
    name = request.param
    cfg = compose([f"model={name}", "scale=smoke", "data=synthetic", "task=finetune"])
    assert cfg.model.name == name, f"configs/model/{name}.yaml: name is {cfg.model.name!r}"
    return name, cfg


def _build(cfg: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg, vocab_size=int(cfg.data.vocab_size))


def _eval_inputs(cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    size = int(cfg.model.image_size)
    images = torch.randn(2, 3, size, size, generator=g)
    return images, random_tokens(2, int(cfg.data.max_text_len), int(cfg.data.vocab_size), g)


@torch.no_grad()
def _outputs(model: nn.Module, cfg: Any) -> list[Tensor]:
    """What evaluation reads from the model: embeddings, or pair scores of a cross-encoder."""
    model.eval()
    images, tokens = _eval_inputs(cfg)
    if is_cross_encoder(model):
        return [model.score_pairs(model.image_features(images), model.text_features(tokens))]
    return [model.encode_image(images), model.encode_text(tokens)]


def test_implements_one_protocol(setup: tuple[str, Any]) -> None:
    name, cfg = setup
    model = _build(cfg, 0)
    if is_cross_encoder(model):
        assert isinstance(model, CrossEncoder)
    else:
        assert isinstance(model, DualEncoder), f"{name}: neither DualEncoder nor CrossEncoder"
    for out in _outputs(model, cfg):
        assert out.shape[0] == 2 and torch.isfinite(out).all(), name


def test_losses_are_finite_and_train_something(setup: tuple[str, Any]) -> None:
    name, cfg = setup
    model = _build(cfg, 0).train()
    batch = random_train_batch(cfg, BATCH, vocab_size=int(cfg.data.vocab_size))
    losses = model.losses(batch)
    assert losses, f"{name}: losses() returned no terms"
    for term, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), f"{name}: loss {term} = {value}"
    total = sum(losses.values())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, f"{name}: no parameter receives a gradient from losses()"
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite gradient"


def test_state_dict_round_trip_restores_outputs(setup: tuple[str, Any]) -> None:
    # Through bytes with weights_only, as a checkpoint is written and read back.
    name, cfg = setup
    source, target = _build(cfg, 0), _build(cfg, 1)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    before, after = _outputs(source, cfg), _outputs(target, cfg)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}: outputs differ")


def test_flops_are_counted(setup: tuple[str, Any]) -> None:
    name, cfg = setup
    summary = flops_summary(lambda: _build(cfg, 0), image_size=int(cfg.model.image_size),
                            text_len=int(cfg.data.max_text_len))
    counts = {k: v for k, v in summary.items() if k.endswith("_flops")}
    assert all(isinstance(v, int) and v >= 0 for v in counts.values()), counts
    if is_cross_encoder(_build(cfg, 0)):
        # Its cached text features may be a bare embedding lookup (0 FLOPs); the pair costs.
        assert counts["pair_score_flops"] > 0, f"{name}: {counts}"
    else:
        assert counts["image_encode_flops"] > 0 and counts["text_encode_flops"] > 0, counts
