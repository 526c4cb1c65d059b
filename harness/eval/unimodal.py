"""Unimodal retrieval from a dual encoder's embeddings: caption->caption and image->image.

COOKIE claims that cross-modal knowledge sharing improves unimodal representations ("text
matching", "image retrieval"). These metrics measure both on an evaluation split, for any
DualEncoder, with the query itself always removed from the gallery:

* ``t2t``: every caption queries all captions; positives are the *other* captions of its
  image. Captions of an image with a single caption have no positive: they are skipped and
  counted (``t2t_skipped``).
* ``i2i``: every image queries all images; positives are the other images with the same
  ``scene_id``. Skipped entirely without scene ids; images without another image of their
  scene (or with a negative, i.e. unknown, scene id) are skipped and counted (``i2i_skipped``).

Keys: ``{t2t,i2i}_R@K`` (percent), ``_medr``, ``_meanr`` (1-based ranks, over the queries
kept), ``_queries`` and ``_skipped``. R@K, medr and meanr are absent when no query is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from harness.eval.retrieval import DEFAULT_KS, multi_positive_ranks, summarize_ranks


def _usable_groups(groups: Tensor) -> tuple[Tensor, Tensor]:
    """Groups with unknown (negative) ids made unique, and which items have a positive."""
    groups = torch.as_tensor(groups).to("cpu", torch.long).clone()
    unknown = groups < 0
    # Each unknown item becomes its own group, so unknowns are never each other's positives.
    groups[unknown] = -1 - torch.arange(int(unknown.sum()))
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return groups, counts[inverse] > 1


def self_excluded_metrics(emb: Tensor, groups: Tensor, prefix: str,
                          ks: Sequence[int] = DEFAULT_KS, chunk_size: int | None = None,
                          device: torch.device | str | None = None,
                          ranks_out: dict[str, Tensor] | None = None) -> dict[str, float]:
    """R@K / medr / meanr of each item querying the others, positives sharing its group;
    ``ranks_out[prefix without "_"]`` receives every item's rank (0 where skipped)."""
    groups, kept = _usable_groups(groups)
    n_kept = int(kept.sum())
    out: dict[str, float] = {f"{prefix}queries": float(n_kept),
                             f"{prefix}skipped": float(groups.numel() - n_kept)}
    if n_kept == 0:
        return out
    # multi_positive_ranks needs query i to be gallery item i to exclude it, so every item is
    # a query; a skipped one borrows a group that has positives and its rank is dropped.
    query_groups = torch.where(kept, groups, groups[kept][0])
    # chunk_size None: ranking.py's default for the device.
    chunking = {} if chunk_size is None else {"chunk_size": chunk_size}
    ranks = multi_positive_ranks(emb, emb, query_groups, groups, exclude_self=True,
                                 device=device, **chunking)
    out.update(summarize_ranks(ranks[kept], ks, prefix))
    if ranks_out is not None:
        ranks_out[prefix.rstrip("_")] = torch.where(kept, ranks, 0)
    return out


def unimodal_metrics(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor,
                     scene_ids: Tensor | Sequence[int] | None,
                     ks: Sequence[int] = DEFAULT_KS, chunk_size: int | None = None,
                     device: torch.device | str | None = None,
                     ranks_out: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Caption->caption (same image) and image->image (same scene) retrieval metrics;
    per-query ranks go to ``ranks_out`` (see :func:`self_excluded_metrics`) when given."""
    txt2img = torch.as_tensor(txt2img)
    if txt2img.numel() != txt_emb.shape[0]:
        raise ValueError(f"txt2img has {txt2img.numel()} entries but there are "
                         f"{txt_emb.shape[0]} texts")
    out = self_excluded_metrics(txt_emb, txt2img, "t2t_", ks, chunk_size, device, ranks_out)
    if scene_ids is not None:
        scene_ids = torch.as_tensor(scene_ids)
        if scene_ids.numel() != img_emb.shape[0]:
            raise ValueError(f"scene_ids has {scene_ids.numel()} entries but there are "
                             f"{img_emb.shape[0]} images")
        out.update(self_excluded_metrics(img_emb, scene_ids, "i2i_", ks, chunk_size, device,
                                         ranks_out))
    return out
