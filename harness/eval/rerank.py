"""Retrieval with a cross-encoder: full scoring of every pair, or top-k re-ranking.

Unimodal features (``image_features`` / ``text_features``) are computed once per gallery and
cached; every scored pair then costs one joint forward, many pairs per forward.

* ``mode="full"`` scores all ``n_images x n_texts`` pairs (ViLT's protocol: 5M forwards on
  Flickr 1K, 125M on COCO 5K), so it is budgeted: above ``max_pairs`` it refuses with the pair
  count and a time estimate measured on a sample, unless ``allow_over_budget=True``.
* ``mode="topk"`` (ALBEF / BLIP): a first stage's similarities pick each query's ``k_test``
  best candidates in both directions; only those pairs are scored, each once even when both
  directions want it, and candidates of several queries share a forward. Candidates outside
  the top k keep their first-stage order below every re-ranked one, so R@K is reported only
  for K <= k_test (and medr only when it falls inside the re-ranked head, meanr never) unless
  k_test covers the whole gallery. With k_test >= gallery size and ``fusion="itm"`` the ranks
  are exactly those of full scoring.

Ties rank by gallery index, lower first, as in :mod:`harness.eval.retrieval`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from harness.eval.pair_scoring import (
    ImageSource,
    PairBudgetError,
    check_pair_budget,
    count_images,
    default_batch_pairs,
    encode_gallery,
    measure_pair_rate,
    score_pair_list,
    sync,
    text_tokens,
)
from harness.eval.retrieval import DEFAULT_KS, metrics_from_ranks, retrieval_ranks, summarize_ranks
from harness.interfaces import CrossEncoder, DualEncoder, TokenFeatures

__all__ = ["PairBudgetError", "cross_encoder_retrieval", "stable_topk", "reranked_ranks",
           "topk_metrics", "DEFAULT_K_TEST", "DEFAULT_MAX_PAIRS", "MODES", "FUSIONS"]

DEFAULT_K_TEST = 128  # ALBEF's Flickr/COCO value; BLIP uses 256 on COCO
DEFAULT_MAX_PAIRS = 2_000_000
MODES = ("full", "topk")
FUSIONS = ("itm", "itm+first_stage")
_TOPK_CHUNK = 1024  # query rows sorted at once when picking candidates

FirstStage = Tensor | tuple[Tensor, Tensor] | str | None


# ------------------------------------------------------------------------ top-k ranking


def stable_topk(sims: Tensor, k: int) -> Tensor:
    """Column indices ``[rows, k]`` of each row's k best scores; ties by lower index."""
    out = torch.empty(sims.shape[0], k, dtype=torch.long, device=sims.device)
    for start in range(0, sims.shape[0], _TOPK_CHUNK):
        block = sims[start : start + _TOPK_CHUNK]
        # torch.topk does not promise an order among ties; a stable sort does.
        out[start : start + block.shape[0]] = torch.sort(block, dim=1, descending=True,
                                                         stable=True).indices[:, :k]
    return out


def reranked_ranks(cand: Tensor, scores: Tensor, positive: Tensor, fallback: Tensor) -> Tensor:
    """1-based rank of each query's best positive after re-ranking its candidates.

    ``cand [Q, k]`` gallery indices, ``scores [Q, k]`` their fused scores, ``positive [Q, k]``
    which candidates are positives, ``fallback [Q]`` the first-stage rank, used when no
    positive made the top k (it is then > k: every candidate was ahead of it).
    """
    _, perm = cand.sort(dim=1)  # index order first: the stable sort below breaks ties by it
    order = scores.gather(1, perm).argsort(dim=1, descending=True, stable=True)
    hits = positive.gather(1, perm).gather(1, order)
    found = hits.any(dim=1)
    first = hits.to(torch.uint8).argmax(dim=1) + 1
    return torch.where(found, first, fallback.to(first.device))


