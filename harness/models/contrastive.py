"""InfoNCE with multi-positive targets, shared by every contrastive model and loss term.

Distributed form (open_clip's ``--local-loss --gather-with-grad``): each rank's *queries* are
its own rows and its *keys* are every rank's rows, gathered once per step by
:func:`gather_features` with an all-gather that carries gradients back to the rank that
produced them. Positives come from image ids, which are dataset-global, so two captions of
one image on different ranks are still positives. On one process gathering is the identity
and every function here computes exactly what it did before.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
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


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_with_grad(flat: Tensor) -> Tensor:
    """``[W * n, ...]``: every rank's rows in rank order; gradients flow back to their owners."""
    from torch.distributed import _functional_collectives as fc

    # Newer torch deprecates torch.distributed.nn.functional.all_gather in favour of the
    # functional collectives; use whichever this torch has (same backward: a sum-scatter).
    for name in ("all_gather_single_autograd", "all_gather_tensor_autograd"):
        gather = getattr(fc, name, None)
        if gather is not None:
            out = gather(flat.contiguous(), 0, dist.group.WORLD)
            return fc.wait_tensor(out) if hasattr(fc, "wait_tensor") else out
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(flat.contiguous()))


def _all_gather_plain(flat: Tensor) -> Tensor:
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat.contiguous())
    return torch.cat(parts)


def gather_features(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor with every rank's rows concatenated in rank order (identity on one process).

    Call it once per step on everything the loss terms contrast against (embeddings and
    ids) and pass the results to all terms: tensors of one dtype and row count travel in a
    single collective. Every rank must pass the same number of rows (the loop drops ragged
    last batches). Tensors that require grad keep it through the gather.
    """
    if _world() == 1:
        return tuple(tensors)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.dtype, t.device, t.shape[0], t.requires_grad)].append(i)
    out: list[Tensor | None] = [None] * len(tensors)
    for (_, _, rows, grad), members in groups.items():
        flat = torch.cat([tensors[i].reshape(rows, -1) for i in members], dim=1)
        gathered = (_all_gather_with_grad if grad else _all_gather_plain)(flat)
        widths = [tensors[i][:1].numel() for i in members]
        for i, piece in zip(members, gathered.split(widths, dim=1)):
            out[i] = piece.reshape(-1, *tensors[i].shape[1:])
    return tuple(t for t in out if t is not None)


def symmetric_info_nce(a: Tensor, b: Tensor, scale: Tensor | float, a_ids: Tensor,
                       b_ids: Tensor) -> Tensor:
    """Average of a->b and b->a InfoNCE (CLIP's loss), positives given by shared ids.

    Under DDP the local rows are contrasted with every rank's rows (local loss with global
    negatives); the mean over ranks of this value equals the loss of the concatenated batch.
    """
    all_a, all_b, all_a_ids, all_b_ids = gather_features(a, b, a_ids, b_ids)
    return 0.5 * (info_nce(a, all_b, scale, positive_mask(a_ids, all_b_ids))
                  + info_nce(b, all_a, scale, positive_mask(b_ids, all_a_ids)))
