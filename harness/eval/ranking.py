"""Ranks of the positives for image-text retrieval, computed by counting, never by sorting.

A rank is ``1 + #(gallery items scoring strictly higher than the positive) + #(items scoring
exactly the same with a lower gallery index)``: what a stable descending sort gives, without
sorting. Image->text (i2t) ranks an image by its best caption (any number of captions per
image); text->image (t2i) ranks a caption by its one image.

One pass over image-row chunks of the similarity matrix serves both directions: each row
chunk yields its images' i2t ranks, and adds column-wise counts for every caption against
the caption's positive score, known beforehand. Only one chunk of scores (plus one equally
sized count buffer) is ever held: COCO-5K needs under 100 MB beyond its inputs on CPU,
against ~1 GB for the full matrix plus argsort. Ranks are 1-based.

From embeddings, scores are fp32 (or wider) GEMMs of row chunks. The positive scores come
from the same row-chunk GEMMs restricted to each chunk's own captions, so they match the
pass's entries bit for bit in practice (and the ranks match those of the full matrix); the
pass also writes them into its chunk, so both directions always rank one well-defined
matrix even if a BLAS rounds differently by shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Rows of scores per chunk when chunk_size is None, tuned with bench/bench_retrieval.py at
# COCO-5K size. On CPUs small chunks stay in cache (on 2 quiet cores: 1.1-1.2x a bare matmul
# at 128-256 rows, 1.4x at 512); on GPUs fewer, larger chunks amortise kernel launches.
CPU_CHUNK_SIZE = 256
GPU_CHUNK_SIZE = 1024
# fp32 sums of 0/1 values stay exact below 2**24; beyond it the count buffer goes fp64.
_FP32_EXACT = 2**24
# Rows per block when checking a full similarity matrix for NaN/inf.
_CHECK_BLOCK = 8192


# ---------------------------------------------------------------------------- validation


def default_chunk_size(device: torch.device | str) -> int:
    """Rows of scores per chunk used when chunk_size is None: small on CPU, larger elsewhere."""
    return CPU_CHUNK_SIZE if torch.device(device).type == "cpu" else GPU_CHUNK_SIZE


def _check_chunk_size(chunk_size: int | None, device: torch.device) -> int:
    if chunk_size is None:
        return default_chunk_size(device)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def _check_matrix(x: Tensor, name: str) -> tuple[Tensor, float]:
    """Validated 2-D float tensor and its largest absolute value."""
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    # aminmax propagates NaN and needs no temporary the size of x; one reduction gives
    # both the finiteness check and the overflow bound.
    largest = 0.0
    for i0 in range(0, x.shape[0], _CHECK_BLOCK):
        lo, hi = (float(v) for v in torch.aminmax(x[i0 : i0 + _CHECK_BLOCK]))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = ~torch.isfinite(x[i0 : i0 + _CHECK_BLOCK]).all(1)
            row = i0 + int(bad.nonzero()[0])
            raise ValueError(f"{name} has NaN or inf values (first in row {row})")
        largest = max(largest, -lo, hi)
    return x, largest


def _check_groups(groups: Tensor, n: int, name: str, rows: str) -> Tensor:
    groups = torch.as_tensor(groups)
    if groups.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(groups.shape)}")
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {groups.dtype}")
    if groups.numel() != n:
        raise ValueError(f"{name} has {groups.numel()} entries but there are {n} {rows}")
    return groups.to("cpu", torch.long)


def _check_txt2img(txt2img: Tensor, n_images: int, n_texts: int) -> Tensor:
    txt2img = _check_groups(txt2img, n_texts, "txt2img", "texts")
    bad = (txt2img < 0) | (txt2img >= n_images)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise ValueError(f"txt2img[{j}] = {int(txt2img[j])} points outside the {n_images} images")
    counts = torch.bincount(txt2img, minlength=n_images)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten()
        raise ValueError(
            f"image {int(missing[0])} has no caption ({missing.numel()} images without one); "
            "every image needs at least one positive text"
        )
    return txt2img


def _check_embedding_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    (a, a_max), (b, b_max) = _check_matrix(a, names[0]), _check_matrix(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"embedding dims differ: {names[0]} has {a.shape[1]}, {names[1]} has {b.shape[1]}"
        )
    # Finite inputs can still overflow fp32 in a dot product; then NaN scores would
    # silently compare false, so refuse up front with a cheap bound.
    if a_max * b_max * a.shape[1] >= torch.finfo(torch.float32).max:
        raise ValueError(f"{names[0]} and {names[1]} are too large: fp32 dot products overflow")
    return a, b


def _compute_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)


# ------------------------------------------------------------------------------- ranking


def _best_positive_ranks(
    scores: Tensor,
    best: Tensor,
    best_index: Tensor,
    buf: Tensor,
    col_index: Tensor | None = None,
    span: tuple[int, int] | None = None,
) -> Tensor:
    """1-based rank of score `best` (gallery index `best_index`) in each row of `scores`."""
    # `span` holds every best positive; columns left of it have lower indices, so ties there
    # rank ahead (>=), and columns right of it do not (>). Only the span needs an equality
    # pass. Without col_index the gallery index is the column; with it, span must be all.
    a, b = (0, scores.shape[1]) if span is None else span
    threshold = best[:, None]
    # Comparisons written into a float buffer, then float sums: several times faster on
    # CPU than summing boolean masks, and exact for counts below 2**24.
    torch.ge(scores[:, :a], threshold, out=buf[:, :a])
    torch.gt(scores[:, a:], threshold, out=buf[:, a:])
    ranks = buf.sum(1).long() + 1
    block, eq = scores[:, a:b], buf[:, : b - a]
    torch.eq(block, threshold, out=eq)
    # The best positive equals itself; only rows with another equal item need index order.
    tied = (eq.sum(1) > 1).nonzero().flatten()
    if tied.numel():
        idx = torch.arange(a, b, device=scores.device) if col_index is None else col_index[a:b]
        ahead = (block[tied] == threshold[tied]) & (idx[None, :] < best_index[tied, None])
        ranks[tied] += ahead.sum(1)
    return ranks


@dataclass(frozen=True)
class _Layout:
    """Captions regrouped by image so that each image's captions are contiguous columns."""

    order: Tensor | None  # sorted column -> original caption index; None if already sorted
    pos: Tensor  # image of each sorted column
    starts: list[int]  # first sorted column of each image, plus n_texts at the end
    pos_pad: Tensor  # [n_images, max_caps] sorted columns of each image, padded by repetition
    orig_pad: Tensor  # the same as original caption indices, for tie-breaking


