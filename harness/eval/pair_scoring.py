"""Cross-encoder pair scoring: cached unimodal features, batched pair forwards, a pair budget.

Shared by :mod:`harness.eval.rerank` (full scoring and top-k re-ranking) and the re-ranking
benchmark. Features are computed once per gallery; each scored pair is one joint forward.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from harness.interfaces import CrossEncoder, TokenFeatures

ImageSource = Tensor | Iterable[Any]


class PairBudgetError(RuntimeError):
    """Scoring would need more pair forwards than ``max_pairs``; the message estimates the time."""

    def __init__(self, message: str, *, pairs: int, max_pairs: int, pairs_per_s: float) -> None:
        super().__init__(message)
        self.pairs, self.max_pairs, self.pairs_per_s = pairs, max_pairs, pairs_per_s


def _autocast(device: torch.device) -> Any:
    # bf16 on GPU (as ALBEF/BLIP evaluate); CPU stays fp32 so smoke numbers are exact.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_batch_pairs(device: torch.device) -> int:
    """Pairs per forward: 1024 on GPU (fills it); 128 on CPU, where bigger batches spill the
    caches and one query's candidates already keep the GEMMs busy (bench/bench_rerank.py)."""
    return 1024 if device.type == "cuda" else 128


def format_seconds(seconds: float) -> str:
    """Human duration: ``"42 s"``, ``"17 min"``, ``"3.2 h"``, ``"5.1 days"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ------------------------------------------------------------------------------ features


def image_batches(images: ImageSource, batch_size: int) -> Iterator[Tensor]:
    """Image tensors from a ``[N,3,H,W]`` tensor or a loader (tensors, tuples or dicts)."""
    if isinstance(images, Tensor):
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    for item in images:
        if isinstance(item, Mapping):
            item = item["images"]
        elif isinstance(item, (tuple, list)):
            item = item[0]
        yield item


def count_images(images: ImageSource) -> int | None:
    if isinstance(images, Tensor):
        return int(images.shape[0])
    dataset = getattr(images, "dataset", None)
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


def text_tokens(texts: Mapping[str, Tensor] | Sequence[str],
                tokenize: Callable[[Sequence[str]], Mapping[str, Tensor]] | None
                ) -> dict[str, Tensor]:
    """All texts as one padded ``{input_ids, attention_mask}``, tokenising captions if needed."""
    if isinstance(texts, Mapping):
        return {"input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"]}
    if tokenize is None:
        raise ValueError("texts are strings: pass tokenize=<the model's tokenizer>")
    # One call, so every text is padded to the same length and features concatenate.
    out = tokenize(list(texts))
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def _cat(parts: list[TokenFeatures]) -> TokenFeatures:
    return TokenFeatures(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]))


@torch.inference_mode()
def encode_gallery(
    model: CrossEncoder, images: ImageSource, tokens: Mapping[str, Tensor], *,
    batch_size: int, device: torch.device, cache_device: torch.device,
    embed: bool = False, limit: int | None = None,
) -> tuple[TokenFeatures, TokenFeatures, Tensor | None, Tensor | None]:
    """Cached image and text features, plus the model's own embeddings when ``embed``."""
    img_parts, txt_parts, img_emb, txt_emb = [], [], [], []
    seen = 0
    with _autocast(device):
        for batch in image_batches(images, batch_size):
            batch = batch.to(device, non_blocking=True)
            img_parts.append(model.image_features(batch).to(cache_device))
            if embed:
                img_emb.append(model.encode_image(batch).float())  # type: ignore[attr-defined]
            seen += batch.shape[0]
            if limit is not None and seen >= limit:
                break
        n_txt = tokens["input_ids"].shape[0] if limit is None else min(limit,
                                                                         len(tokens["input_ids"]))
        for start in range(0, n_txt, batch_size):
            rows = {k: v[start : min(start + batch_size, n_txt)].to(device)
                    for k, v in tokens.items()}
            txt_parts.append(model.text_features(rows).to(cache_device))
            if embed:
                txt_emb.append(model.encode_text(rows).float())  # type: ignore[attr-defined]
    if not img_parts:
        raise ValueError("the image source yielded no images")
    return (_cat(img_parts), _cat(txt_parts), torch.cat(img_emb) if embed else None,
            torch.cat(txt_emb) if embed else None)


