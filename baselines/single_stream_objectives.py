"""Training objectives of the single-stream cross-encoder: ITM negatives and MLM masking.

Pure functions on index tensors, so the two properties that matter (a negative is never the
positive nor another caption of the same image; only real words are ever masked) are tested
without building a model.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

#: ``labels`` value that ``cross_entropy`` ignores: positions that were not masked.
IGNORE_INDEX = -100


def sample_negatives(
    same: Tensor, logits: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One negative column per row, never where ``same`` is True; returns ``(index, valid)``.

    ``same[r, c]`` marks pairs from the same image (the positive and the image's other
    captions). With ``logits`` the draw follows ``softmax(logits)`` over the allowed columns
    (ALBEF's hard negatives); without, it is uniform over them (ViLT's random negatives). Rows
    with no allowed column (a batch made of one image's captions) get ``valid = False`` and an
    arbitrary index that callers must drop.
    """
    allowed = ~same.bool()
    valid = allowed.any(dim=1)
    scores = torch.zeros(same.shape, device=same.device) if logits is None else logits.float()
    # -inf, not a zeroed weight: an excluded column then has probability exactly 0 even when
    # every allowed softmax weight underflows, which made ALBEF add an epsilon instead.
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = torch.where(valid[:, None], scores, torch.zeros_like(scores))
    probs = torch.softmax(scores, dim=1)
    index = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return index, valid


def maskable(input_ids: Tensor, attention_mask: Tensor, special_ids: Iterable[int]) -> Tensor:
    """Boolean ``[M, L]``: real text tokens, i.e. inside the attention mask and not special."""
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    special_ids: Iterable[int],
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking: ``(masked_ids, labels)``, labels = original id where chosen, else -100.

    Each real token is chosen with ``prob``; a chosen token becomes [MASK] 80% of the time, a
    random token 10% and stays itself 10%. [CLS], [SEP], [PAD] (every id in ``special_ids``)
    and positions outside the attention mask are never chosen.
    """
    specials = set(special_ids)
    candidates = maskable(input_ids, attention_mask, specials)
    dev = input_ids.device
    chosen = candidates & (torch.rand(input_ids.shape, generator=generator, device=dev) < prob)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    roll = torch.rand(input_ids.shape, generator=generator, device=dev)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=dev)
    # A random draw that lands on a special token would feed [CLS]/[PAD] into the middle of a
    # sentence; keeping the original token instead folds it into the 10% "unchanged" case.
    special = torch.tensor(sorted(specials), dtype=input_ids.dtype, device=dev)
    to_random &= ~torch.isin(random_ids, special)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels
