"""harness.eval.retrieval and .ranking: hand cases, a sorting reference, folds, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from harness.eval import ranking as R
from harness.eval.retrieval import (
    coco_1k_metrics,
    metrics_from_ranks,
    multi_positive_ranks,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
    summarize_ranks,
)

CONTRACT_KEYS = [
    "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
    "rsum", "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr",
]  # fmt: skip


# ------------------------------------------------------------------------------ helpers


def reference_ranks(sims: torch.Tensor, txt2img: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Ranks the slow, obvious way: a stable descending argsort of every query row."""
    n_images, n_texts = sims.shape
    order = torch.argsort(sims, dim=1, descending=True, stable=True)
    place = torch.empty_like(order).scatter_(1, order, torch.arange(n_texts).expand(n_images, -1))
    i2t = torch.tensor(
        [int(place[i, txt2img == i].min()) + 1 for i in range(n_images)], dtype=torch.long
    )
    order_t = torch.argsort(sims.T, dim=1, descending=True, stable=True)
    place_t = torch.empty_like(order_t).scatter_(
        1, order_t, torch.arange(n_images).expand(n_texts, -1)
    )
    t2i = place_t[torch.arange(n_texts), txt2img] + 1
    return i2t, t2i


def quantised_problem(
    seed: int, n_images: int, max_caps: int = 7, dim: int = 4, shuffle: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings on a coarse grid: dot products are exact in fp32 and ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_caps + 1, (n_images,), generator=g)
    txt2img = torch.repeat_interleave(torch.arange(n_images), counts)
    if shuffle:
        txt2img = txt2img[torch.randperm(txt2img.numel(), generator=g)]
    img = torch.randint(-2, 3, (n_images, dim), generator=g).float() / 4
    txt = torch.randint(-2, 3, (txt2img.numel(), dim), generator=g).float() / 4
    return img, txt, txt2img


