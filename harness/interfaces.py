"""The two model contracts the shared layer understands.

Models never reach the evaluation or training layers except through these protocols
(and the registry), so a new model family only has to implement one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

from torch import Tensor

#: A tokenised text batch: ``input_ids`` and ``attention_mask``, both ``LongTensor[M, L]``.
TextTokens = Mapping[str, Tensor]

#: A training batch. Always present: ``images [B,3,H,W]``, ``input_ids [B,L]``,
#: ``attention_mask [B,L]``, ``image_ids [B]`` (dataset image id, so captions of the same
#: image can be treated as positives). Models that need more (a second augmented view,
#: a second caption) document the extra keys they read.
Batch = Mapping[str, Tensor]


@dataclass(frozen=True)
class TokenFeatures:
    """A cacheable token sequence: ``tokens [N, T, D]`` with boolean ``mask [N, T]`` (True = real)."""

    tokens: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, index: Tensor) -> TokenFeatures:
        """Rows ``index`` of both tensors (index may repeat: one row per scored pair)."""
        return TokenFeatures(self.tokens[index], self.mask[index])

    def to(self, device: object) -> TokenFeatures:
        """Both tensors moved to ``device``."""
        return TokenFeatures(self.tokens.to(device), self.mask.to(device))


@runtime_checkable
class DualEncoder(Protocol):
    """Embedding-based retrieval: each item is encoded once, similarity is a dot product."""

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[N, D]``."""
        ...

    def encode_text(self, tokens: TextTokens) -> Tensor:
        """L2-normalised text embeddings ``[M, D]``."""
        ...

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named, already-weighted training loss terms; the loop sums and logs them."""
        ...


@runtime_checkable
class CrossEncoder(Protocol):
    """Pair-scoring retrieval: unimodal features are cached, every scored pair costs a forward."""

    def image_features(self, images: Tensor) -> TokenFeatures:
        """Cacheable image token features."""
        ...

    def text_features(self, tokens: TextTokens) -> TokenFeatures:
        """Cacheable text token features."""
        ...

    def score_pairs(self, image_features: TokenFeatures, text_features: TokenFeatures) -> Tensor:
        """Matching score ``[P]`` for aligned pairs (row p of each input forms pair p)."""
        ...

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named, already-weighted training loss terms; the loop sums and logs them."""
        ...


def is_cross_encoder(model: object) -> bool:
    """Scores pairs (a :class:`CrossEncoder`), as opposed to embedding each item."""
    return isinstance(model, CrossEncoder) and callable(getattr(model, "score_pairs", None))