def _direction_metrics(ranks: Tensor, ks: Sequence[int], cutoff: int | None, prefix: str
                       ) -> dict[str, float]:
    """R@K for K <= cutoff, medr when inside the re-ranked head, meanr only without a cutoff."""
    summary = summarize_ranks(ranks, ks, prefix)
    out = {f"{prefix}R@{k}": summary[f"{prefix}R@{k}"] for k in ks if cutoff is None or k <= cutoff}
    if cutoff is None or summary[f"{prefix}medr"] <= cutoff:
        out[f"{prefix}medr"] = summary[f"{prefix}medr"]
    if cutoff is None:
        out[f"{prefix}meanr"] = summary[f"{prefix}meanr"]
    return out


def topk_metrics(i2t: Tensor, t2i: Tensor, ks: Sequence[int], cutoffs: tuple[int | None, int | None]
                 ) -> dict[str, float]:
    """Contract keys for re-ranked ranks; rsum only when every R@K is reported both ways."""
    if cutoffs == (None, None):
        return metrics_from_ranks(i2t, t2i, ks)
    a = _direction_metrics(i2t, ks, cutoffs[0], "i2t_")
    b = _direction_metrics(t2i, ks, cutoffs[1], "t2i_")
    out = {k: v for k, v in a.items() if "R@" in k} | {k: v for k, v in b.items() if "R@" in k}
    if len(out) == 2 * len(ks):
        out["rsum"] = sum(out.values())
    out.update({k: v for k, v in (a | b).items() if "R@" not in k})
    return out


def _first_stage_sims(first_stage: FirstStage, own: tuple[Tensor | None, Tensor | None],
                      shape: tuple[int, int], device: torch.device) -> Tensor:
    if first_stage is None or first_stage == "self":
        img, txt = own
        assert img is not None and txt is not None
    elif isinstance(first_stage, Tensor):
        if tuple(first_stage.shape) != shape:
            raise ValueError(f"first_stage sims have shape {tuple(first_stage.shape)}, expected "
                             f"(n_images, n_texts) = {shape}")
        return first_stage.to(device, torch.float32)
    elif isinstance(first_stage, tuple) and len(first_stage) == 2:
        img, txt = first_stage
        if (img.shape[0], txt.shape[0]) != shape:
            raise ValueError(f"first_stage embeddings cover {img.shape[0]} images and "
                             f"{txt.shape[0]} texts, expected {shape}")
    else:
        raise TypeError("first_stage must be None/'self', a [n_images, n_texts] tensor of "
                        f"similarities or an (image_emb, text_emb) pair, got {type(first_stage)}")
    return img.to(device, torch.float32) @ txt.to(device, torch.float32).T


# ------------------------------------------------------------------------------- entry


def _model_device(model: object) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def _check_args(mode: str, fusion: str, ints: Mapping[str, object]) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if mode == "full" and fusion != "itm":
        raise ValueError(f"fusion={fusion!r} needs mode='topk': full scoring has no first stage")
    for name, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _full(model: CrossEncoder, img: TokenFeatures, txt: TokenFeatures, txt2img: Tensor,
          ks: Sequence[int], score_kw: dict[str, Any], clock: dict[str, float]
          ) -> tuple[dict[str, float], int, tuple[Tensor, Tensor]]:
    n_img, n_txt = len(img), len(txt)
    img_idx = torch.arange(n_img).repeat_interleave(n_txt)  # row-major: scores view as a matrix
    txt_idx = torch.arange(n_txt).repeat(n_img)
    clock["score"] = time.perf_counter()
    scores = score_pair_list(model, img, txt, img_idx, txt_idx, **score_kw)
    sync(score_kw["device"])
    clock["rank"] = time.perf_counter()
    ranks = retrieval_ranks(scores.view(n_img, n_txt).cpu(), txt2img)
    return metrics_from_ranks(*ranks, ks), n_img * n_txt, ranks


