"""Ranks of the positives for image-text retrieval, computed by counting, never by sorting.

A rank is ``1 + #(gallery items scoring strictly higher than the positive) + #(items scoring
exactly the same with a lower gallery index)``: what a stable descending sort gives, without
sorting. Image->text (i2t) ranks an image by its best caption (any number of captions per
image); text->image (t2i) ranks a caption by its one image.

One pass over tiles of the similarity matrix (image-row chunks x caption-column tiles)
serves both directions: each tile adds, per image, the captions ahead of its best positive
and, per caption, the images ahead of its own, both thresholds known beforehand, right after
the tile is produced and while it is still cached. Only one tile of scores (plus one equally
sized count buffer) is ever held: COCO-5K needs about 140 MB beyond its inputs on CPU,
against ~1 GB for the full matrix plus argsort. Ranks are 1-based.

From embeddings, scores are fp32 (or wider) GEMMs of tiles. The positive scores come
from the same row-chunk GEMMs restricted to each chunk's own captions, so they match the
pass's entries bit for bit in practice (and the ranks match those of the full matrix); the
pass also writes them into its chunk, so both directions always rank one well-defined
matrix even if a BLAS rounds differently by shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Rows of scores per chunk when chunk_size is None, and columns per tile on CPU: each tile is
# counted in both directions right after its GEMM, while still cached. Chosen with
# bench/bench_retrieval.py at COCO-5K size on a 2-core AMD EPYC (1 MiB L2 per core, 32 MiB
# L3) shared with other jobs: 1024 x 8192 fp32 tiles (32 MiB, plus an equal count buffer)
# measured fastest there; L2-sized tiles (256 x 1024) were 2-10x slower, as each of a
# tile's few passes ends on a thread barrier that a loaded machine makes slow
# (docs/performance.md). On GPUs tiles span the full width to amortise kernel launches.
CPU_CHUNK_SIZE = 1024
GPU_CHUNK_SIZE = 1024
CPU_TILE_COLS = 8192
# multi_positive_ranks still scores whole rows (galleries of 25k captions): fewer of them.
_CPU_WHOLE_ROW_CHUNK = 256
# fp32 sums of 0/1 values stay exact below 2**24; beyond it the count buffer goes fp64.
_FP32_EXACT = 2**24
# Rows per block when checking a full similarity matrix for NaN/inf.
_CHECK_BLOCK = 8192


# ---------------------------------------------------------------------------- validation


def default_chunk_size(device: torch.device | str) -> int:
    """Rows of scores per chunk used when chunk_size is None: small on CPU, larger elsewhere."""
    return CPU_CHUNK_SIZE if torch.device(device).type == "cpu" else GPU_CHUNK_SIZE


def _tile_cols(device: torch.device, n_texts: int) -> int:
    """Columns of scores per tile: a cache-sized tile on CPU, the full width elsewhere."""
    return CPU_TILE_COLS if device.type == "cpu" else n_texts


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


def _best_positives(q: Tensor, lay: _Layout) -> tuple[Tensor, Tensor]:
    """Each image's best positive score and, among captions tied at it, the lowest index."""
    positives = q[lay.pos_pad]
    best = positives.amax(1)
    best_index = torch.where(positives == best[:, None], lay.orig_pad, q.numel()).amin(1)
    return best, best_index


def _i2t_tile_ties(
    block: Tensor, best: Tensor, best_index: Tensor, idx: Tensor, eq: Tensor
) -> Tensor:
    """Per row: items of `block` tied with its best positive and of lower gallery index."""
    torch.eq(block, best[:, None], out=eq)
    # The best positive equals itself; only rows with another equal item need index order.
    own = ((best_index[:, None] == idx[None, :]).sum(1)).to(eq.dtype)
    tied = (eq.sum(1) > own).nonzero().flatten()
    ahead = torch.zeros(block.shape[0], dtype=torch.long, device=block.device)
    if tied.numel():
        hit = (block[tied] == best[tied, None]) & (idx[None, :] < best_index[tied, None])
        ahead[tied] = hit.sum(1)
    return ahead


