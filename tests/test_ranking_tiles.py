"""harness.eval.ranking's fused pass: exact ranks whatever the column tile, and tiles reused.

The pass counts what ranks ahead of each positive tile by tile (a chunk of rows x a few
thousand columns on CPU). The default tile spans most test galleries whole, so these tests
shrink it until every tie rule (earlier/later gallery index, own span, unsorted captions)
straddles tile borders, and check against a sorting reference.
"""

from __future__ import annotations

import pytest
import torch

from harness.eval import ranking as R


def sorted_ranks(sims: torch.Tensor, txt2img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks from a stable descending argsort of every row and column (the slow reference)."""
    n_images, n_texts = sims.shape
    order = torch.argsort(sims, dim=1, descending=True, stable=True)
    place = torch.empty_like(order).scatter_(1, order, torch.arange(n_texts).expand(n_images, -1))
    i2t = torch.stack([place[i, txt2img == i].min() + 1 for i in range(n_images)])
    order_t = torch.argsort(sims.T, dim=1, descending=True, stable=True)
    place_t = torch.empty_like(order_t).scatter_(
        1, order_t, torch.arange(n_images).expand(n_texts, -1)
    )
    return i2t, place_t[torch.arange(n_texts), txt2img] + 1


def tied_problem(seed: int, n_images: int, shuffle: bool) -> tuple[torch.Tensor, ...]:
    """Coarse-grid embeddings (exact fp32 dot products, ties everywhere), 1-6 captions each."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 7, (n_images,), generator=g)
    txt2img = torch.repeat_interleave(torch.arange(n_images), counts)
    if shuffle:
        txt2img = txt2img[torch.randperm(txt2img.numel(), generator=g)]
    img = torch.randint(-2, 3, (n_images, 3), generator=g).float() / 4
    txt = torch.randint(-2, 3, (txt2img.numel(), 3), generator=g).float() / 4
    return img, txt, txt2img


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_every_tile_width_gives_the_sorting_reference(
    seed: int, shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    img, txt, txt2img = tied_problem(seed, n_images=23 + 5 * seed, shuffle=shuffle)
    sims = img @ txt.T
    want = sorted_ranks(sims, txt2img)
    for width in (1, 5, 13, 10_000):
        monkeypatch.setattr(R, "CPU_TILE_COLS", width)
        for chunk in (1, 4, 1000):
            got = R.retrieval_ranks(sims, txt2img, chunk_size=chunk)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (width, chunk)
            got = R.retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=chunk)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (width, chunk)


def test_ties_at_tile_borders_follow_gallery_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every score is equal: ranks are decided by gallery index alone, so a tie counted on
    # the wrong side of any tile or chunk border moves a rank.
    n_images, per_image = 7, 3
    txt2img = torch.arange(n_images).repeat_interleave(per_image)
    img, txt = torch.ones(n_images, 2), torch.ones(n_images * per_image, 2)
    want_i2t = torch.arange(n_images) * per_image + 1  # its first caption, behind all earlier
    want_t2i = txt2img + 1  # its image, behind every earlier image
    for width in (1, 2, 4, 5, 21):
        monkeypatch.setattr(R, "CPU_TILE_COLS", width)
        for chunk in (1, 2, 3, 7):
            for got in (R.retrieval_ranks(img @ txt.T, txt2img, chunk_size=chunk),
                        R.retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=chunk)):
                assert torch.equal(got[0], want_i2t), (width, chunk, got[0])
                assert torch.equal(got[1], want_t2i), (width, chunk, got[1])


def test_embedding_path_holds_one_tile_of_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory beyond the inputs is one chunk x tile of scores (and its count buffer): no GEMM
    # may produce more than that, whatever the gallery size.
    img, txt, txt2img = tied_problem(4, n_images=40, shuffle=False)
    monkeypatch.setattr(R, "CPU_TILE_COLS", 16)
    largest = []
    real_mm = torch.mm

    def watching_mm(a: torch.Tensor, b: torch.Tensor, **kw: object) -> torch.Tensor:
        largest.append(a.shape[0] * b.shape[1])
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", watching_mm)
    R.retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=8)
    assert largest and max(largest) <= 8 * 16
