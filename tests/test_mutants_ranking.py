"""Ranking claims the mutation runs found untested (see docs/testing.md, "Mutation testing")."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_retrieval import quantised_problem, reference_ranks

from harness.eval.ranking import (
    multi_positive_ranks,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)

FP32_MAX = torch.finfo(torch.float32).max


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


@pytest.mark.parametrize("chunk_size", [True, 2.5, "3", 0, -1])
def test_a_chunk_size_that_is_not_a_positive_integer_is_refused_by_every_ranking(
        chunk_size: object) -> None:
    img, txt, txt2img = quantised_problem(3, n_images=6)
    calls = [lambda: retrieval_ranks(img @ txt.T, txt2img, chunk_size),
             lambda: retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size),
             lambda: multi_positive_ranks(txt, txt, txt2img, txt2img, chunk_size=chunk_size)]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == f"chunk_size must be a positive integer, got {chunk_size!r}"


def test_the_overflow_bound_counts_large_negative_values() -> None:
    img = torch.full((2, 4), -1e19)
    txt = torch.full((2, 4), 1e19)
    for a, b in ((img, txt), (txt, img)):
        with pytest.raises(ValueError) as err:
            retrieval_ranks_from_embeddings(a, b, torch.tensor([0, 1]))
        assert str(err.value) == ("img_emb and txt_emb are too large: fp32 dot products "
                                  "overflow")


def test_the_overflow_bound_takes_the_largest_value_of_every_check_block() -> None:
    # More rows than one block of the finiteness check (8192): the large row is in the first.
    queries = torch.ones(8193, 4)
    queries[0] = 1e19
    gallery = torch.full((2, 4), 1e19)
    with pytest.raises(ValueError) as err:
        multi_positive_ranks(queries, gallery, torch.zeros(8193, dtype=torch.long),
                             torch.tensor([0, 1]))
    assert str(err.value) == ("query_emb and gallery_emb are too large: fp32 dot products "
                              "overflow")


def test_small_embeddings_against_large_ones_that_fit_fp32_are_ranked() -> None:
    # |img| < 1: the products (2e38) stay below fp32's max (3.4e38) and must be ranked.
    img = torch.tensor([[0.5] * 4, [-0.5] * 4])
    txt = torch.tensor([[1e38] * 4, [-1e38] * 4])
    i2t, t2i = retrieval_ranks_from_embeddings(img, txt, torch.tensor([0, 1]))
    assert i2t.tolist() == [1, 1] and t2i.tolist() == [1, 1]


def test_the_overflow_guard_refuses_from_a_bound_of_exactly_fp32_max_on() -> None:
    one = torch.ones(1, 1)
    with pytest.raises(ValueError, match="too large: fp32 dot products overflow"):
        retrieval_ranks_from_embeddings(torch.full((1, 1), FP32_MAX), one, torch.tensor([0]))
    below = torch.full((1, 1), FP32_MAX / 2)
    assert retrieval_ranks_from_embeddings(below, one, torch.tensor([0]))[0].tolist() == [1]


def test_nan_beyond_the_first_check_block_is_found_and_named_by_its_row() -> None:
    queries = torch.ones(8193, 2)
    queries[8192, 1] = float("nan")
    with pytest.raises(ValueError) as err:
        multi_positive_ranks(queries, torch.ones(2, 2), torch.zeros(8193, dtype=torch.long),
                             torch.tensor([0, 1]))
    assert str(err.value) == "query_emb has NaN or inf values (first in row 8192)"


def test_a_similarity_matrix_wider_than_one_check_block_is_ranked() -> None:
    g = torch.Generator().manual_seed(0)
    sims = torch.randn(2, 8193, generator=g)
    txt2img = (torch.arange(8193) % 2 == 1).long()
    got = retrieval_ranks(sims, txt2img)
    want = reference_ranks(sims, txt2img)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_embeddings_of_different_widths_are_refused_naming_each() -> None:
    with pytest.raises(ValueError) as err:
        retrieval_ranks_from_embeddings(torch.ones(2, 4), torch.ones(2, 3), torch.tensor([0, 1]))
    assert str(err.value) == "embedding dims differ: img_emb has 4, txt_emb has 3"


def test_errors_about_the_similarity_matrix_name_it_sims() -> None:
    with pytest.raises(ValueError) as err:
        retrieval_ranks(torch.zeros(3), torch.tensor([0, 1, 2]))
    assert str(err.value) == "sims must be 2-D, got shape (3,)"
    with pytest.raises(ValueError) as err:
        retrieval_ranks(torch.tensor([[0.0, float("nan")]]), torch.tensor([0, 0]))
    assert str(err.value) == "sims has NaN or inf values (first in row 0)"


def test_unimodal_ranks_are_scored_on_the_device_they_are_given() -> None:
    _, txt, groups = quantised_problem(4, n_images=5)
    on_cpu = multi_positive_ranks(txt, txt, groups, groups, True, device="cpu")
    assert torch.equal(on_cpu, multi_positive_ranks(txt, txt, groups, groups, True))
    with pytest.raises(RuntimeError, match="bogus"):
        multi_positive_ranks(txt, txt, groups, groups, device="bogus")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_caption_and_group_ids_of_any_integer_dtype_rank_as_int64_ones(
        dtype: torch.dtype) -> None:
    for shuffle in (False, True):
        img, txt, txt2img = quantised_problem(5, n_images=9, shuffle=shuffle)
        small = txt2img.to(dtype)
        sims = img @ txt.T
        for got, want in ((retrieval_ranks(sims, small), retrieval_ranks(sims, txt2img)),
                          (retrieval_ranks_from_embeddings(img, txt, small, 4),
                           retrieval_ranks_from_embeddings(img, txt, txt2img, 4))):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert torch.equal(multi_positive_ranks(txt, txt, small, small, True),
                           multi_positive_ranks(txt, txt, txt2img, txt2img, True))


def test_ranking_a_gallery_of_several_tiles_in_several_row_chunks_warns_of_nothing() -> None:
    # 8193 captions: two CPU tiles, the last one column wide; chunks of 2 of the 5 images.
    # Every scratch view must have the shape of what is written into it (torch warns when it
    # resizes an output).
    g = torch.Generator().manual_seed(1)
    img = torch.randint(-2, 3, (5, 3), generator=g).float()
    txt = torch.randint(-2, 3, (8193, 3), generator=g).float()
    shuffled = torch.cat([torch.arange(5), torch.randint(0, 5, (8188,), generator=g)])
    shuffled = shuffled[torch.randperm(8193, generator=g)]
    for txt2img in (shuffled, shuffled.sort().values):
        want = reference_ranks(img @ txt.T, txt2img)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for got in (retrieval_ranks(img @ txt.T, txt2img, 2),
                        retrieval_ranks_from_embeddings(img, txt, txt2img, 2)):
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _count_buffer_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every count buffer the ranking allocates (its memory is rows x gallery)."""
    import harness.eval.ranking as ranking

    rows: list[int] = []
    allocate = ranking._count_buffer

    def spy(n_rows: int, cols: int, device: torch.device) -> torch.Tensor:
        rows.append(n_rows)
        return allocate(n_rows, cols, device)

    monkeypatch.setattr(ranking, "_count_buffer", spy)
    return rows


