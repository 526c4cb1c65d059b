"""CLIP-style dual encoder: two towers, linear projections, learnable temperature, InfoNCE."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.interfaces import Batch, TextTokens
from harness.models.contrastive import symmetric_info_nce
from harness.models.towers import ImageTower, TextTower

# CLIP clamps the learnable logit scale at 100 so the softmax cannot collapse.
MAX_LOGIT_SCALE = math.log(100.0)


class ClipDualEncoder(nn.Module):
    """Image and text towers mapped into one L2-normalised joint space."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        self.image_tower = ImageTower(cfg["image_tower"])
        self.text_tower = TextTower(cfg["text_tower"], vocab_size)
        dim = int(cfg["embed_dim"])
        self.image_proj = nn.Linear(self.image_tower.width, dim, bias=False)
        self.text_proj = nn.Linear(self.text_tower.width, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / float(cfg["init_temperature"]))))

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[N, D]``."""
        return F.normalize(self.image_proj(self.image_tower(images)), dim=-1)

    def encode_text(self, tokens: TextTokens) -> Tensor:
        """L2-normalised text embeddings ``[M, D]``."""
        return F.normalize(self.text_proj(self.text_tower(tokens)), dim=-1)

    def clamp_logit_scale(self) -> None:
        """Keep the temperature in CLIP's range; the loop calls this after each step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def train_features(self, batch: Batch) -> dict[str, Tensor]:
        """Per-row features the loss needs; the training layer may cache them across
        micro-batches so accumulation keeps the whole batch as negatives."""
        return {"img": self.encode_image(batch["images"]), "txt": self.encode_text(batch),
                "ids": batch["image_ids"]}

    def losses_from_features(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Symmetric image-text InfoNCE; captions of one image are not each other's negatives."""
        ids = features["ids"]
        return {"itc": symmetric_info_nce(features["img"], features["txt"],
                                          self.logit_scale.exp(), ids, ids)}

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Training loss terms of one batch."""
        return self.losses_from_features(self.train_features(batch))


def build_clip(cfg: Mapping[str, Any], *, vocab_size: int,
               special_ids: Mapping[str, int] | None = None) -> ClipDualEncoder:
    """Registry factory for ``model=clip`` (``special_ids`` is accepted and unused)."""
    return ClipDualEncoder(cfg, vocab_size)