def _make_layout(txt2img: Tensor, n_images: int, device: torch.device) -> _Layout:
    presorted = bool((txt2img[1:] >= txt2img[:-1]).all())
    order = None if presorted else torch.argsort(txt2img, stable=True)
    pos = txt2img if order is None else txt2img[order]
    counts = torch.bincount(txt2img, minlength=n_images)
    starts = torch.zeros(n_images + 1, dtype=torch.long)
    starts[1:] = torch.cumsum(counts, 0)
    slot = torch.arange(int(counts.max()))
    pos_pad = starts[:-1, None] + torch.minimum(slot[None, :], counts[:, None] - 1)
    orig_pad = pos_pad if order is None else order[pos_pad]
    return _Layout(
        order=None if order is None else order.to(device),
        pos=pos.to(device),
        starts=starts.tolist(),
        pos_pad=pos_pad.to(device),
        orig_pad=orig_pad.to(device),
    )


def _i2t_chunk(scores: Tensor, i0: int, lay: _Layout, buf: Tensor) -> Tensor:
    rows = slice(i0, i0 + scores.shape[0])
    positives = scores.gather(1, lay.pos_pad[rows])
    best = positives.amax(1)
    n_texts = scores.shape[1]
    # Among captions tied at the best score, the lowest original index ranks first.
    best_index = torch.where(positives == best[:, None], lay.orig_pad[rows], n_texts).amin(1)
    if lay.order is not None:
        return _best_positive_ranks(scores, best, best_index, buf, col_index=lay.order)
    span = (lay.starts[i0], lay.starts[i0 + scores.shape[0]])
    return _best_positive_ranks(scores, best, best_index, buf, span=span)


def _t2i_chunk(scores: Tensor, i0: int, q: Tensor, lay: _Layout, buf: Tensor) -> Tensor:
    """Per sorted caption: how many images of this row chunk rank ahead of its own image."""
    c = scores.shape[0]
    a, b = lay.starts[i0], lay.starts[i0 + c]
    # Columns [0, a) belong to earlier images, so these rows have higher indices and must
    # score strictly higher; columns [b, n) belong to later images, so ties also rank ahead.
    # Columns [a, b) are this chunk's own captions: strictly higher here, ties added below.
    torch.gt(scores[:, :b], q[:b], out=buf[:, :b])
    torch.ge(scores[:, b:], q[b:], out=buf[:, b:])
    ahead = buf.sum(0).long()
    ahead[a:b] += _lower_index_ties(scores[:, a:b], i0, q[a:b], lay.pos[a:b], buf)
    return ahead