def assert_ranks_equal(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert torch.equal(got[0], want[0]), (got[0], want[0])
    assert torch.equal(got[1], want[1]), (got[1], want[1])


# --------------------------------------------------------------------------- hand cases


def test_two_images_with_ties_in_both_directions() -> None:
    sims = torch.tensor([[0.875, 0.5, 0.875], [0.875, 0.875, 0.5]])
    txt2img = torch.tensor([0, 1, 1])
    # img0: caption 0 (0.875) ties caption 2 but has the lower index -> 1.
    # img1: best caption 1 (0.875) ties caption 0, which has a lower index -> 2.
    # t0: its image 0 ties image 1 and is lower -> 1; t1: 0.875 beats 0.5 -> 1;
    # t2: image 0 scores 0.875 > 0.5 -> 2.
    assert_ranks_equal(
        retrieval_ranks(sims, txt2img), (torch.tensor([1, 2]), torch.tensor([1, 1, 2]))
    )


def test_seven_captions_per_image() -> None:
    txt2img = torch.tensor([0] * 7 + [1] * 7)
    sims = torch.tensor([[0.5] * 7 + [0.875] + [0.0] * 6, [0.25] * 14])
    # img0: its captions score 0.5, beaten only by caption 7 -> 2.
    # img1: all 14 tie at 0.25; its first caption is 7, so captions 0..6 go ahead -> 8.
    # t2i: captions 0..6 -> 1; caption 7: image 0 scores 0.875 > 0.25 -> 2; 8..13 -> 1.
    i2t, t2i = retrieval_ranks(sims, txt2img)
    assert i2t.tolist() == [2, 8]
    assert t2i.tolist() == [1] * 7 + [2] + [1] * 6
    m = retrieval_metrics(sims, txt2img)
    assert list(m) == CONTRACT_KEYS
    assert (m["i2t_R@1"], m["i2t_R@5"], m["i2t_R@10"]) == (0.0, 50.0, 100.0)
    assert m["t2i_R@1"] == pytest.approx(100 * 13 / 14)
    assert (m["t2i_R@5"], m["t2i_R@10"]) == (100.0, 100.0)
    assert m["rsum"] == pytest.approx(0 + 50 + 100 + 100 * 13 / 14 + 100 + 100)
    assert (m["i2t_medr"], m["i2t_meanr"]) == (5.0, 5.0)
    assert (m["t2i_medr"], m["t2i_meanr"]) == (1.0, pytest.approx(15 / 14))


def test_five_captions_per_image_interleaved() -> None:
    txt2img = torch.tensor([0, 1] * 5)
    sims = torch.tensor(
        [
            [0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.25, 0.75],
            [1.0, 0.5, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        ]
    )
    # img0: best positive is caption 8 (0.25); captions 1, 3, 5, 7, 9 score higher -> 6.
    # img1: best positives tie at 0.5, first is caption 1; caption 0 (1.0) is above -> 2.
    # t2i: every caption has the other image strictly above it or tied with a lower index
    # (odd captions: 0.5 vs 0.5, image 0 first) -> 2, except caption 2, whose own image 0
    # ties image 1 at 0.0 and comes first -> 1.
    i2t, t2i = retrieval_ranks(sims, txt2img)
    assert i2t.tolist() == [6, 2]
    assert t2i.tolist() == [2, 2, 1, 2, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("shuffle", [False, True])
def test_caption_counts_one_to_seven_all_tied(shuffle: bool) -> None:
    counts = torch.arange(1, 8)
    txt2img = torch.repeat_interleave(torch.arange(7), counts)
    if shuffle:
        txt2img = txt2img[torch.randperm(28, generator=torch.Generator().manual_seed(3))]
    sims = torch.full((7, 28), 0.5)
    # With every score equal, order is by index: an image ranks at its first caption's
    # index + 1, a caption at its image's index + 1.
    first = [int((txt2img == i).nonzero()[0]) + 1 for i in range(7)]
    if not shuffle:
        assert first == [1, 2, 4, 7, 11, 16, 22]
    for chunk in (1, 3, 512):
        i2t, t2i = retrieval_ranks(sims, txt2img, chunk_size=chunk)
        assert i2t.tolist() == first
        assert torch.equal(t2i, txt2img + 1)


def test_summarize_ranks_hand_values() -> None:
    s = summarize_ranks(torch.tensor([1, 2, 3, 10]), ks=(1, 5), prefix="x_")
    assert s == {"x_R@1": 25.0, "x_R@5": 75.0, "x_medr": 2.5, "x_meanr": 4.0}
    assert summarize_ranks(torch.tensor([3, 1, 2]), ks=(2,))["medr"] == 2.0


def test_metrics_keys_follow_ks() -> None:
    i2t, t2i = torch.tensor([1, 4]), torch.tensor([2, 1, 1])
    m = metrics_from_ranks(i2t, t2i, ks=(1, 3))
    assert list(m) == [
        "i2t_R@1", "i2t_R@3", "t2i_R@1", "t2i_R@3",
        "rsum", "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr",
    ]  # fmt: skip
    assert m["rsum"] == pytest.approx(50 + 50 + 100 * 2 / 3 + 100)


# ------------------------------------------------------------ chunked vs naive reference


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shuffle", [False, True])
def test_chunked_matches_argsort_reference(seed: int, shuffle: bool) -> None:
    img, txt, txt2img = quantised_problem(seed, n_images=17 + 9 * seed, shuffle=shuffle)
    sims = img @ txt.T
    want = reference_ranks(sims, txt2img)
    for chunk in (1, 3, 16, 1000):
        assert_ranks_equal(retrieval_ranks(sims, txt2img, chunk_size=chunk), want)
        got = retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=chunk, device="cpu")
        assert_ranks_equal(got, want)


def test_default_chunk_size_depends_on_device() -> None:
    assert R.default_chunk_size("cpu") == R.CPU_CHUNK_SIZE
    assert R.default_chunk_size("cuda:0") == R.GPU_CHUNK_SIZE
    img, txt, txt2img = quantised_problem(9, n_images=R.CPU_CHUNK_SIZE + 37)
    want = reference_ranks(img @ txt.T, txt2img)  # the default spans two chunks here
    assert_ranks_equal(retrieval_ranks_from_embeddings(img, txt, txt2img), want)


def test_matrix_and_embedding_paths_give_identical_metrics() -> None:
    img, txt, txt2img = quantised_problem(11, n_images=60)
    a = retrieval_metrics(img @ txt.T, txt2img, chunk_size=7)
    b = retrieval_metrics_from_embeddings(img, txt, txt2img, chunk_size=13)
    assert a == b
    assert list(a) == CONTRACT_KEYS


def test_real_valued_embeddings_match_reference() -> None:
    g = torch.Generator().manual_seed(5)
    img = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(260, 16, generator=g), dim=1)
    txt2img = torch.cat([torch.arange(50).repeat_interleave(5), torch.arange(10)])
    want = reference_ranks(img @ txt.T, txt2img)
    assert_ranks_equal(retrieval_ranks(img @ txt.T, txt2img, chunk_size=8), want)
    # Double-precision sims are compared as given.
    assert_ranks_equal(retrieval_ranks((img @ txt.T).double(), txt2img), want)
    # One chunk is the full GEMM, so the embedding path must match it exactly.
    assert_ranks_equal(retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=64), want)