def _topk(model: CrossEncoder, img: TokenFeatures, txt: TokenFeatures, txt2img: Tensor,
          sims: Tensor, *, k_test: int, fusion: str, ks: Sequence[int],
          budget: Callable[[int], None], score_kw: dict[str, Any], clock: dict[str, float]
          ) -> tuple[dict[str, float], int, dict[str, float], tuple[Tensor, Tensor]]:
    n_img, n_txt, dev = len(img), len(txt), sims.device
    first_ranks = retrieval_ranks(sims, txt2img)
    k_i2t, k_t2i = min(k_test, n_txt), min(k_test, n_img)
    cand_i2t, cand_t2i = stable_topk(sims, k_i2t), stable_topk(sims.T, k_t2i)
    rows_i = torch.arange(n_img, device=dev)[:, None]
    rows_t = torch.arange(n_txt, device=dev)[:, None]
    # Pair id = image * n_txt + text: a pair both directions want is scored once.
    pair_i2t = (rows_i * n_txt + cand_i2t).flatten()
    pair_t2i = (cand_t2i * n_txt + rows_t).flatten()
    union = torch.unique(torch.cat([pair_i2t, pair_t2i]))
    budget(int(union.numel()))
    clock["score"] = time.perf_counter()
    scores = score_pair_list(model, img, txt, (union // n_txt).cpu(), (union % n_txt).cpu(),
                             **score_kw)
    sync(dev)
    clock["rank"] = time.perf_counter()
    s_i2t = scores[torch.searchsorted(union, pair_i2t)].view(n_img, k_i2t)
    s_t2i = scores[torch.searchsorted(union, pair_t2i)].view(n_txt, k_t2i)
    if fusion == "itm+first_stage":  # BLIP / LAVIS: ITM score plus first-stage similarity
        s_i2t = s_i2t + sims.gather(1, cand_i2t)
        s_t2i = s_t2i + sims.T.gather(1, cand_t2i)
    t2i_dev = txt2img.to(dev)
    i2t = reranked_ranks(cand_i2t, s_i2t, t2i_dev[cand_i2t] == rows_i, first_ranks[0])
    t2i = reranked_ranks(cand_t2i, s_t2i, cand_t2i == t2i_dev[:, None], first_ranks[1])
    cutoffs = (k_i2t if k_i2t < n_txt else None, k_t2i if k_t2i < n_img else None)
    # The first stage's own recall, reported beside the re-ranked one: what re-ranking bought.
    first = metrics_from_ranks(first_ranks[0].cpu(), first_ranks[1].cpu(), ks)
    first_recall = {k: v for k, v in first.items() if "R@" in k}
    i2t, t2i = i2t.cpu(), t2i.cpu()
    return topk_metrics(i2t, t2i, ks, cutoffs), int(union.numel()), first_recall, (i2t, t2i)


def cross_encoder_retrieval(
    model: CrossEncoder,
    images: ImageSource,
    texts: Mapping[str, Tensor] | Sequence[str],
    txt2img: Tensor,
    *,
    mode: str = "topk",
    k_test: int = DEFAULT_K_TEST,
    fusion: str = "itm",
    first_stage: FirstStage = None,
    first_stage_name: str | None = None,
    tokenize: Callable[[Sequence[str]], Mapping[str, Tensor]] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_pairs: int | None = None,
    feature_batch_size: int = 256,
    device: torch.device | str | None = None,
    cache_device: torch.device | str | None = None,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
    allow_over_budget: bool = False,
    log_every_s: float | None = 60.0,
    ranks_out: dict[str, Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Cross-encoder retrieval metrics: ``(metrics, protocol, efficiency)``.

    ``images``: ``[N,3,H,W]`` tensor or a loader of image batches in gallery order, already
    preprocessed for ``model``. ``texts``: ``{input_ids, attention_mask}`` for all texts, or
    captions with ``tokenize``. ``first_stage`` (topk only): ``None``/``"self"`` for the
    model's own contrastive head (it must be a DualEncoder too), ``sims [n_images, n_texts]``,
    or ``(image_emb, text_emb)`` of another model, computed with that model's preprocessing.
    ``batch_pairs`` defaults to :func:`default_batch_pairs` of the device. ``ranks_out``, when
    given, receives each direction's per-query rank of the first positive (``i2t``, ``t2i``);
    after top-k re-ranking a positive outside the candidates keeps its first-stage rank (> k),
    so R@K for K <= k recomputes exactly from them.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    batch_pairs = default_batch_pairs(dev) if batch_pairs is None else batch_pairs
    _check_args(mode, fusion, {"k_test": k_test, "batch_pairs": batch_pairs,
                               "feature_batch_size": feature_batch_size})
    if mode == "full" and first_stage is not None:
        raise ValueError("first_stage is only used by mode='topk'; full scoring ranks every pair")
    own = mode == "topk" and (first_stage is None or first_stage == "self")
    if own and not isinstance(model, DualEncoder):
        raise TypeError(f"{type(model).__name__} has no contrastive head (encode_image/"
                        "encode_text), so it cannot be its own first stage: pass first_stage="
                        "similarities or embeddings of a dual encoder, or use mode='full'")
    cache = torch.device(cache_device) if cache_device is not None else dev
    tokens = text_tokens(texts, tokenize)
    n_txt = int(tokens["input_ids"].shape[0])
    txt2img = torch.as_tensor(txt2img).long()
    if txt2img.numel() != n_txt:
        raise ValueError(f"txt2img has {txt2img.numel()} entries but there are {n_txt} texts")
    feat_kw = {"batch_size": feature_batch_size, "device": dev, "cache_device": cache}
    n_img = count_images(images)
    if mode == "full" and n_img is not None:
        def sample_rate() -> float:  # refuse before encoding the whole gallery
            im, tx, _, _ = encode_gallery(model, images, tokens, limit=feature_batch_size,
                                          **feat_kw)
            return measure_pair_rate(model, im, tx, batch_pairs=batch_pairs, device=dev)
        check_pair_budget(n_img * n_txt, max_pairs, allow_over_budget, sample_rate,
                          f"full scoring of {n_img:,} images x {n_txt:,} texts", dev)

    clock = {"start": time.perf_counter()}
    img_f, txt_f, img_e, txt_e = encode_gallery(model, images, tokens, embed=own, **feat_kw)
    sync(dev)
    clock["first_stage"] = time.perf_counter()
    n_img = len(img_f)

    def budget(pairs: int) -> None:
        what = (f"full scoring of {n_img:,} images x {n_txt:,} texts" if mode == "full" else
                f"top-{k_test} re-ranking of {n_img:,} images and {n_txt:,} texts")
        clock["budget"] = time.perf_counter()
        check_pair_budget(pairs, max_pairs, allow_over_budget,
                          lambda: measure_pair_rate(model, img_f, txt_f, batch_pairs=batch_pairs,
                                                    device=dev), what, dev)

    score_kw = {"batch_pairs": batch_pairs, "device": dev, "log_every_s": log_every_s}
    if mode == "full":
        budget(n_img * n_txt)
        metrics, pairs, ranks = _full(model, img_f, txt_f, txt2img, ks, score_kw, clock)
        protocol = {"scoring": "full", "first_stage": None, "k_test": None, "rerank_k": None,
                    "fusion": "itm"}
    else:
        sims = _first_stage_sims(first_stage, (img_e, txt_e), (n_img, n_txt), dev)
        metrics, pairs, first_recall, ranks = _topk(
            model, img_f, txt_f, txt2img, sims, k_test=k_test, fusion=fusion, ks=ks,
            budget=budget, score_kw=score_kw, clock=clock)
        protocol = {"scoring": "topk", "k_test": k_test, "rerank_k": k_test, "fusion": fusion,
                    "first_stage": first_stage_name or ("self:itc" if own else "given"),
                    "first_stage_metrics": first_recall}
    if ranks_out is not None:
        ranks_out.update(i2t=ranks[0], t2i=ranks[1])
    end = time.perf_counter()
    protocol.update(precision="bf16" if dev.type == "cuda" else "fp32", pair_batch_size=batch_pairs)
    score_s = clock["rank"] - clock["score"]
    efficiency = {
        "features_s": round(clock["first_stage"] - clock["start"], 4),
        "first_stage_s": round(clock["budget"] - clock["first_stage"], 4),
        "score_s": round(score_s, 4), "rank_s": round(end - clock["rank"], 4),
        "total_s": round(end - clock["start"], 4), "pairs_scored": pairs,
        "pairs_per_s": round(pairs / max(score_s, 1e-9), 1)}  # the device: efficiency.device
    return metrics, protocol, efficiency