def _lower_index_ties(block: Tensor, i0: int, q: Tensor, pos: Tensor, buf: Tensor) -> Tensor:
    """For captions whose image is in this chunk: rows tied with it and of lower index."""
    eq = buf[:, : block.shape[1]]
    torch.eq(block, q, out=eq)
    ties = torch.zeros(block.shape[1], dtype=torch.long, device=block.device)
    # The own image always equals q (the pass guarantees it), so a tie needs a second row.
    tied = (eq.sum(0) > 1).nonzero().flatten()
    if tied.numel():
        rows = torch.arange(block.shape[0], device=block.device)[:, None]
        lower = (block[:, tied] == q[tied]) & (rows < (pos[tied] - i0)[None, :])
        ties[tied] = lower.sum(0)
    return ties


def _count_buffer(rows: int, cols: int, device: torch.device) -> Tensor:
    dtype = torch.float32 if max(rows, cols) < _FP32_EXACT else torch.float64
    return torch.empty(rows, cols, dtype=dtype, device=device)


def _rank_pass(
    chunks: Iterator[tuple[int, Tensor]], q: Tensor, lay: _Layout, n_images: int, chunk: int
) -> tuple[Tensor, Tensor]:
    """Consume image-row chunks (sorted columns) once; return i2t and t2i ranks on CPU."""
    n_texts = q.numel()
    buf = _count_buffer(min(chunk, n_images), n_texts, q.device)
    i2t = torch.empty(n_images, dtype=torch.long, device=q.device)
    t2i = torch.ones(n_texts, dtype=torch.long, device=q.device)
    for i0, scores in chunks:
        c = scores.shape[0]
        i2t[i0 : i0 + c] = _i2t_chunk(scores, i0, lay, buf[:c])
        t2i += _t2i_chunk(scores, i0, q, lay, buf[:c])
    if lay.order is not None:
        t2i = torch.empty_like(t2i).index_copy_(0, lay.order, t2i)
    return i2t.cpu(), t2i.cpu()


# ------------------------------------------------------------------------- public ranks


