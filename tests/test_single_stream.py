"""The single-stream cross-encoder: ITM head, MLM masking, hard negatives, config wiring."""

from __future__ import annotations

import pytest
import torch

from baselines.single_stream import (
    DEFAULT_SPECIAL_IDS,
    SingleStream,
    SingleStreamITC,
    build_single_stream,
)
from baselines.single_stream_objectives import IGNORE_INDEX, mask_tokens, sample_negatives
from harness.config import compose, to_plain
from harness.interfaces import CrossEncoder, DualEncoder

VOCAB = 60
PAD, UNK, CLS, SEP, MASK = (DEFAULT_SPECIAL_IDS[k] for k in ("pad", "unk", "cls", "sep", "mask"))


def tiny_cfg(**over: object) -> dict:
    cfg = {
        "image_size": 32,
        "joint": {"name": "vit_tiny_patch16_224",
                  "kwargs": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1,
                             "num_heads": 2}},
        "text_max_len": 16,
        "itc": {"embed_dim": 16},
    }
    cfg.update(over)
    return cfg


def text_batch(lengths: list[int], width: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """[CLS] w1 .. wn [SEP] [PAD]..., words drawn from the non-special ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n + 1] = CLS, SEP
        ids[row, 1 : n + 1] = torch.randint(5, VOCAB, (n,), generator=g)
        mask[row, : n + 2] = 1
    return {"input_ids": ids, "attention_mask": mask}


def train_batch(n: int = 6) -> dict[str, torch.Tensor]:
    batch = text_batch([3 + i % 4 for i in range(n)])
    batch["images"] = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch["image_ids"] = torch.tensor([i // 2 for i in range(n)])  # two captions per image
    return batch


@pytest.fixture(scope="module")
def model() -> SingleStream:
    torch.manual_seed(0)
    return build_single_stream(tiny_cfg(), vocab_size=VOCAB).eval()


def test_itm_head_scores_one_value_per_pair(model):
    img = model.image_features(torch.randn(3, 3, 32, 32))
    txt = model.text_features(text_batch([2, 5, 1, 4, 3]))
    assert img.tokens.shape == (3, 1 + 4, 32) and txt.tokens.shape == (5, 10, 32)
    rows_i, rows_t = torch.tensor([0, 0, 1, 2, 2, 1, 0]), torch.tensor([0, 1, 2, 3, 4, 4, 3])
    pair_img, pair_txt = img.select(rows_i), txt.select(rows_t)
    assert model.itm_logits(pair_img, pair_txt).shape == (7, 2)
    scores = model.score_pairs(pair_img, pair_txt)
    assert scores.shape == (7,) and torch.isfinite(scores).all()
    # Several pairs per forward give each pair the score it gets alone.
    alone = torch.cat([model.score_pairs(img.select(rows_i[p : p + 1]),
                                         txt.select(rows_t[p : p + 1])) for p in range(7)])
    torch.testing.assert_close(scores, alone, rtol=1e-5, atol=1e-5)


def test_score_ignores_extra_text_padding(model):
    img = model.image_features(torch.randn(2, 3, 32, 32))
    short, long = text_batch([3, 2], width=6), text_batch([3, 2], width=14)
    a = model.score_pairs(img, model.text_features(short))
    b = model.score_pairs(img, model.text_features(long))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_itm_pooling_option():
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(itm_pool="mean"), vocab_size=VOCAB).eval()
    img = m.image_features(torch.randn(2, 3, 32, 32))
    a = m.score_pairs(img, m.text_features(text_batch([3, 2], width=6)))
    b = m.score_pairs(img, m.text_features(text_batch([3, 2], width=14)))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the mean ignores padding
    with pytest.raises(ValueError, match="itm_pool"):
        build_single_stream(tiny_cfg(itm_pool="max"), vocab_size=VOCAB)


def _pooled_spread(pool: str) -> float:
    """Spread across pairs / RMS of what the ITM head reads, at initialisation."""
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(itm_pool=pool, joint={**tiny_cfg()["joint"], "kwargs": {
        **tiny_cfg()["joint"]["kwargs"], "depth": 2}}), vocab_size=VOCAB).eval()
    seen = []
    m.pooler.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    n = 16
    with torch.no_grad():
        m.score_pairs(m.image_features(torch.randn(n, 3, 32, 32)),
                      m.text_features(text_batch([2 + i % 6 for i in range(n)])))
    pooled = seen[0]
    return float(pooled.std(0).mean() / pooled.pow(2).mean().sqrt())


def test_image_cls_pooling_reads_a_token_that_differs_between_pairs():
    # From scratch in a pre-LN stack, the text [CLS] (first joint token) is almost the same
    # vector for every pair: an ITM head reading it learns the prior (docs/cross-encoder.md).
    # The image class token starts near zero, so it holds what attention brought it.
    cls, image_cls = _pooled_spread("cls"), _pooled_spread("image_cls")
    assert cls < 0.05 < image_cls
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(itm_pool="image_cls"), vocab_size=VOCAB).eval()
    img = m.image_features(torch.randn(2, 3, 32, 32))
    a = m.score_pairs(img, m.text_features(text_batch([3, 2], width=6)))
    b = m.score_pairs(img, m.text_features(text_batch([3, 2], width=14)))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the index follows the padding


def test_logprob_score_is_a_log_probability():
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(itm_score="logprob"), vocab_size=VOCAB).eval()
    s = m.score_pairs(m.image_features(torch.randn(2, 3, 32, 32)),
                      m.text_features(text_batch([2, 3])))
    assert (s <= 0).all()
    with pytest.raises(ValueError, match="itm_score"):
        build_single_stream(tiny_cfg(itm_score="prob"), vocab_size=VOCAB)


@pytest.mark.parametrize("head", [False, True])
def test_losses_have_their_own_keys_and_train(head):
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(contrastive_head=head), vocab_size=VOCAB)
    assert isinstance(m, CrossEncoder)
    assert isinstance(m, DualEncoder) == head  # only the contrastive variant embeds
    losses = m.losses(train_batch())
    assert set(losses) == ({"itm", "mlm", "itc"} if head else {"itm", "mlm"})
    total = sum(losses.values())
    total.backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert m.itm_head.weight.grad is not None and m.text_embed.word.weight.grad is not None
    if head:
        emb = m.encode_image(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
        assert m.encode_text(text_batch([2, 3])).shape == (2, 16)


@pytest.mark.parametrize("hard", [False, True])
def test_itc_similarities_drive_the_itm_negatives_only_when_asked(hard, monkeypatch):
    import baselines.single_stream as module

    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(contrastive_head=True,
                                     itc={"embed_dim": 16, "hard_negatives": hard}),
                            vocab_size=VOCAB)
    weights = []
    draw = module.sample_negatives

    def spy(same, logits=None, generator=None):
        weights.append(logits)
        return draw(same, logits, generator)

    monkeypatch.setattr(module, "sample_negatives", spy)
    losses = m.losses(train_batch())
    assert set(losses) == {"itm", "mlm", "itc"}  # the ITC loss trains either way
    assert len(weights) == 2  # one draw of negative captions, one of negative images
    if hard:  # ALBEF: the draw follows the ITC similarities, one direction each
        assert all(w is not None and w.shape == (6, 6) for w in weights)
        torch.testing.assert_close(weights[0], weights[1].t())
    else:  # ViLT: uniform over the other images' captions
        assert weights == [None, None]


def test_itc_pooling_option():
    m = build_single_stream(tiny_cfg(contrastive_head=True, itc={"embed_dim": 8,
                                                                  "pool": "embeddings"}),
                            vocab_size=VOCAB)
    assert isinstance(m, SingleStreamITC) and m.encode_text(text_batch([1, 4])).shape == (2, 8)
    with pytest.raises(ValueError, match="itc.pool"):
        build_single_stream(tiny_cfg(contrastive_head=True, itc={"pool": "max"}), vocab_size=VOCAB)


def test_mlm_masks_only_real_text_tokens():
    batch = text_batch([1, 4, 7, 0], width=12)
    specials = DEFAULT_SPECIAL_IDS.values()
    kw = {"special_ids": specials, "mask_id": MASK, "vocab_size": VOCAB}
    masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], prob=1.0, **kw)
    real = batch["attention_mask"].bool() & (batch["input_ids"] >= 5)
    assert torch.equal(labels != IGNORE_INDEX, real)  # prob 1: every word, nothing else
    assert torch.equal(labels[real], batch["input_ids"][real])
    assert torch.equal(masked[~real], batch["input_ids"][~real])  # [CLS]/[SEP]/[PAD] untouched
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], prob=0.5,
                                     generator=g, **kw)
        chosen = labels != IGNORE_INDEX
        assert not (chosen & ~real).any()
        assert torch.equal(masked[~chosen], batch["input_ids"][~chosen])


def test_mlm_80_10_10_rule():
    n = 40_000
    ids = torch.randint(5, VOCAB, (1, n))
    ids[0, 0], ids[0, -1] = CLS, SEP
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, torch.ones_like(ids), special_ids=DEFAULT_SPECIAL_IDS.values(),
                                 mask_id=MASK, vocab_size=VOCAB, prob=0.15, generator=g)
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    frac_mask = (masked[chosen] == MASK).float().mean().item()
    frac_same = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.02
    # 10% kept on purpose, plus random draws that hit the same word or a special id.
    assert 0.09 < frac_same < 0.14
    assert not torch.isin(masked[chosen & (masked != MASK)], torch.tensor([PAD, CLS, SEP])).any()


def test_hard_negatives_never_positive_nor_same_image():
    ids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    same = ids[:, None] == ids[None, :]
    # Logits that strongly prefer the same-image columns must still never pick them.
    logits = torch.where(same, torch.tensor(50.0), torch.tensor(0.0))
    g = torch.Generator().manual_seed(0)
    for use_logits in (True, False):
        for _ in range(200):
            idx, valid = sample_negatives(same, logits if use_logits else None, generator=g)
            assert valid.all()
            assert not same[torch.arange(len(ids)), idx].any()


def test_hard_negatives_follow_the_weights_and_flag_rows_without_any():
    same = torch.tensor([[True, False, False], [False, True, False], [True, True, True]])
    logits = torch.tensor([[0.0, 20.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_negatives(same, logits, generator=g)[0] for _ in range(100)])
    assert (picks[:, 0] == 1).all()  # exp(20) outweighs the other allowed column
    assert set(picks[:, 1].tolist()) == {0, 2}
    _, valid = sample_negatives(same, logits)
    assert valid.tolist() == [True, True, False]


def test_mlm_with_padding_beyond_the_longest_caption():
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(), vocab_size=VOCAB)
    batch = train_batch(4)
    wide = text_batch([3, 4, 5, 6], width=14)  # padded past the longest caption (8 tokens)
    batch.update(wide)
    assert torch.isfinite(m.mlm_loss(m.image_features(batch["images"]), batch))


def test_itm_batch_drops_rows_without_a_negative():
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(), vocab_size=VOCAB)
    batch = train_batch(4)
    batch["image_ids"] = torch.zeros(4, dtype=torch.long)  # one image's captions only
    losses = m.losses(batch)
    assert torch.isfinite(losses["itm"])  # positives alone, no crash and no false negative


def test_special_ids_from_the_tokenizer():
    m = build_single_stream(tiny_cfg(), vocab_size=VOCAB,
                            special_ids={"pad": 0, "unk": 10, "cls": 11, "sep": 12, "mask": 13})
    assert m.special_ids["mask"] == 13
    with pytest.raises(ValueError, match="special-token ids"):
        build_single_stream(tiny_cfg(), vocab_size=VOCAB, special_ids={"mask": 103})


def test_text_longer_than_positions_is_a_clear_error(model):
    with pytest.raises(ValueError, match="text positions"):
        model.text_features(text_batch([3], width=20))


def test_configs_compose_for_both_scales():
    paper = compose(["model=single_stream", "scale=paper"]).model
    smoke = to_plain(compose(["model=single_stream", "scale=smoke"]).model)
    assert paper.joint.name == "vit_base_patch32_384" and paper.image_size == 384
    assert smoke["image_size"] == 64 and smoke["joint"]["kwargs"]["img_size"] == 64
    assert {"mean", "std", "train_inputs"} <= set(smoke) and "special_ids" not in smoke
    m = build_single_stream(smoke, vocab_size=300)
    # The smoke size is the from-scratch recipe (configs/size/single_stream_smoke.yaml):
    # a CNN grid (4x4 + class token), the contrastive head with uniform ITM negatives, the
    # product head, log-odds ranking; paper scale keeps ViLT's own choices.
    assert isinstance(m, SingleStreamITC) and not m.hard_negatives
    assert (m.itm_pool, m.itm_score) == ("product", "logprob")
    assert m.image_features(torch.zeros(1, 3, 64, 64)).tokens.shape == (1, 17, 96)
    vilt = build_single_stream({**to_plain(paper), "joint": {**to_plain(paper.joint),
                                "pretrained_path": None}}, vocab_size=300)
    assert not isinstance(vilt, SingleStreamITC) and (vilt.itm_pool, vilt.itm_score) == (
        "cls", "logit")


def test_flops_split_cached_features_from_the_first_stage_head():
    from harness.eval.flops import count_flops, flops_summary

    cfg = tiny_cfg(contrastive_head=True)
    summary = flops_summary(lambda: build_single_stream(cfg, vocab_size=VOCAB), image_size=32,
                            text_len=10)
    m = build_single_stream(cfg, vocab_size=VOCAB).eval()
    images, tokens = torch.zeros(1, 3, 32, 32), text_batch([8])
    # image/text encode = what re-ranking caches; the dual head adds a unimodal pass on top.
    assert summary["image_encode_flops"] == count_flops(lambda: m.image_features(images)).total
    assert summary["first_stage_image_flops"] == count_flops(lambda: m.encode_image(images)).total
    assert summary["first_stage_text_flops"] == count_flops(lambda: m.encode_text(tokens)).total
    assert summary["first_stage_text_flops"] > summary["text_encode_flops"]
    pure = flops_summary(lambda: build_single_stream(tiny_cfg(), vocab_size=VOCAB),
                         image_size=32, text_len=10)
    assert "first_stage_image_flops" not in pure and pure["pair_score_flops"] > 0


def _itm_pairs(m: SingleStream, batch: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch,
               sims: tuple[torch.Tensor, torch.Tensor] | None = None,
               ) -> tuple[list[tuple[int, int]], list[int]]:
    """The (image row, caption row) pairs the ITM loss scores, and their labels, by spying."""
    image = m.image_features(batch["images"])
    text = m.text_features(batch)
    seen: dict[str, object] = {}
    itm_logits, cross_entropy = m.itm_logits, torch.nn.functional.cross_entropy

    def spy_logits(img, txt):
        seen["img"], seen["txt"] = img.tokens, txt.tokens
        return itm_logits(img, txt)

    def spy_ce(logits, labels, *args, **kwargs):
        seen["labels"] = labels.tolist()
        return cross_entropy(logits, labels, *args, **kwargs)

    monkeypatch.setattr(m, "itm_logits", spy_logits)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy_ce)
    m.itm_loss(image, text, batch["image_ids"], sims)

    def row_of(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
        # Each scored row is an exact copy of one batch row's features.
        return [next(i for i in range(len(table)) if torch.equal(r, table[i])) for r in rows]

    pairs = list(zip(row_of(seen["img"], image.tokens), row_of(seen["txt"], text.tokens)))
    return pairs, seen["labels"]


@pytest.mark.parametrize("hard", [False, True])
def test_itm_negatives_never_pair_captions_of_the_same_image(hard, monkeypatch):
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(), vocab_size=VOCAB)
    batch = train_batch(6)  # image ids 0 0 1 1 2 2: each image has a second, true caption
    ids = batch["image_ids"].tolist()
    n = len(ids)
    same = batch["image_ids"][:, None] == batch["image_ids"][None, :]
    # Hard-negative logits that favour the same-image caption as much as they can.
    sims = (same.float() * 50.0, same.float() * 50.0) if hard else None
    for _ in range(10):  # negatives are drawn at random: several draws
        pairs, labels = _itm_pairs(m, batch, monkeypatch, sims)
        # n positives, then one negative caption per image row and one negative image per
        # caption row: every row has one here.
        assert len(pairs) == len(labels) == 3 * n
        assert labels == [1] * n + [0] * (2 * n)
        assert pairs[:n] == [(r, r) for r in range(n)]
        for (img_row, txt_row), label in zip(pairs, labels):
            assert (ids[img_row] == ids[txt_row]) == (label == 1), (img_row, txt_row, label)
        negatives = pairs[n:]
        assert [p[0] for p in negatives[:n]] == list(range(n))  # a caption for each image
        assert [p[1] for p in negatives[n:]] == list(range(n))  # an image for each caption


def test_itm_of_one_image_batch_scores_positives_only(monkeypatch):
    torch.manual_seed(0)
    m = build_single_stream(tiny_cfg(), vocab_size=VOCAB)
    batch = train_batch(4)
    batch["image_ids"] = torch.zeros(4, dtype=torch.long)  # every caption is a true one
    pairs, labels = _itm_pairs(m, batch, monkeypatch)
    assert pairs == [(r, r) for r in range(4)] and labels == [1, 1, 1, 1]


# ------------------------------------------------------------ align before fuse (fuse_at)

def _fused(fuse_at: int, depth: int = 2, **over: object) -> SingleStream:
    torch.manual_seed(0)
    joint = tiny_cfg()["joint"]
    cfg = tiny_cfg(joint={**joint, "fuse_at": fuse_at,
                          "kwargs": {**joint["kwargs"], "depth": depth}}, **over)
    return build_single_stream(cfg, vocab_size=VOCAB).eval()


def test_unimodal_blocks_see_one_modality_and_fusion_blocks_both():
    m = _fused(1)
    images = torch.randn(2, 3, 32, 32)
    img = m.image_features(images)
    texts = text_batch([3, 2], width=8)
    # The cached features already went through block 0, alone per modality.
    raw = m.image_embed(images) + m.type_embed.weight[1]
    torch.testing.assert_close(img.tokens, m.blocks[0](raw))
    a = m.score_pairs(img, m.text_features(texts))
    b = m.score_pairs(m.image_features(images.flip(0)), m.text_features(texts))
    assert not torch.allclose(a, b)  # the fusion block still lets the image reach the score
    # Padding a caption further changes neither modality's unimodal pass nor the score.
    torch.testing.assert_close(a, m.score_pairs(img, m.text_features(text_batch([3, 2], width=14))),
                               rtol=1e-5, atol=1e-5)


def test_itc_reads_the_unimodal_blocks_without_a_second_pass():
    m = _fused(1, contrastive_head=True)
    calls = []
    m.blocks[1].register_forward_hook(lambda *_: calls.append(1))
    m.encode_image(torch.randn(2, 3, 32, 32))
    m.encode_text(text_batch([2, 3]))
    assert not calls  # only the unimodal block ran: ITC aligns what the fusion blocks read


def test_fuse_at_must_leave_a_fusion_block():
    with pytest.raises(ValueError, match="fuse_at=2 must be in"):
        _fused(2, depth=2)
    with pytest.raises(ValueError, match="fuse_at=-1"):
        _fused(-1)


def test_product_pooling_multiplies_each_modality_pooled_on_its_own():
    m = _fused(1, itm_pool="product")
    seen = {}
    for part in ("text", "image"):
        m.pooler[part].register_forward_hook(
            lambda mod, args, out, part=part: seen.update({part: (args[0], out)}))
    head_in = []
    m.itm_head.register_forward_hook(lambda mod, args, out: head_in.append(args[0]))
    img = m.image_features(torch.randn(2, 3, 32, 32))
    text = m.text_features(text_batch([3, 2], width=8))
    a = m.score_pairs(img, text)
    hidden, mask = m.joint(img, text)
    n_text = hidden.shape[1] - img.tokens.shape[1]
    w = mask[:, :n_text, None].float()
    torch.testing.assert_close(seen["text"][0], (hidden[:, :n_text] * w).sum(1) / w.sum(1))
    torch.testing.assert_close(seen["image"][0], hidden[:, n_text:].mean(1))
    # Two poolers with their own weights (ViLBERT's), then the element-wise product.
    assert not torch.equal(m.pooler["text"][0].weight, m.pooler["image"][0].weight)
    torch.testing.assert_close(head_in[0], seen["text"][1] * seen["image"][1])
    # Padding stays out of the text mean.
    torch.testing.assert_close(a, m.score_pairs(img, m.text_features(text_batch([3, 2], width=14))),
                               rtol=1e-5, atol=1e-5)