def _rank_pass(
    tiles: Callable[[int, int], Iterator[tuple[int, Tensor]]],
    q: Tensor,
    lay: _Layout,
    n_images: int,
    chunk: int,
    tile_cols: int,
) -> tuple[Tensor, Tensor]:
    """Count, tile by tile while each tile of scores is in cache, what ranks ahead of every
    positive in both directions; return i2t and t2i ranks on CPU.

    `tiles(i0, c)` yields (first sorted column, scores) for rows [i0, i0 + c), left to right.
    """
    n_texts = q.numel()
    best, best_index = _best_positives(q, lay)
    # x >= t is x > nextafter(t, -inf) for finite floats: each region of a tile then needs
    # one strict comparison, whichever way its ties go, so a tile costs few passes.
    best_dn = torch.nextafter(best, torch.full_like(best, -math.inf))
    q_dn = torch.nextafter(q, torch.full_like(q, -math.inf))
    buf = _count_buffer(min(chunk, n_images), min(tile_cols, n_texts), q.device)
    i2t = torch.empty(n_images, dtype=torch.long, device=q.device)
    t2i_ahead = torch.zeros(n_texts, dtype=_count_buffer(1, n_images, q.device).dtype,
                            device=q.device)
    t2i_ties = torch.zeros(n_texts, dtype=torch.long, device=q.device)
    # i2t tie-breaking is by original caption index: contiguous with the sorted columns only
    # when the captions came sorted; otherwise every column may hold an earlier-index tie.
    col_index = lay.order
    for i0 in range(0, n_images, chunk):
        c = min(chunk, n_images - i0)
        a, b = lay.starts[i0], lay.starts[i0 + c]
        thr, bi = best[i0 : i0 + c, None], best_index[i0 : i0 + c]
        thr_dn = best_dn[i0 : i0 + c, None]
        # t2i: a caption of an earlier image (column < b, outside this chunk) has its image
        # at a lower row index, so these rows rank ahead only when strictly higher; for a
        # caption of a later image (column >= b) ties rank ahead too (own captions: below).
        col_thr = torch.cat([q[:b], q_dn[b:]])
        ahead = torch.zeros(c, dtype=buf.dtype, device=q.device)
        ties = torch.zeros(c, dtype=torch.long, device=q.device)
        for j0, scores in tiles(i0, c):
            w = scores.shape[1]
            out = buf[:c, :w]
            # i2t, sorted captions: earlier columns have lower indices, so ties there rank
            # ahead (>=); from column a on only strictly higher scores do, and ties among
            # this chunk's own captions [a, b) are settled by index below.
            k = 0 if col_index is not None else min(max(a - j0, 0), w)
            if k == w:
                torch.gt(scores, thr_dn, out=out)
            elif k == 0:
                torch.gt(scores, thr, out=out)
            else:
                torch.gt(scores[:, :k], thr_dn, out=out[:, :k])
                torch.gt(scores[:, k:], thr, out=out[:, k:])
            ahead += out.sum(1)
            s0, s1 = (j0, j0 + w) if col_index is not None else (max(a, j0), min(b, j0 + w))
            if s1 > s0:
                idx = (torch.arange(s0, s1, device=q.device) if col_index is None
                       else col_index[s0:s1])
                block = scores[:, s0 - j0 : s1 - j0]
                ties += _i2t_tile_ties(block, thr[:, 0], bi, idx, buf[:c, : s1 - s0])
            torch.gt(scores, col_thr[j0 : j0 + w], out=out)
            t2i_ahead[j0 : j0 + w] += out.sum(0)
            t0, t1 = max(a, j0), min(b, j0 + w)
            if t1 > t0:
                t2i_ties[t0:t1] += _lower_index_ties(
                    scores[:, t0 - j0 : t1 - j0], i0, q[t0:t1], lay.pos[t0:t1], buf[:c]
                )
        i2t[i0 : i0 + c] = ahead.long() + ties + 1
    t2i = t2i_ahead.long() + t2i_ties + 1
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
    width = _tile_cols(sims.device, n_texts)

    def tiles(i0: int, c: int) -> Iterator[tuple[int, Tensor]]:
        rows = sims[i0 : i0 + c]
        for j0 in range(0, n_texts, width):
            if lay.order is None:
                yield j0, rows[:, j0 : j0 + width]
            else:
                yield j0, rows.index_select(1, lay.order[j0 : j0 + width])

    return _rank_pass(tiles, q, lay, n_images, chunk, width)


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
    width = _tile_cols(dev, n_texts)
    # The one chunk of scores the pass holds: GEMM output lands here, tile by tile.
    scores = torch.empty(min(chunk, n_images), width, dtype=dtype, device=dev)

    def tiles(i0: int, c: int) -> Iterator[tuple[int, Tensor]]:
        rows = img[i0 : i0 + c]
        local, cols, a, b = _own_entries(i0, c, lay)
        for j0 in range(0, n_texts, width):
            w = min(width, n_texts - j0)
            block = torch.mm(rows, txt[j0 : j0 + w].T, out=scores[:c, :w])
            if j0 < b and a < j0 + w:
                # Should a BLAS round differently by shape, this keeps both directions
                # ranking one well-defined matrix: the pass's, with positives set to q.
                inside = (cols + a >= j0) & (cols + a < j0 + w)
                block[local[inside], cols[inside] + a - j0] = q[a:b][inside]
            yield j0, block

    return _rank_pass(tiles, q, lay, n_images, chunk, width)


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
    if chunk_size is None and dev.type == "cpu":
        chunk = _CPU_WHOLE_ROW_CHUNK
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
