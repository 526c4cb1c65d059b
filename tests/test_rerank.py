"""Cross-encoder retrieval: full scoring, top-k re-ranking, fusion, R@K cut-offs, pair budget."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from baselines.single_stream import build_single_stream
from harness.eval.pair_scoring import score_pair_list
from harness.eval.rerank import (
    PairBudgetError,
    cross_encoder_retrieval,
    reranked_ranks,
    stable_topk,
)
from harness.eval.retrieval import retrieval_metrics
from harness.interfaces import TokenFeatures

N_IMG, CAPS = 7, 3  # 7 images, 3 captions each (21 texts)
TXT2IMG = torch.arange(N_IMG).repeat_interleave(CAPS)


class DotCrossEncoder(nn.Module):
    """A cross-encoder whose pair score is a known function: <image vector, text vector>.

    Images are ``[N, D]`` vectors; a text is one token whose id indexes ``text_table``.
    Integer-valued vectors keep every score exact, so expected ranks are unambiguous.
    """

    def __init__(self, text_table: Tensor) -> None:
        super().__init__()
        self.text_table = nn.Parameter(text_table, requires_grad=False)
        self.forwards = 0

    def image_features(self, images: Tensor) -> TokenFeatures:
        return TokenFeatures(images[:, None, :], torch.ones(len(images), 1, dtype=torch.bool))

    def text_features(self, tokens) -> TokenFeatures:
        return TokenFeatures(self.text_table[tokens["input_ids"][:, 0]][:, None, :],
                             tokens["attention_mask"].bool())

    def score_pairs(self, image_features: TokenFeatures, text_features: TokenFeatures) -> Tensor:
        self.forwards += 1
        return (image_features.tokens[:, 0] * text_features.tokens[:, 0]).sum(-1)

    def losses(self, batch):  # pragma: no cover - protocol completeness
        raise NotImplementedError


def dot_setup(seed: int = 0) -> tuple[DotCrossEncoder, Tensor, dict[str, Tensor], Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(-4, 5, (N_IMG, 6), generator=g).float()
    table = torch.randint(-4, 5, (N_IMG * CAPS, 6), generator=g).float()
    tokens = {"input_ids": torch.arange(N_IMG * CAPS)[:, None],
              "attention_mask": torch.ones(N_IMG * CAPS, 1, dtype=torch.long)}
    return DotCrossEncoder(table), images, tokens, images @ table.T


def tiny_single_stream(head: bool = False):
    torch.manual_seed(0)
    cfg = {"image_size": 32, "contrastive_head": head, "text_max_len": 12, "itc": {"embed_dim": 8},
           "joint": {"name": "vit_tiny_patch16_224",
                     "kwargs": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1,
                                "num_heads": 2}}}
    model = build_single_stream(cfg, vocab_size=40).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(N_IMG, 3, 32, 32, generator=g)
    lengths = torch.randint(1, 9, (N_IMG * CAPS,), generator=g)
    ids = torch.zeros(N_IMG * CAPS, 11, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0], ids[row, n + 1] = 2, 3
        ids[row, 1 : n + 1] = torch.randint(5, 40, (n,), generator=g)
        mask[row, : n + 2] = 1
    return model, images, {"input_ids": ids, "attention_mask": mask}


def test_full_scoring_matches_pairwise_scores():
    model, images, tokens, sims = dot_setup()
    metrics, protocol, eff = cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="full",
                                                     batch_pairs=16, device="cpu")
    assert metrics == retrieval_metrics(sims, TXT2IMG)
    assert protocol["scoring"] == "full" and protocol["k_test"] is None
    assert protocol["first_stage"] is None and protocol["fusion"] == "itm"
    assert eff["pairs_scored"] == N_IMG * N_IMG * CAPS
    assert model.forwards == -(-eff["pairs_scored"] // 16)  # many pairs per forward


@pytest.mark.parametrize("head", [False, True])
def test_topk_with_k_equal_gallery_equals_full_scoring(head):
    model, images, tokens = tiny_single_stream(head)
    full, _, _ = cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="full",
                                         batch_pairs=32, device="cpu")
    # A first stage unrelated to the cross-encoder: with k = gallery, only its candidate set
    # matters, and that is everything.
    first = "self" if head else torch.randn(N_IMG, N_IMG * CAPS,
                                            generator=torch.Generator().manual_seed(3))
    topk, protocol, eff = cross_encoder_retrieval(
        model, images, tokens, TXT2IMG, mode="topk", k_test=N_IMG * CAPS, first_stage=first,
        batch_pairs=32, device="cpu")
    assert topk == full
    assert protocol["k_test"] == N_IMG * CAPS and protocol["fusion"] == "itm"
    assert protocol["first_stage"] == ("self:itc" if head else "given")
    assert eff["pairs_scored"] == N_IMG * N_IMG * CAPS  # each pair once, not once a direction


def test_first_stage_given_as_embeddings_or_name():
    model, images, tokens, sims = dot_setup()
    g = torch.Generator().manual_seed(5)
    img_e, txt_e = torch.randn(N_IMG, 4, generator=g), torch.randn(N_IMG * CAPS, 4, generator=g)
    a = cross_encoder_retrieval(model, images, tokens, TXT2IMG, k_test=4, device="cpu",
                                first_stage=(img_e, txt_e), first_stage_name="clip:run-1")
    b = cross_encoder_retrieval(model, images, tokens, TXT2IMG, k_test=4, device="cpu",
                                first_stage=img_e @ txt_e.T)
    assert a[0] == b[0] and a[1]["first_stage"] == "clip:run-1"


def test_fusion_modes():
    model, images, tokens, sims = dot_setup()
    g = torch.Generator().manual_seed(7)
    first = torch.randint(-6, 7, sims.shape, generator=g).float()
    kw = {"mode": "topk", "k_test": N_IMG * CAPS, "first_stage": first, "device": "cpu"}
    itm, p_itm, _ = cross_encoder_retrieval(model, images, tokens, TXT2IMG, fusion="itm", **kw)
    fused, p_fused, _ = cross_encoder_retrieval(model, images, tokens, TXT2IMG,
                                                fusion="itm+first_stage", **kw)
    assert itm == retrieval_metrics(sims, TXT2IMG)
    assert fused == retrieval_metrics(sims + first, TXT2IMG)
    assert itm != fused
    assert (p_itm["fusion"], p_fused["fusion"]) == ("itm", "itm+first_stage")
    with pytest.raises(ValueError, match="fusion"):
        cross_encoder_retrieval(model, images, tokens, TXT2IMG, fusion="sum", **kw)
    with pytest.raises(ValueError, match="needs mode='topk'"):
        cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="full",
                                fusion="itm+first_stage")
    with pytest.raises(ValueError, match="only used by mode='topk'"):
        cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="full", first_stage=first)


def test_recall_reported_only_up_to_k_test():
    model, images, tokens, sims = dot_setup()
    metrics, protocol, eff = cross_encoder_retrieval(
        model, images, tokens, TXT2IMG, k_test=5, first_stage=sims, ks=(1, 5, 10), device="cpu")
    assert {"i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"} <= set(metrics)
    assert "i2t_R@10" not in metrics and "t2i_R@10" not in metrics
    assert "rsum" not in metrics  # an rsum over fewer Ks is not the contract's rsum
    assert "i2t_meanr" not in metrics and "t2i_meanr" not in metrics
    assert protocol["k_test"] == 5
    assert eff["pairs_scored"] < N_IMG * N_IMG * CAPS
    # Here the first stage is the cross-encoder's own score, so re-ranking changes nothing.
    full = retrieval_metrics(sims, TXT2IMG)
    assert all(metrics[k] == full[k] for k in metrics)


def test_k_test_beyond_one_gallery_reports_that_direction_fully():
    model, images, tokens, sims = dot_setup()
    # k_test = 10 covers the 7 images (t2i complete) but not the 21 texts (i2t cut at 10).
    metrics, _, _ = cross_encoder_retrieval(model, images, tokens, TXT2IMG, k_test=10,
                                            first_stage=sims, ks=(1, 5, 10), device="cpu")
    assert "t2i_meanr" in metrics and "i2t_meanr" not in metrics
    assert "rsum" in metrics and metrics["rsum"] == pytest.approx(
        sum(v for k, v in metrics.items() if "R@" in k))


def test_candidates_outside_top_k_keep_first_stage_order():
    cand = torch.tensor([[4, 2, 9], [1, 0, 3]])
    scores = torch.tensor([[0.5, 0.9, 0.1], [1.0, 1.0, 2.0]])
    positive = torch.tensor([[False, False, True], [False, False, False]])
    ranks = reranked_ranks(cand, scores, positive, fallback=torch.tensor([1, 8]))
    # Row 0: its positive (9) is re-ranked last of 3. Row 1: no positive among candidates, so
    # its first-stage rank (8 > k) stands, below every re-ranked candidate.
    assert ranks.tolist() == [3, 8]
    tie = reranked_ranks(torch.tensor([[5, 3]]), torch.tensor([[1.0, 1.0]]),
                         torch.tensor([[True, False]]), torch.tensor([1]))
    assert tie.tolist() == [2]  # equal scores: lower gallery index (3) first


def test_stable_topk_breaks_ties_by_index():
    sims = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    assert stable_topk(sims, 3).tolist() == [[1, 2, 4], [0, 1, 2]]


def test_pair_budget_refuses_with_count_and_estimate():
    model, images, tokens, sims = dot_setup()
    with pytest.raises(PairBudgetError) as err:
        cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="full", max_pairs=100,
                                device="cpu")
    message = str(err.value)
    assert "147 pair forwards" in message and "max_pairs=100" in message
    assert "pairs/s" in message and "allow_over_budget=True" in message
    assert err.value.pairs == 147 and err.value.pairs_per_s > 0
    ok, _, _ = cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="full",
                                       max_pairs=100, allow_over_budget=True, device="cpu")
    assert ok == retrieval_metrics(sims, TXT2IMG)
    with pytest.raises(PairBudgetError, match="top-2 re-ranking"):
        cross_encoder_retrieval(model, images, tokens, TXT2IMG, k_test=2, first_stage=sims,
                                max_pairs=10, device="cpu")


def test_own_first_stage_needs_a_contrastive_head():
    model, images, tokens = tiny_single_stream(head=False)
    with pytest.raises(TypeError, match="contrastive head"):
        cross_encoder_retrieval(model, images, tokens, TXT2IMG, mode="topk", device="cpu")


def test_loader_and_caption_inputs():
    model, images, tokens, sims = dot_setup()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=3)

    def tokenize(captions):
        ids = torch.tensor([int(c) for c in captions])[:, None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    captions = [str(i) for i in range(N_IMG * CAPS)]
    metrics, _, _ = cross_encoder_retrieval(model, loader, captions, TXT2IMG, mode="full",
                                            tokenize=tokenize, device="cpu")
    assert metrics == retrieval_metrics(sims, TXT2IMG)


def test_pair_list_scores_in_any_order():
    model, images, tokens = tiny_single_stream()
    img = model.image_features(images)
    txt = model.text_features(tokens)
    i = torch.tensor([0, 3, 3, 6, 1])
    j = torch.tensor([20, 0, 7, 7, 2])
    batched = score_pair_list(model, img, txt, i, j, batch_pairs=4, device=torch.device("cpu"))
    single = torch.cat([model.score_pairs(img.select(i[p : p + 1]), txt.select(j[p : p + 1]))
                        for p in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
