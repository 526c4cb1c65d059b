"""COOKIE's building blocks: the weight-sharing transformer and the token poolers."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

POOLINGS = ("cls", "mean", "gpo")


class WeightSharingTransformer(nn.Module):
    """One stack of transformer encoder layers, run separately on each modality's tokens.

    The same weights see the visual sequence in one call and the textual sequence in another;
    there is no cross-attention, so every item is still encoded on its own (embedding-based
    retrieval). An optional learned modality-type vector, added to every token, lets the shared
    layers tell the two inputs apart.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        width, layers = int(cfg["width"]), int(cfg["layers"])
        if layers <= 0:
            raise ValueError("WeightSharingTransformer needs wst.layers >= 1; layers=0 means "
                             "the model builds no shared module at all")
        norm_first = bool(cfg.get("norm_first", False))
        layer = nn.TransformerEncoderLayer(
            width, int(cfg["heads"]), dim_feedforward=int(cfg.get("ffn", 4 * width)),
            dropout=float(cfg.get("dropout", 0.1)), activation="gelu", batch_first=True,
            norm_first=norm_first)
        # Pre-LN stacks leave their output un-normalised; post-LN (BERT's choice) does not.
        final_norm = nn.LayerNorm(width) if norm_first else None
        self.layers = nn.TransformerEncoder(layer, layers, norm=final_norm,
                                            enable_nested_tensor=False)
        self.modality_embed = (nn.Parameter(torch.zeros(2, width))
                               if cfg.get("modality_embed", True) else None)
        if self.modality_embed is not None:
            nn.init.normal_(self.modality_embed, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor, modality: int) -> Tensor:
        """Tokens ``[N, T, D]`` (``mask`` True = real) of modality 0 (image) or 1 (text)."""
        if self.modality_embed is not None:
            tokens = tokens + self.modality_embed[modality]
        return self.layers(tokens, src_key_padding_mask=~mask)


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real tokens of each row."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _position_code(positions: Tensor, lengths: Tensor, dim: int) -> Tensor:
    """Sinusoidal code of each rank position, plus its position relative to the row length."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
                      * (-math.log(1000.0) / dim))
    angles = positions.float()[..., None] * freqs
    relative = positions.float() / lengths.float().clamp_min(1.0)[:, None]
    return torch.cat([angles.sin(), angles.cos(), relative[..., None]], dim=-1)


class GeneralizedPooling(nn.Module):
    """A learned generalised pooling: a weighted sum over each dimension's sorted values.

    Every feature dimension is sorted across the tokens (largest first); a small network
    maps each rank position (and the sequence length) to a weight, softmaxed over the real
    positions. Weight on rank 0 alone is max pooling, uniform weights are mean pooling, and
    anything between is learnable — the idea of VSE-infinity's GPO, in a simpler form
    (an MLP on a position code instead of a recurrent weight generator).
    """

    def __init__(self, code_dim: int = 16, hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.code_dim = code_dim
        self.temperature = temperature
        self.score = nn.Sequential(nn.Linear(code_dim + 1, hidden), nn.GELU(),
                                   nn.Linear(hidden, 1))

    def weights(self, mask: Tensor) -> Tensor:
        """``[N, T]`` pooling weights per rank position; zero past each row's length."""
        n, t = mask.shape
        lengths = mask.sum(1)
        positions = torch.arange(t, device=mask.device).expand(n, t)
        logits = self.score(_position_code(positions, lengths, self.code_dim)).squeeze(-1)
        valid = positions < lengths[:, None]
        logits = logits.masked_fill(~valid, float("-inf"))
        return torch.softmax(logits / self.temperature, dim=1)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Pooled ``[N, D]`` from tokens ``[N, T, D]`` with ``mask`` True on real tokens."""
        filled = tokens.masked_fill(~mask[..., None], float("-inf"))
        ranked = filled.sort(dim=1, descending=True).values
        # Padding sorts last; zero it so -inf never meets a zero weight (0 * -inf = nan).
        lengths = mask.sum(1)
        real = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        ranked = ranked.masked_fill(~real[..., None], 0.0)
        return (ranked * self.weights(mask).unsqueeze(-1).to(ranked.dtype)).sum(1)


class Pooler(nn.Module):
    """Token sequence -> one vector: ``cls`` (token 0), ``mean`` or ``gpo``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"unknown pooling {kind!r}; valid: {', '.join(POOLINGS)}")
        self.kind = kind
        self.gpo = GeneralizedPooling() if kind == "gpo" else None

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Pooled ``[N, D]``."""
        if self.kind == "cls":
            return tokens[:, 0]
        if self.kind == "mean":
            return masked_mean(tokens, mask)
        assert self.gpo is not None
        return self.gpo(tokens, mask)