@pytest.mark.parametrize(("chunk_size", "held"), [(None, 256), (7, 7)])
def test_unimodal_ranking_on_the_cpu_holds_the_rows_it_is_told_or_256_whole_rows(
        chunk_size: int | None, held: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.eval.ranking import _CPU_WHOLE_ROW_CHUNK, multi_positive_ranks

    # Whole gallery rows per chunk bound the memory (docs/performance.md): 256 rows by default
    # on the CPU, not the 1024 of the tiled two-way pass, and exactly chunk_size when given.
    assert _CPU_WHOLE_ROW_CHUNK == 256
    rows = _count_buffer_rows(monkeypatch)
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(300, 4, generator=g), torch.randn(9, 4, generator=g)
    ranks = multi_positive_ranks(queries, gallery, torch.arange(300) % 9, torch.arange(9),
                                 chunk_size=chunk_size, device="cpu")
    assert rows == [held]
    assert ranks.shape == (300,) and int(ranks.min()) >= 1


def test_each_tile_of_the_two_way_pass_lands_in_one_preallocated_score_buffer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Extra memory is one tile of scores (docs/performance.md): every tile's GEMM writes into
    # the same buffer instead of allocating a fresh chunk x tile tensor.
    import harness.eval.ranking as ranking

    monkeypatch.setattr(ranking, "CPU_TILE_COLS", 5)
    outs: list[int | None] = []
    mm = torch.mm

    def spy(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        outs.append(None if out is None else out.untyped_storage().data_ptr())
        return mm(a, b, out=out) if out is not None else mm(a, b)

    monkeypatch.setattr(torch, "mm", spy)
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 4, generator=g), torch.randn(12, 4, generator=g)
    got = retrieval_ranks_from_embeddings(img, txt, torch.arange(12) % 7, chunk_size=3)
    monkeypatch.undo()
    want = retrieval_ranks_from_embeddings(img, txt, torch.arange(12) % 7, chunk_size=3)
    assert [r.tolist() for r in got] == [r.tolist() for r in want]
    assert len(outs) == 3 * 3  # 3 row chunks x 3 tiles of 5, 5 and 2 captions
    assert None not in outs and len(set(outs)) == 1