def retrieval_ranks(
    sims: Tensor, txt2img: Tensor, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """1-based (i2t ranks per image, t2i ranks per text) from a similarity matrix."""
    sims, _ = _check_matrix(sims, "sims")
    n_images, n_texts = sims.shape
    txt2img = _check_txt2img(txt2img, n_images, n_texts)
    chunk = _check_chunk_size(chunk_size, sims.device)
    lay = _make_layout(txt2img, n_images, sims.device)
    cols = torch.arange(n_texts, device=sims.device) if lay.order is None else lay.order
    q = sims[lay.pos, cols]

    def chunks() -> Iterator[tuple[int, Tensor]]:
        for i0 in range(0, n_images, chunk):
            block = sims[i0 : i0 + chunk]
            yield i0, block if lay.order is None else block.index_select(1, lay.order)

    return _rank_pass(chunks(), q, lay, n_images, chunk)


def _own_entries(i0: int, c: int, lay: _Layout) -> tuple[Tensor, Tensor, int, int]:
    a, b = lay.starts[i0], lay.starts[i0 + c]
    return lay.pos[a:b] - i0, torch.arange(b - a, device=lay.pos.device), a, b


def _positive_scores(img: Tensor, txt: Tensor, lay: _Layout, chunk: int) -> Tensor:
    """Each sorted caption's score with its image, from the pass's own row-chunk GEMMs."""
    q = torch.empty(txt.shape[0], dtype=txt.dtype, device=txt.device)
    for i0 in range(0, img.shape[0], chunk):
        rows = img[i0 : i0 + chunk]
        local, cols, a, b = _own_entries(i0, rows.shape[0], lay)
        # Same rows and depth as the pass's GEMM, only fewer columns: BLAS rounds these
        # entries as the pass does (bit-equal in practice), unlike a separate dot product.
        q[a:b] = (rows @ txt[a:b].T)[local, cols]
    return q


def retrieval_ranks_from_embeddings(
    img_emb: Tensor,
    txt_emb: Tensor,
    txt2img: Tensor,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """1-based (i2t, t2i) ranks from embeddings, scoring row chunks of img @ txt.T on device."""
    img_emb, txt_emb = _check_embedding_pair(img_emb, txt_emb, ("img_emb", "txt_emb"))
    n_images, n_texts = img_emb.shape[0], txt_emb.shape[0]
    txt2img = _check_txt2img(txt2img, n_images, n_texts)
    dev = torch.device(device) if device is not None else img_emb.device
    chunk = _check_chunk_size(chunk_size, dev)
    dtype = _compute_dtype(img_emb, txt_emb)
    lay = _make_layout(txt2img, n_images, dev)
    txt = txt_emb.to(dev, dtype)
    txt = txt if lay.order is None else txt[lay.order]
    img = img_emb.to(dev, dtype)
    q = _positive_scores(img, txt, lay, chunk)
    scores = torch.empty(min(chunk, n_images), n_texts, dtype=dtype, device=dev)

    def chunks() -> Iterator[tuple[int, Tensor]]:
        for i0 in range(0, n_images, chunk):
            rows = img[i0 : i0 + chunk]
            block = torch.mm(rows, txt.T, out=scores[: rows.shape[0]])
            local, cols, a, _ = _own_entries(i0, rows.shape[0], lay)
            # Should a BLAS round differently by shape, this keeps both directions ranking
            # one well-defined matrix: the pass's, with positives set to exactly q.
            block[local, cols + a] = q[a : a + cols.numel()]
            yield i0, block

    return _rank_pass(chunks(), q, lay, n_images, chunk)


def multi_positive_ranks(
    query_emb: Tensor,
    gallery_emb: Tensor,
    query_group: Tensor,
    gallery_group: Tensor,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """1-based rank of each query's best positive (same group) in the gallery, by counting."""
    query_emb, gallery_emb = _check_embedding_pair(
        query_emb, gallery_emb, ("query_emb", "gallery_emb")
    )
    n_q, n_g = query_emb.shape[0], gallery_emb.shape[0]
    if exclude_self and n_q != n_g:
        raise ValueError(
            f"exclude_self needs query i to be gallery item i, but there are {n_q} queries "
            f"and {n_g} gallery items"
        )
    qg = _check_groups(query_group, n_q, "query_group", "queries")
    gg = _check_groups(gallery_group, n_g, "gallery_group", "gallery items")
    _check_every_query_has_positive(qg, gg, exclude_self)
    dev = torch.device(device) if device is not None else query_emb.device
    chunk = _check_chunk_size(chunk_size, dev)
    dtype = _compute_dtype(query_emb, gallery_emb)
    gallery = gallery_emb.to(dev, dtype)
    qg, gg = qg.to(dev), gg.to(dev)
    buf = _count_buffer(min(chunk, n_q), n_g, dev)
    ranks = torch.empty(n_q, dtype=torch.long, device=dev)
    for i0 in range(0, n_q, chunk):
        scores = query_emb[i0 : i0 + chunk].to(dev, dtype) @ gallery.T
        c = scores.shape[0]
        positive = qg[i0 : i0 + c, None] == gg[None, :]
        if exclude_self:
            diag = torch.arange(c, device=dev)
            scores[diag, diag + i0] = float("-inf")  # out of the gallery: never ranks ahead
            positive[diag, diag + i0] = False
        best = torch.where(positive, scores, float("-inf")).amax(1)
        # argmax returns the first maximum: the lowest-index positive among tied ones.
        best_index = (positive & (scores == best[:, None])).to(torch.uint8).argmax(1)
        ranks[i0 : i0 + c] = _best_positive_ranks(scores, best, best_index, buf[:c])
    return ranks.cpu()


def _check_every_query_has_positive(qg: Tensor, gg: Tensor, exclude_self: bool) -> None:
    values, inverse = torch.unique(torch.cat([qg, gg]), return_inverse=True)
    in_gallery = torch.bincount(inverse[qg.numel() :], minlength=values.numel())
    available = in_gallery[inverse[: qg.numel()]] - int(exclude_self)
    if bool((available <= 0).any()):
        bad = (available <= 0).nonzero().flatten()
        raise ValueError(
            f"query {int(bad[0])} (group {int(qg[bad[0]])}) has no positive in the gallery "
            f"({bad.numel()} queries without one)"
        )
