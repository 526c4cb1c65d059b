"""Ranking claims the mutation runs found untested (see docs/testing.md, "Mutation testing")."""

from __future__ import annotations

import pytest
import torch

from harness.eval.ranking import retrieval_ranks_from_embeddings


def test_double_precision_embeddings_are_ranked_in_double_precision() -> None:
    # Caption 1 beats image 0's own caption by 1e-12: a difference float32 rounds away
    # (a tie, which the lower index would win).
    img = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0], [1.0 + 1e-12]], dtype=torch.float64)
    i2t, t2i = retrieval_ranks_from_embeddings(img, txt, torch.tensor([0, 1]))
    assert i2t.tolist() == [2, 2] and t2i.tolist() == [1, 2]
    i2t32, _ = retrieval_ranks_from_embeddings(img.float(), txt.float(), torch.tensor([0, 1]))
    assert i2t32.tolist() == [1, 2]


def test_embeddings_whose_dot_products_overflow_fp32_are_refused() -> None:
    # Each product 1e19 * 1e19 = 1e38 fits in fp32 (max 3.4e38); four of them summed do not.
    img = torch.full((2, 4), 1e19)
    txt = torch.full((2, 4), 1e19)
    with pytest.raises(ValueError) as err:
        retrieval_ranks_from_embeddings(img, txt, torch.tensor([0, 1]))
    assert str(err.value) == "img_emb and txt_emb are too large: fp32 dot products overflow"
    # One dimension of the same size stays below the bound and is ranked.
    i2t, _ = retrieval_ranks_from_embeddings(img[:, :1], txt[:, :1], torch.tensor([0, 1]))
    assert i2t.tolist() == [1, 2]


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_both_directions_rank_one_matrix_when_the_positives_gemm_rounds_differently(
        chunk_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.eval.ranking as ranking
    from harness.eval.ranking import retrieval_ranks

    # Small integers: every GEMM is exact, so equal scores are real ties. Then make the
    # positives' own GEMM "round" one ulp lower than the pass's tiles, as a BLAS that picks
    # another kernel for another shape may do. The ranks must be those of the one matrix the
    # pass claims to rank: the scores with every positive replaced by its lowered value.
    g = torch.Generator().manual_seed(0)
    img = torch.randint(-2, 3, (7, 4), generator=g).float()
    txt = torch.randint(-2, 3, (20, 4), generator=g).float()
    txt2img = torch.arange(20) % 7
    exact = ranking._positive_scores

    def lowered(*args: object) -> torch.Tensor:
        q = exact(*args)
        return torch.nextafter(q, torch.full_like(q, -float("inf")))

    monkeypatch.setattr(ranking, "_positive_scores", lowered)
    got = retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=chunk_size)
    sims = img @ txt.T
    own = sims[txt2img, torch.arange(20)]
    sims[txt2img, torch.arange(20)] = torch.nextafter(own, torch.full_like(own, -float("inf")))
    want = retrieval_ranks(sims, txt2img)
    assert [r.tolist() for r in got] == [r.tolist() for r in want]
