"""AdamW with decay only where it belongs, and a warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

# Temperatures are scalars that set the softmax's sharpness; decaying them towards zero
# would silently heat the loss up over training.
NO_DECAY_NAMES = ("logit_scale", "temperature")
# Learned tokens and position tables are added to activations, not multiplied: decaying them
# only pulls them towards zero (timm's ``no_weight_decay()`` convention, kept when a model
# moves a ViT's tokens into a module of its own, as the single-stream patch embedding does).
NO_DECAY_LEAVES = ("pos_embed", "cls_token", "dist_token", "reg_token")


def _declared_no_decay(model: nn.Module) -> set[str]:
    """Full names of parameters a submodule lists in its timm-style ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names.update(f"{prefix}.{leaf}" if prefix else leaf for leaf in declared())
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices decay; biases, norms, tokens, positions and temperatures do not."""
    decay, no_decay = [], []
    declared = _declared_no_decay(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if (param.ndim < 2 or name in declared or name.rsplit(".", 1)[-1] in NO_DECAY_LEAVES
                or any(key in name for key in NO_DECAY_NAMES)):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, float(cfg["weight_decay"])), lr=float(cfg["lr"]),
                             betas=tuple(cfg.get("betas", (0.9, 0.98))), eps=1e-6)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any]
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warmup + cosine schedule over ``cfg['steps']``."""
    warmup, total = int(cfg["warmup_steps"]), int(cfg["steps"])
    min_ratio = float(cfg.get("min_lr_ratio", 0.0))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))
