"""Every registered model at ``scale=paper``: built at full size, one training step, one eval.

Random weights on the CPU: a paper-size configuration error (a mismatched width, a view the
loss needs but the batch lacks, a size the config misstates) fails here instead of on the
cluster. One model at a time, two threads.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch

from harness.config import compose
from harness.model_check import (
    BERT_VOCAB,
    build_model,
    claimed_parameters,
    count_parameters,
    eval_metrics,
    eval_scores,
    make_stepper,
    random_tokens,
    random_train_batch,
    train_step,
)
from harness.registry import MODELS

PARAM_TOLERANCE = 0.01  # relative: the claim is rounded to 0.1 M


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
    gc.collect()


def test_every_paper_size_claims_a_parameter_count() -> None:
    for name in MODELS.names():
        cfg = compose([f"model={name}", "scale=paper"])
        assert claimed_parameters(cfg), f"configs/size/{name}_paper.yaml: no model.params_m"
        assert claimed_parameters(compose([f"model={name}", "scale=smoke"])) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_paper_size_model_trains_one_step_and_evaluates(name: str) -> None:
    cfg = compose([f"model={name}", "scale=paper", "task=finetune", "task.precision=fp32"])
    torch.manual_seed(0)
    model = build_model(cfg, BERT_VOCAB)

    claimed, counted = claimed_parameters(cfg), count_parameters(model)
    assert claimed is not None
    assert abs(counted - claimed) <= PARAM_TOLERANCE * claimed, (
        f"{name} at paper size has {counted / 1e6:.1f} M parameters; "
        f"configs/size/{name}_paper.yaml claims {claimed / 1e6:.1f} M")

    # One optimizer step through the harness's own step machinery, batch of 2.
    device = torch.device("cpu")
    stepper = make_stepper(model, cfg, device)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = train_step(stepper, random_train_batch(cfg, 2))
    assert result.losses, "no loss terms"
    for term, value in result.losses.items():
        assert value.dim() == 0 and math.isfinite(float(value)), f"{name}: loss {term} = {value}"
    assert result.grad_norm is not None and math.isfinite(float(result.grad_norm))
    moved = sum(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    assert moved > 0.5 * len(before), f"{name}: only {moved}/{len(before)} tensors updated"
    del before, stepper

    # One eval: 4 images, 8 captions (2 each), ranked the harness's way.
    g = torch.Generator().manual_seed(1)
    size, text_len = int(cfg.model.image_size), int(cfg.data.max_text_len)
    images = torch.randn(4, 3, size, size, generator=g)
    tokens = random_tokens(8, text_len, BERT_VOCAB, g)
    out = eval_scores(model, images, tokens, device, batch_pairs=16)
    assert out["sims"].shape == (4, 8) and torch.isfinite(out["sims"]).all()
    if "image_emb" in out:
        dim = int(cfg.model.embed_dim)
        assert out["image_emb"].shape == (4, dim) and out["text_emb"].shape == (8, dim)
        norms = torch.cat([out["image_emb"], out["text_emb"]]).float().norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    else:
        assert out["image_tokens"].shape[0] == 4 and out["text_tokens"].shape[:2] == (8, text_len)
    metrics = eval_metrics(out, torch.arange(8) // 2)
    for key in ("i2t_R@1", "t2i_R@1", "i2t_R@10", "t2i_R@10"):
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics)
    assert metrics["i2t_R@10"] == metrics["t2i_R@10"] == 100.0  # 4 images, 8 texts: all in top 10
