"""InfoNCE with multi-positive targets, shared by every contrastive model and loss term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def positive_mask(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """``[R, C]`` boolean: row and column come from the same image (or the same item)."""
    return row_ids[:, None] == col_ids[None, :]


def soft_targets(pos: Tensor) -> Tensor:
    """Targets spreading each row's probability evenly over its positives.

    With 5 captions per image, two captions of one image in a batch are not negatives of
    each other: treating them as such pushes apart exactly what should be close.
    """
    pos = pos.to(torch.float32)
    return pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)


def info_nce(queries: Tensor, keys: Tensor, scale: Tensor | float, pos: Tensor) -> Tensor:
    """Mean cross-entropy of ``scale * q @ k.T`` against soft multi-positive targets."""
    logits = scale * queries @ keys.t()
    return -(soft_targets(pos) * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def symmetric_info_nce(a: Tensor, b: Tensor, scale: Tensor | float, a_ids: Tensor,
                       b_ids: Tensor) -> Tensor:
    """Average of a->b and b->a InfoNCE (CLIP's loss), positives given by shared ids."""
    pos = positive_mask(a_ids, b_ids)
    return 0.5 * (info_nce(a, b, scale, pos) + info_nce(b, a, scale, pos.t()))