def test_embedding_path_ranks_one_matrix_if_blas_rounds_by_shape(monkeypatch) -> None:
    img, txt, txt2img = quantised_problem(6, n_images=30)
    exact = R._positive_scores

    def one_ulp_up(*args):  # as if the positives' GEMM had rounded differently
        q = exact(*args)
        return torch.nextafter(q, torch.full_like(q, math.inf))

    monkeypatch.setattr(R, "_positive_scores", one_ulp_up)
    sims = img @ txt.T
    cols = torch.arange(txt2img.numel())
    sims[txt2img, cols] = torch.nextafter(sims[txt2img, cols], torch.tensor(math.inf))
    want = reference_ranks(sims, txt2img)
    for chunk in (4, 1000):
        assert_ranks_equal(retrieval_ranks_from_embeddings(img, txt, txt2img, chunk), want)


def fp16_rounding_problem(
    seed: int, n_images: int = 30, per_image: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp16 embeddings whose dot products are exact in fp32 but not in fp16.

    Entries are 1 + a/1024 (two dims) and b/2048 (two dims), a, b in 0..3: every product and
    sum needs at most 22 mantissa bits (exact in fp32), while fp16 keeps 11, so near-equal
    scores collapse into ties, and ranks change, when the GEMM runs in fp16.
    """
    g = torch.Generator().manual_seed(seed)
    txt2img = torch.arange(n_images).repeat_interleave(per_image)

    def embeddings(n: int) -> torch.Tensor:
        big = 1 + torch.randint(0, 4, (n, 2), generator=g) * 2.0**-10
        small = torch.randint(0, 4, (n, 2), generator=g) * 2.0**-11
        return torch.cat([big, small], 1).half()

    return embeddings(n_images), embeddings(n_images * per_image), txt2img


def test_half_precision_embeddings_are_scored_in_fp32() -> None:
    img, txt, txt2img = fp16_rounding_problem(0)
    want = reference_ranks(img.double() @ txt.double().T, txt2img)
    assert_ranks_equal(reference_ranks(img.float() @ txt.float().T, txt2img), want)
    # The inputs discriminate: scored in fp16, many ranks differ from the exact ones.
    in_fp16 = reference_ranks((img @ txt.T).float(), txt2img)
    assert not torch.equal(in_fp16[0], want[0]) and not torch.equal(in_fp16[1], want[1])
    assert_ranks_equal(retrieval_ranks_from_embeddings(img, txt, txt2img, chunk_size=7), want)
    # bfloat16 keeps 8 bits: its own rounded values, scored exactly, are the reference.
    img_b, txt_b = img.bfloat16(), txt.bfloat16()
    assert_ranks_equal(retrieval_ranks_from_embeddings(img_b, txt_b, txt2img),
                       reference_ranks(img_b.double() @ txt_b.double().T, txt2img))
    # Caption-to-caption ranking upcasts the same way.
    groups = txt2img
    exact = multi_positive_ranks(txt.double(), txt.double(), groups, groups, True, 16)
    assert torch.equal(multi_positive_ranks(txt, txt, groups, groups, True, 16), exact)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_reference() -> None:
    for seed, shuffle in ((0, False), (1, True)):
        img, txt, txt2img = quantised_problem(seed, n_images=300, shuffle=shuffle)
        want = reference_ranks(img @ txt.T, txt2img)
        for chunk in (7, 128, 1000):
            got = retrieval_ranks_from_embeddings(img, txt, txt2img, chunk, device="cuda")
            assert_ranks_equal(got, want)
            assert_ranks_equal(retrieval_ranks((img @ txt.T).cuda(), txt2img, chunk), want)
        pairs = torch.arange(txt.shape[0]) // 2
        pairs[-1] = pairs[-2]  # every caption has a partner, whatever the count
        on_gpu = multi_positive_ranks(txt.cuda(), txt.cuda(), pairs, pairs, True, 64)
        assert torch.equal(on_gpu, multi_positive_ranks(txt, txt, pairs, pairs, True, 64))


# ---------------------------------------------------------------------- unimodal helper


def test_caption_to_caption_excludes_the_query() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    group = torch.tensor([0, 0, 1, 1])
    # q0: positive c1 scores 0, c2 scores 1 -> 2.  q1: positive c0 (0), c3 (1) above -> 2.
    # q2: positive c3 (0, index 3); c0 (1) above and c1 ties with a lower index -> 3.
    # q3: positive c2 (0, index 2); c1 (1) above and c0 ties lower -> 3.
    ranks = multi_positive_ranks(emb, emb, group, group, exclude_self=True, chunk_size=3)
    assert ranks.tolist() == [2, 2, 3, 3]
    # Kept in the gallery, each query is its own best positive (score 1), but q2 and q3
    # tie with an identical, lower-index caption of the other group -> 2.
    assert multi_positive_ranks(emb, emb, group, group).tolist() == [1, 1, 2, 2]
    assert multi_positive_ranks(emb, emb, group, group).dtype == torch.long


def test_image_to_image_by_scene_and_cross_modal_agreement() -> None:
    img, txt, txt2img = quantised_problem(4, n_images=40)
    scenes = torch.arange(40) // 4 * 100  # group ids need not be 0..n-1
    got = multi_positive_ranks(img, img, scenes, scenes, exclude_self=True, chunk_size=9)
    sims = img @ img.T
    sims.fill_diagonal_(float("-inf"))
    want = [
        min(
            int((sims[i] > sims[i, j]).sum()) + int((sims[i, :j] == sims[i, j]).sum()) + 1
            for j in range(40)
            if j != i and scenes[j] == scenes[i]
        )
        for i in range(40)
    ]
    assert got.tolist() == want
    i2t, t2i = retrieval_ranks_from_embeddings(img, txt, txt2img)
    assert torch.equal(multi_positive_ranks(img, txt, torch.arange(40), txt2img), i2t)
    assert torch.equal(multi_positive_ranks(txt, img, txt2img, torch.arange(40)), t2i)


# ---------------------------------------------------------------------------- COCO 1K


def test_coco_1k_is_mean_over_manual_folds() -> None:
    img, txt, txt2img = quantised_problem(8, n_images=20, shuffle=True)
    got = coco_1k_metrics(img, txt, txt2img, n_folds=5, ks=(1, 2, 5), chunk_size=3)
    folds = []
    for f in range(5):
        keep = (txt2img // 4) == f
        sims = img[4 * f : 4 * f + 4] @ txt[keep].T
        local = txt2img[keep] - 4 * f
        folds.append(metrics_from_ranks(*reference_ranks(sims, local), ks=(1, 2, 5)))
    assert list(got) == list(folds[0])
    for key in got:
        assert got[key] == pytest.approx(sum(m[key] for m in folds) / 5)
    full = retrieval_metrics_from_embeddings(img, txt, txt2img)
    assert coco_1k_metrics(img, txt, txt2img, n_folds=1) == full


# -------------------------------------------------------------------------- bad input


def _good() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    img = torch.eye(3, 4)
    txt = torch.eye(4)[[0, 0, 1, 2, 2]]
    return img, txt, torch.tensor([0, 0, 1, 2, 2])


BAD_SIMS = {
    "1-D sims": (torch.zeros(5), torch.tensor([0, 0, 1, 2, 2]), "2-D"),
    "int sims": (torch.zeros(3, 5, dtype=torch.long), torch.tensor([0, 0, 1, 2, 2]), "floating"),
    "empty sims": (torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), "empty"),
    "no texts": (torch.zeros(3, 0), torch.zeros(0, dtype=torch.long), "empty"),
    "length mismatch": (torch.zeros(3, 5), torch.tensor([0, 1, 2]), "5 texts"),
    "2-D txt2img": (torch.zeros(3, 4), torch.tensor([[0, 1], [2, 2]]), "1-D"),
    "float txt2img": (torch.zeros(3, 3), torch.tensor([0.0, 1.0, 2.0]), "integer"),
    "bool txt2img": (torch.zeros(2, 2), torch.tensor([False, True]), "integer"),
    "negative index": (torch.zeros(3, 3), torch.tensor([0, -1, 2]), r"txt2img\[1\] = -1"),
    "index too big": (torch.zeros(3, 3), torch.tensor([0, 1, 3]), r"txt2img\[2\] = 3"),
    "image without caption": (torch.zeros(3, 3), torch.tensor([0, 2, 2]), "image 1 has no"),
    "nan sims": (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.tensor([0, 1]), "NaN"),
    "inf sims": (torch.tensor([[0.0, 0.0], [float("inf"), 0.0]]), torch.tensor([0, 1]), "row 1"),
}


@pytest.mark.parametrize("name", list(BAD_SIMS))
def test_bad_sims_input_is_rejected_before_ranking(name: str, monkeypatch) -> None:
    sims, txt2img, message = BAD_SIMS[name]
    monkeypatch.setattr(R, "_rank_pass", _must_not_run)
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sims, txt2img)


def _must_not_run(*args, **kwargs):
    raise AssertionError("ranking started before the input was validated")


def _bad_embeddings() -> dict[str, tuple[tuple, dict, str]]:
    img, txt, t2i = _good()
    nan_img = img.clone()
    nan_img[1, 2] = float("nan")
    inf_txt = txt.clone()
    inf_txt[3, 0] = float("-inf")
    return {
        "dim mismatch": ((img, txt[:, :3], t2i), {}, "dims differ"),
        "empty images": ((img[:0], txt, t2i), {}, "empty"),
        "zero dim": ((img[:, :0], txt[:, :0], t2i), {}, "empty"),
        "nan image": ((nan_img, txt, t2i), {}, "img_emb has NaN"),
        "inf text": ((img, inf_txt, t2i), {}, "txt_emb has NaN or inf values .first in row 3"),
        "overflow": ((img * 1e20, txt * 1e20, t2i), {}, "overflow"),
        "txt2img short": ((img, txt, t2i[:4]), {}, "4 entries"),
        "missing image": ((img, txt, torch.tensor([0, 0, 0, 2, 2])), {}, "image 1 has no"),
        "zero k": ((img, txt, t2i), {"ks": (0, 5)}, "positive"),
        "negative k": ((img, txt, t2i), {"ks": (-1,)}, "positive"),
        "float k": ((img, txt, t2i), {"ks": (1.5,)}, "positive"),
        "no ks": ((img, txt, t2i), {"ks": ()}, "empty"),
        "duplicate ks": ((img, txt, t2i), {"ks": (1, 1)}, "duplicates"),
        "zero chunk": ((img, txt, t2i), {"chunk_size": 0}, "chunk_size"),
    }


@pytest.mark.parametrize("name", list(_bad_embeddings()))
def test_bad_embedding_input_is_rejected_before_ranking(name: str, monkeypatch) -> None:
    args, kwargs, message = _bad_embeddings()[name]
    monkeypatch.setattr(R, "_rank_pass", _must_not_run)
    with pytest.raises(ValueError, match=message):
        retrieval_metrics_from_embeddings(*args, **kwargs)


def test_bad_ks_rejected_for_matrix_input() -> None:
    sims, t2i = torch.zeros(3, 5), _good()[2]
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics(sims, t2i, ks=(1, 0))


def test_bad_folds_are_rejected() -> None:
    img, txt, t2i = _good()
    with pytest.raises(ValueError, match="3 images do not split into 2"):
        coco_1k_metrics(img, txt, t2i, n_folds=2)
    with pytest.raises(ValueError, match="n_folds"):
        coco_1k_metrics(img, txt, t2i, n_folds=0)


def test_unimodal_bad_input() -> None:
    emb = torch.eye(3)
    with pytest.raises(ValueError, match="query 2 .group 9. has no positive"):
        multi_positive_ranks(emb, emb, torch.tensor([5, 5, 9]), torch.tensor([5, 5, 9]), True)
    # Without exclusion the query itself is a positive, so the same groups are fine.
    assert multi_positive_ranks(emb, emb, torch.tensor([5, 5, 9]), torch.tensor([5, 5, 9]))[2] == 1
    with pytest.raises(ValueError, match="exclude_self"):
        multi_positive_ranks(emb, emb[:2], torch.tensor([0, 0, 1]), torch.tensor([0, 0]), True)
    with pytest.raises(ValueError, match="gallery_group has 2 entries"):
        multi_positive_ranks(emb, emb, torch.tensor([0, 0, 1]), torch.tensor([0, 1]))


def test_summarize_rejects_empty_ranks() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize_ranks(torch.tensor([], dtype=torch.long))
    assert math.isclose(summarize_ranks(torch.tensor([4]))["meanr"], 4.0)


# ------------------------------------------------------- errors name the argument at fault


def test_errors_name_the_argument_at_fault() -> None:
    img, txt, txt2img = quantised_problem(5, n_images=10)
    bad_img, bad_txt = img.clone(), txt.clone()
    bad_img[3, 0], bad_txt[2, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^img_emb has NaN or inf values \(first in row 3\)"):
        coco_1k_metrics(bad_img, txt, txt2img)
    with pytest.raises(ValueError, match=r"^txt_emb has NaN or inf values \(first in row 2\)"):
        coco_1k_metrics(img, bad_txt, txt2img)
    groups = txt2img
    with pytest.raises(ValueError, match=r"^query_emb has NaN"):
        multi_positive_ranks(torch.full_like(txt, float("nan")), txt, groups, groups)
    with pytest.raises(ValueError, match=r"^gallery_emb has NaN or inf values \(first in row 2"):
        multi_positive_ranks(txt, bad_txt, groups, groups)
    with pytest.raises(ValueError, match=r"^query_group has 3 entries but there are \d+ queries$"):
        multi_positive_ranks(txt, txt, groups[:3], groups)
    with pytest.raises(ValueError, match=r"^gallery_group must be an integer tensor"):
        multi_positive_ranks(txt, txt, groups, groups.float())
    for n_folds in (True, 2.0, -5):
        with pytest.raises(ValueError, match=r"^n_folds must be a positive integer"):
            coco_1k_metrics(img, txt, txt2img, n_folds=n_folds)


def test_coco_1k_defaults_to_five_folds() -> None:
    img, txt, txt2img = quantised_problem(6, n_images=10, shuffle=False)
    assert coco_1k_metrics(img, txt, txt2img) == coco_1k_metrics(img, txt, txt2img, n_folds=5)
    twelve = quantised_problem(6, n_images=12, shuffle=False)
    with pytest.raises(ValueError, match="12 images do not split into 5 equal folds"):
        coco_1k_metrics(*twelve)


def test_query_group_missing_from_the_gallery_is_a_clear_error() -> None:
    emb = torch.eye(3)
    # The largest group id (9) appears only among the queries.
    with pytest.raises(ValueError, match=r"query 2 \(group 9\) has no positive in the gallery"):
        multi_positive_ranks(emb, emb, torch.tensor([0, 1, 9]), torch.tensor([0, 1, 1]))


def test_public_functions_pass_ks_chunk_size_and_device_through() -> None:
    img, txt, txt2img = quantised_problem(7, n_images=10, shuffle=False)
    sims = img @ txt.T
    calls = {
        "retrieval_metrics": lambda **kw: retrieval_metrics(sims, txt2img, **kw),
        "from_embeddings": lambda **kw: retrieval_metrics_from_embeddings(img, txt, txt2img, **kw),
        "coco_1k": lambda **kw: coco_1k_metrics(img, txt, txt2img, **kw),
    }
    for name, call in calls.items():
        assert {k for k in call(ks=(1, 3)) if "R@" in k} == {
            "i2t_R@1", "i2t_R@3", "t2i_R@1", "t2i_R@3"}, name
        # An invalid chunk size or device reaches the ranking and is refused there.
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            call(chunk_size=0)
        if name != "retrieval_metrics":  # ranking a given matrix stays on its device
            with pytest.raises(RuntimeError, match="bogus"):
                call(device="bogus")


def test_summary_messages_and_odd_median() -> None:
    with pytest.raises(ValueError, match=r"^ks is empty: give at least one K for recall@K$"):
        summarize_ranks(torch.tensor([1]), ks=())
    with pytest.raises(ValueError, match=r"^ranks is empty$"):
        summarize_ranks(torch.tensor([], dtype=torch.long))
    # Five distinct ranks: the median is the third smallest, 3.
    assert summarize_ranks(torch.tensor([10, 1, 4, 2, 3]), ks=(1,))["medr"] == 3.0


def test_rank_dtypes_messages_and_self_exclusion_across_chunks() -> None:
    img, txt, txt2img = quantised_problem(8, n_images=12)
    for ranks in (retrieval_ranks(img @ txt.T, txt2img, 5),
                  retrieval_ranks_from_embeddings(img, txt, txt2img, 5)):
        assert ranks[0].dtype == ranks[1].dtype == torch.long
    with pytest.raises(ValueError, match=r"^txt2img has 2 entries but there are \d+ texts$"):
        retrieval_ranks(img @ txt.T, txt2img[:2])
    lonely = torch.zeros(txt.shape[0], dtype=torch.long)  # every caption on image 0
    with pytest.raises(ValueError, match=r"^image 1 has no caption \(11 images without one\); "
                                         r"every image needs at least one positive text$"):
        retrieval_ranks(img @ txt.T, lonely)
    with pytest.raises(ValueError, match=r"^gallery_group has 2 entries but there are \d+ "
                                         r"gallery items$"):
        multi_positive_ranks(txt, txt, txt2img, txt2img[:2])
    # Leaving out each query's own entry must hit the same column in every chunk.
    pairs = torch.arange(txt.shape[0]) // 2
    pairs[-1] = pairs[-2]  # every caption has a partner, whatever the count
    whole = multi_positive_ranks(txt, txt, pairs, pairs, True, 10_000)
    for chunk in (1, 2, 7):
        assert torch.equal(multi_positive_ranks(txt, txt, pairs, pairs, True, chunk), whole)
    # Six items, chunks of 4: in the second chunk (rows 4, 5) the only partners are columns
    # 2 and 3, so a self column computed wrongly there would drop the one positive.
    groups = torch.tensor([0, 0, 1, 2, 1, 2])
    emb = torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator()
                                                    .manual_seed(0)), dim=-1)
    assert torch.equal(multi_positive_ranks(emb, emb, groups, groups, True, 4),
                       multi_positive_ranks(emb, emb, groups, groups, True, 6))
