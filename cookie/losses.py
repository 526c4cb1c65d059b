"""COOKIE's three contrastive losses: image-text, image-image (two views), text-text (two views).

This is the harness's *reading* of the abstracts' "three kinds of contrastive learning"
(see docs/fidelity.md): each term is a symmetric InfoNCE between two paired sets of
embeddings, with its own temperature and weight.

Every function takes queries and keys separately: queries are this process's rows (they
carry the gradient), keys are what the queries are contrasted against. Without a momentum
encoder and on one process the keys are the queries themselves; a distributed loop can pass
globally gathered keys, and the momentum path passes momentum keys plus a queue. Positives
are always given by ids (the dataset image id), so captions or views of one image are never
each other's negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness.models.contrastive import info_nce, positive_mask

TERMS = ("itc", "vv", "tt")
ITC_KINDS = ("infonce", "hinge")
# As in CLIP: a logit scale above 100 (temperature below 0.01) lets the softmax collapse.
MAX_LOGIT_SCALE = math.log(100.0)


def paired_info_nce(a_q: Tensor, b_q: Tensor, a_k: Tensor, b_k: Tensor, ids_q: Tensor,
                    ids_k: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE: ``a_q`` against keys ``b_k``, ``b_q`` against keys ``a_k``, averaged.

    Row i of ``a_q`` and ``b_q`` form a pair (an image and its caption, or two views); key
    j is a positive of query i when ``ids_k[j] == ids_q[i]``.
    """
    pos = positive_mask(ids_q, ids_k)
    return 0.5 * (info_nce(a_q, b_k, scale, pos) + info_nce(b_q, a_k, scale, pos))


def _hardest_violation(q: Tensor, pos_score: Tensor, keys: Tensor, negative: Tensor,
                       margin: float) -> Tensor:
    scores = q @ keys.t()
    hardest = scores.masked_fill(~negative, float("-inf")).amax(1)
    # A query with no negative among the keys (all same id) contributes nothing.
    hardest = torch.where(torch.isfinite(hardest), hardest, pos_score - margin)
    return (margin + hardest - pos_score).clamp_min(0.0)


def paired_hinge(a_q: Tensor, b_q: Tensor, a_k: Tensor, b_k: Tensor, ids_q: Tensor,
                 ids_k: Tensor, margin: float) -> Tensor:
    """VSE++ triplet loss with the hardest negative, both directions, averaged over queries.

    The positive of query i is its own pair (row i of the other side); negatives are keys
    with a different id.
    """
    pos_score = (a_q * b_q).sum(-1)
    negative = ~positive_mask(ids_q, ids_k)
    a_to_b = _hardest_violation(a_q, pos_score, b_k, negative, margin)
    b_to_a = _hardest_violation(b_q, pos_score, a_k, negative, margin)
    return 0.5 * (a_to_b.mean() + b_to_a.mean())


@dataclass(frozen=True)
class Views:
    """Embeddings of one batch: image view 1/2, text view 1/2 (views 2 only when needed)."""

    img: Tensor
    txt: Tensor
    img2: Tensor | None = None
    txt2: Tensor | None = None


def _term_cfg(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    term = dict(cfg.get(name) or {})
    unknown = set(term) - {"enabled", "weight", "temperature", "learnable_temperature", "kind",
                           "margin", "view", "fallback", "mask_prob", "mask_token_id"}
    if unknown:
        raise ValueError(f"model.losses.{name}: unknown keys {sorted(unknown)}")
    return term


class CookieLosses(nn.Module):
    """Weights, temperatures and switches of the three terms; computes the weighted dict."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        unknown = set(cfg) - set(TERMS)
        if unknown:
            raise ValueError(f"model.losses: unknown terms {sorted(unknown)}; valid: {TERMS}")
        self.cfg = {name: _term_cfg(cfg, name) for name in TERMS}
        self.weights = {name: float(c.get("weight", 1.0)) for name, c in self.cfg.items()}
        # Off means not computed and not logged: enabled=false or a zero weight.
        self.active = tuple(name for name in TERMS
                            if self.cfg[name].get("enabled", True) and self.weights[name] > 0)
        if not self.active:
            raise ValueError("model.losses: every term is disabled; nothing to train")
        self.itc_kind = str(self.cfg["itc"].get("kind", "infonce"))
        if self.itc_kind not in ITC_KINDS:
            raise ValueError(f"model.losses.itc.kind={self.itc_kind!r}; valid: {ITC_KINDS}")
        self.margin = float(self.cfg["itc"].get("margin", 0.2))
        # Stored as log(1/temperature), CLIP's parametrisation; frozen ones simply get no grad.
        self.logit_scale = nn.ParameterDict({
            name: nn.Parameter(torch.tensor(math.log(1.0 / float(c.get("temperature", 0.05)))),
                               requires_grad=bool(c.get("learnable_temperature", True)))
            for name, c in self.cfg.items()})

    def scale(self, name: str) -> Tensor:
        """Inverse temperature of term ``name``."""
        return self.logit_scale[name].exp()

    def clamp_(self) -> None:
        """Keep every learnable temperature in [0.01, 1]."""
        with torch.no_grad():
            for param in self.logit_scale.values():
                param.clamp_(0.0, MAX_LOGIT_SCALE)

    def forward(self, q: Views, k: Views, ids_q: Tensor, ids_k: Tensor) -> dict[str, Tensor]:
        """Weighted terms ``{itc, vv, tt}`` (active ones only) from query and key views."""
        out: dict[str, Tensor] = {}
        if "itc" in self.active:
            if self.itc_kind == "hinge":
                raw = paired_hinge(q.img, q.txt, k.img, k.txt, ids_q, ids_k, self.margin)
            else:
                raw = paired_info_nce(q.img, q.txt, k.img, k.txt, ids_q, ids_k,
                                      self.scale("itc"))
            out["itc"] = self.weights["itc"] * raw
        for name, a_q, b_q, a_k, b_k in (("vv", q.img, q.img2, k.img, k.img2),
                                         ("tt", q.txt, q.txt2, k.txt, k.txt2)):
            if name not in self.active:
                continue
            if b_q is None or b_k is None:
                raise ValueError(f"loss term {name!r} is active but its second view is missing")
            out[name] = self.weights[name] * paired_info_nce(a_q, b_q, a_k, b_k, ids_q, ids_k,
                                                             self.scale(name))
        return out