# ------------------------------------------------------------------------- pair scoring


@torch.inference_mode()
def score_pair_list(
    model: CrossEncoder, images: TokenFeatures, texts: TokenFeatures, img_idx: Tensor,
    txt_idx: Tensor, *, batch_pairs: int, device: torch.device, log_every_s: float | None = None,
) -> Tensor:
    """Scores ``[P]`` (fp32, on ``device``) of pairs ``(img_idx[p], txt_idx[p])``, batched."""
    n = img_idx.numel()
    out = torch.empty(n, dtype=torch.float32, device=device)
    # Pairs in order of caption length: a batch then trims to nearly its own length instead
    # of the gallery's longest caption. Stable, so equal lengths keep the caller's order.
    lengths = texts.mask.sum(1).to(txt_idx.device)[txt_idx]
    order = torch.argsort(lengths, stable=True)
    t0 = last = time.perf_counter()
    with _autocast(device):
        for start in range(0, n, batch_pairs):
            sel = order[start : start + batch_pairs]
            i, j = img_idx[sel], txt_idx[sel]
            scores = model.score_pairs(images.select(i.to(images.tokens.device)).to(device),
                                       texts.select(j.to(texts.tokens.device)).to(device))
            out[sel.to(device)] = scores.float()
            if log_every_s is not None and time.perf_counter() - last > log_every_s:
                last, done = time.perf_counter(), start + sel.numel()
                rate = done / (last - t0)
                print(f"[rerank] {done:,}/{n:,} pairs, {rate:,.0f} pairs/s, "
                      f"~{format_seconds((n - done) / rate)} left", flush=True)
    return out


def measure_pair_rate(model: CrossEncoder, images: TokenFeatures, texts: TokenFeatures, *,
                      batch_pairs: int, device: torch.device, repeats: int = 2) -> float:
    """Pairs per second of :func:`score_pair_list` on these features (one warm-up batch)."""
    g = torch.Generator().manual_seed(0)
    img_idx = torch.randint(len(images), (batch_pairs * (repeats + 1),), generator=g)
    txt_idx = torch.randint(len(texts), (batch_pairs * (repeats + 1),), generator=g)
    kw = {"batch_pairs": batch_pairs, "device": device}
    score_pair_list(model, images, texts, img_idx[:batch_pairs], txt_idx[:batch_pairs], **kw)
    sync(device)
    t0 = time.perf_counter()
    score_pair_list(model, images, texts, img_idx[batch_pairs:], txt_idx[batch_pairs:], **kw)
    sync(device)
    return batch_pairs * repeats / max(time.perf_counter() - t0, 1e-9)


def check_pair_budget(pairs: int, max_pairs: int | None, allow_over_budget: bool,
                      rate: Callable[[], float], what: str, device: torch.device) -> None:
    """Raise :class:`PairBudgetError` (after timing a sample) when ``pairs > max_pairs``."""
    if max_pairs is None or pairs <= max_pairs or allow_over_budget:
        return
    pairs_per_s = rate()
    raise PairBudgetError(
        f"cross-encoder {what} needs {pairs:,} pair forwards, over max_pairs={max_pairs:,}; "
        f"at {pairs_per_s:,.0f} pairs/s (measured on {device}) that is about "
        f"{format_seconds(pairs / pairs_per_s)}. Use mode='topk' with a first stage, raise "
        f"max_pairs, or pass allow_over_budget=True.",
        pairs=pairs, max_pairs=max_pairs, pairs_per_s=pairs_per_s)
