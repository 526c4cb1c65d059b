"""A registered model, built from a composed config, put through one step and one small eval.

Random weights and random inputs: this checks that a size's configuration builds, trains and
evaluates (shapes, finite losses, parameter count), not what it learns. Used by
tests/test_paper_size.py on CPU and by bench/gpu_check.py on a GPU.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness.config import to_plain
from harness.eval.pair_scoring import score_pair_list
from harness.eval.retrieval import retrieval_metrics, retrieval_metrics_from_embeddings
from harness.interfaces import is_cross_encoder
from harness.registry import MODELS
from harness.train.optim import build_optimizer, build_scheduler
from harness.train.step import Stepper, StepResult, resolve_precision

#: bert-base-uncased's vocabulary: the paper-size text towers' word-embedding size.
BERT_VOCAB = 30522
FIRST_WORD_ID = 5  # ids 0-4 are the special tokens in the harness's WordPiece layout


def build_model(cfg: Any, vocab_size: int = BERT_VOCAB) -> nn.Module:
    """The model ``cfg.model`` describes, through the registry."""
    return MODELS.get(str(cfg.model.name))(to_plain(cfg.model), vocab_size=vocab_size)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def claimed_parameters(cfg: Any) -> int | None:
    """``model.params_m`` (millions) as a count, or None when the size claims none."""
    claim = cfg.model.get("params_m")
    return None if claim is None else round(float(claim) * 1e6)


def random_tokens(n: int, text_len: int, vocab_size: int, generator: torch.Generator
                  ) -> dict[str, Tensor]:
    """Full-length random word ids (no padding: the costliest texts)."""
    ids = torch.randint(FIRST_WORD_ID, vocab_size, (n, text_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def random_train_batch(cfg: Any, n: int, vocab_size: int = BERT_VOCAB, seed: int = 0
                       ) -> dict[str, Tensor]:
    """A training batch of ``n`` random pairs with the extra views the model's config asks for."""
    g = torch.Generator().manual_seed(seed)
    size, text_len = int(cfg.model.image_size), int(cfg.data.max_text_len)
    tokens = random_tokens(n, text_len, vocab_size, g)
    batch = {"images": torch.randn(n, 3, size, size, generator=g), **tokens,
             "image_ids": torch.arange(n)}
    inputs: Mapping[str, Any] = cfg.model.get("train_inputs") or {}
    if int(inputs.get("image_views", 1)) > 1:
        batch["images2"] = torch.randn(n, 3, size, size, generator=g)
    if inputs.get("second_caption"):
        second = random_tokens(n, text_len, vocab_size, g)
        batch["input_ids2"], batch["attention_mask2"] = (second["input_ids"],
                                                         second["attention_mask"])
    return batch


def make_stepper(model: nn.Module, cfg: Any, device: torch.device,
                 precision: str | None = None) -> Stepper:
    """The harness's own optimizer, schedule and step for ``cfg.task`` (precision overridable)."""
    task = to_plain(cfg.task)
    optimizer = build_optimizer(model, task)
    return Stepper(model, optimizer, build_scheduler(optimizer, task), task,
                   resolve_precision(precision or task.get("precision"), device), device)


def train_step(stepper: Stepper, batch: Mapping[str, Tensor], step: int = 1) -> StepResult:
    """One optimizer step on ``batch`` (moved to the stepper's device)."""
    on_device = {k: v.to(stepper.device, non_blocking=True) for k, v in batch.items()}
    stepper.model.train()
    return stepper.step(on_device, step, lambda: False)


@torch.inference_mode()
def eval_scores(model: nn.Module, images: Tensor, tokens: Mapping[str, Tensor],
                device: torch.device, batch_pairs: int = 256) -> dict[str, Tensor]:
    """Image-by-text scores ``[N, M]`` and what produced them (embeddings or token features)."""
    model.eval()
    images = images.to(device)
    tokens = {k: v.to(device) for k, v in tokens.items()}
    if is_cross_encoder(model):
        img, txt = model.image_features(images), model.text_features(tokens)
        n, m = len(img), len(txt)
        img_idx = torch.arange(n).repeat_interleave(m)
        txt_idx = torch.arange(m).repeat(n)
        scores = score_pair_list(model, img, txt, img_idx, txt_idx, batch_pairs=batch_pairs,
                                 device=device)
        return {"sims": scores.view(n, m), "image_tokens": img.tokens, "text_tokens": txt.tokens}
    img_emb, txt_emb = model.encode_image(images), model.encode_text(tokens)
    return {"sims": img_emb.float() @ txt_emb.float().T, "image_emb": img_emb, "text_emb": txt_emb}


def eval_metrics(out: Mapping[str, Tensor], txt2img: Tensor) -> dict[str, float]:
    """Recall@K in both directions from :func:`eval_scores`'s output, the harness's way."""
    if "image_emb" in out:
        return retrieval_metrics_from_embeddings(out["image_emb"].float(),
                                                 out["text_emb"].float(), txt2img)
    return retrieval_metrics(out["sims"], txt2img)
