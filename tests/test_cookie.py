"""COOKIE: shapes, the shared transformer's gradients and ablation, the three losses by hand."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from cookie.layers import GeneralizedPooling, Pooler
from cookie.losses import CookieLosses, Views, paired_hinge, paired_info_nce
from cookie.model import CookieModel, build_cookie, mask_tokens
from harness.config import compose, to_plain
from harness.launch.grid import plan_grid
from harness.registry import MODELS

VOCAB = 60
B = 6


def tiny_cfg(**patch: object) -> dict:
    """A seconds-to-build COOKIE; ``patch`` maps dotted keys to values."""
    cfg = {
        "name": "cookie", "embed_dim": 16, "image_size": 32,
        "image_tower": {"name": "test_resnet", "kwargs": {"output_stride": 16}},
        "text_tower": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32, "max_position_embeddings": 32},
        "wst": {"layers": 1, "width": 16, "heads": 2, "ffn": 32, "dropout": 0.0,
                "modality_embed": True},
        "pooling": {"image": "gpo", "text": "gpo"},
        "losses": {"itc": {"temperature": 0.07}, "vv": {"temperature": 0.1},
                   "tt": {"temperature": 0.2}},
        "momentum": {"enabled": False, "m": 0.9, "queue_size": 8},
    }
    for dotted, value in patch.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


def tiny_model(**patch: object) -> CookieModel:
    torch.manual_seed(0)
    return build_cookie(tiny_cfg(**patch), vocab_size=VOCAB)


def tiny_batch(second_caption: bool = True, images2: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, 7, dtype=torch.long)
    mask[0, 5:] = 0  # one padded caption
    batch = {"images": torch.randn(B, 3, 32, 32, generator=g),
             "input_ids": torch.randint(5, VOCAB, (B, 7), generator=g), "attention_mask": mask,
             "image_ids": torch.tensor([0, 0, 1, 2, 3, 3])}
    if images2:
        batch["images2"] = torch.randn(B, 3, 32, 32, generator=g)
    if second_caption:
        batch["input_ids2"] = torch.randint(5, VOCAB, (B, 5), generator=g)
        batch["attention_mask2"] = torch.ones(B, 5, dtype=torch.long)
    return batch


def text(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


# ------------------------------------------------------------------------------ shapes


def test_embeddings_have_joint_shape_and_unit_norm():
    model = tiny_model().eval()
    batch = tiny_batch()
    img, txt = model.encode_image(batch["images"][:4]), model.encode_text(text(batch))
    assert img.shape == (4, 16) and txt.shape == (B, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(B))


def test_registered_and_satisfies_dual_encoder_protocol():
    from harness.interfaces import DualEncoder

    assert MODELS.get("cookie") is build_cookie
    assert isinstance(tiny_model(), DualEncoder)


# ----------------------------------------------------------------------- shared module


def _wst_grads(model: CookieModel) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters() if ".wst." in n}


@pytest.mark.parametrize("side", ["image", "text"])
def test_gradients_reach_shared_transformer_from_each_modality(side):
    # Only one unimodal term is on, so only one modality's path carries the loss.
    only = "vv" if side == "image" else "tt"
    off = {f"losses.{t}.enabled": False for t in ("itc", "vv", "tt") if t != only}
    model = tiny_model(**off)
    losses = model.losses(tiny_batch())
    assert set(losses) == {only}
    losses[only].backward()
    grads = _wst_grads(model)
    assert grads and all(g is not None and g.abs().sum() > 0
                         for n, g in grads.items() if "modality_embed" not in n)
    # The modality vector of the side that was used gets a gradient, the other one none.
    embed = model.encoder.wst.modality_embed.grad
    used, unused = (0, 1) if side == "image" else (1, 0)
    assert embed[used].abs().sum() > 0 and embed[unused].abs().sum() == 0
    other = model.encoder.text_tower if side == "image" else model.encoder.image_tower
    assert all(p.grad is None for p in other.parameters())


def _graph_params(loss: torch.Tensor) -> set[int]:
    """ids of the leaf tensors that ``loss``'s autograd graph accumulates into."""
    seen, stack, leaves = set(), [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def test_zero_layers_removes_shared_module_entirely():
    full, bare = tiny_model(), tiny_model(**{"wst.layers": 0})
    assert bare.encoder.wst is None
    names = [n for n, _ in bare.named_parameters()] + [n for n, _ in bare.named_buffers()]
    assert not [n for n in names if "wst" in n or "shared" in n or "modality_embed" in n]
    wst_count = sum(p.numel() for p in full.encoder.wst.parameters())
    assert (sum(p.numel() for p in full.parameters())
            - sum(p.numel() for p in bare.parameters())) == wst_count
    for model in (full, bare):
        loss = sum(model.losses(tiny_batch()).values())
        in_graph = _graph_params(loss)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert in_graph == trainable  # every parameter is used, and nothing else
    assert {id(p) for p in full.encoder.wst.parameters()} <= _graph_params(
        sum(full.losses(tiny_batch()).values()))


def test_cls_pooling_on_a_cnn_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="class token"):
        tiny_model(**{"pooling.image": "cls"})


# --------------------------------------------------------------------- losses by hand


def _hand_info_nce(q, k, scale, ids_q, ids_k):
    """Mean over queries of -sum_j target_j log softmax_j, targets uniform on positives."""
    total = 0.0
    for i in range(len(q)):
        logits = [scale * float(q[i] @ k[j]) for j in range(len(k))]
        log_z = math.log(sum(math.exp(v) for v in logits))
        pos = [j for j in range(len(k)) if ids_k[j] == ids_q[i]]
        total += -sum(logits[j] - log_z for j in pos) / len(pos)
    return total / len(q)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator()
                                                     .manual_seed(seed)), dim=-1)


def test_paired_info_nce_matches_hand_computation_with_shared_ids():
    a, b = _unit(4, 3, seed=0), _unit(4, 3, seed=1)
    ids = torch.tensor([0, 0, 1, 2])  # rows 0 and 1 share an image: positives, not negatives
    got = paired_info_nce(a, b, a, b, ids, ids, 5.0)
    want = 0.5 * (_hand_info_nce(a, b, 5.0, ids, ids) + _hand_info_nce(b, a, 5.0, ids, ids))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_paired_info_nce_with_extra_keys_like_a_gathered_batch_or_queue():
    a, b = _unit(3, 4, seed=2), _unit(3, 4, seed=3)
    extra_a, extra_b = _unit(2, 4, seed=4), _unit(2, 4, seed=5)
    ids_q, ids_k = torch.tensor([5, 6, 7]), torch.tensor([5, 6, 7, 6, 9])
    a_k, b_k = torch.cat([a, extra_a]), torch.cat([b, extra_b])
    got = paired_info_nce(a, b, a_k, b_k, ids_q, ids_k, 3.0)
    want = 0.5 * (_hand_info_nce(a, b_k, 3.0, ids_q, ids_k)
                  + _hand_info_nce(b, a_k, 3.0, ids_q, ids_k))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_paired_hinge_matches_hand_computation():
    a, b = _unit(3, 2, seed=6), _unit(3, 2, seed=7)
    ids = torch.tensor([0, 0, 1])
    margin = 0.2
    total = 0.0
    for q, k in ((a, b), (b, a)):
        for i in range(3):
            pos = float(a[i] @ b[i])
            neg = max(float(q[i] @ k[j]) for j in range(3) if ids[j] != ids[i])
            total += max(0.0, margin + neg - pos) / 3
    got = paired_hinge(a, b, a, b, ids, ids, margin)
    assert float(got) == pytest.approx(total / 2, rel=1e-5)


def test_each_term_is_weighted_hand_infonce_with_its_own_temperature():
    crit = CookieLosses({"itc": {"temperature": 0.07, "weight": 1.0},
                         "vv": {"temperature": 0.1, "weight": 0.5},
                         "tt": {"temperature": 0.2, "weight": 2.0}})
    img, img2, txt, txt2 = (_unit(4, 3, seed=s) for s in (10, 11, 12, 13))
    ids = torch.tensor([0, 1, 1, 2])
    with torch.no_grad():
        out = crit(Views(img, txt, img2, txt2), Views(img, txt, img2, txt2), ids, ids)

    def sym(x, y, tau):
        return 0.5 * (_hand_info_nce(x, y, 1 / tau, ids, ids) + _hand_info_nce(y, x, 1 / tau, ids, ids))

    assert float(out["itc"]) == pytest.approx(sym(img, txt, 0.07), rel=1e-4)
    assert float(out["vv"]) == pytest.approx(0.5 * sym(img, img2, 0.1), rel=1e-4)
    assert float(out["tt"]) == pytest.approx(2.0 * sym(txt, txt2, 0.2), rel=1e-4)


def test_model_losses_use_the_batch_views():
    model = tiny_model().eval()  # eval: no dropout, so a re-encode reproduces the pass
    batch = tiny_batch()
    out = model.losses(batch)
    img, img2 = model.encode_image(batch["images"]), model.encode_image(batch["images2"])
    txt = model.encode_text(text(batch))
    txt2 = model.encode_text({"input_ids": batch["input_ids2"],
                              "attention_mask": batch["attention_mask2"]})
    ids = batch["image_ids"]
    for name, x, y, tau in (("itc", img, txt, 0.07), ("vv", img, img2, 0.1),
                            ("tt", txt, txt2, 0.2)):
        # BatchNorm in eval mode and zero dropout: one stacked pass equals separate ones.
        want = paired_info_nce(x, y, x, y, ids, ids, 1 / tau)
        torch.testing.assert_close(out[name], want, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------- switches, views


@pytest.mark.parametrize("patch, terms", [
    ({}, {"itc", "vv", "tt"}),
    ({"losses.vv.enabled": False}, {"itc", "tt"}),
    ({"losses.tt.weight": 0.0}, {"itc", "vv"}),
    ({"losses.itc.enabled": False, "losses.tt.enabled": False}, {"vv"}),
])
def test_ablation_switches_change_the_logged_terms(patch, terms):
    assert set(tiny_model(**patch).losses(tiny_batch()).keys()) == terms


def test_weight_scales_its_term():
    batch = tiny_batch()
    one = tiny_model().eval().losses(batch)
    three = tiny_model(**{"losses.vv.weight": 3.0}).eval().losses(batch)
    torch.testing.assert_close(three["vv"], 3.0 * one["vv"])
    torch.testing.assert_close(three["itc"], one["itc"])


def test_all_terms_off_is_an_error():
    with pytest.raises(ValueError, match="every term is disabled"):
        tiny_model(**{f"losses.{t}.enabled": False for t in ("itc", "vv", "tt")})


def test_missing_second_views_are_clear_errors_or_fallbacks():
    with pytest.raises(ValueError, match="image_views=2"):
        tiny_model().losses(tiny_batch(images2=False))
    assert "vv" not in tiny_model(**{"losses.vv.enabled": False}).losses(tiny_batch(images2=False))
    model = tiny_model()
    no_caption = tiny_batch(second_caption=False)
    assert model.text_view_kind(no_caption) == "dropout" and "tt" in model.losses(no_caption)
    assert tiny_model(**{"losses.tt.fallback": "mask"}).text_view_kind(no_caption) == "mask"
    with pytest.raises(ValueError, match="second_caption=true"):
        tiny_model(**{"losses.tt.view": "caption"}).losses(no_caption)


def test_dropout_view_differs_only_in_train_mode():
    model = tiny_model(**{"wst.dropout": 0.3, "losses.tt.view": "dropout"})
    tokens = text(tiny_batch())
    doubled = {k: torch.cat([v, v]) for k, v in tokens.items()}
    model.train()
    emb = model.encode_text(doubled)
    assert not torch.allclose(emb[:B], emb[B:])
    model.eval()
    emb = model.encode_text(doubled)
    torch.testing.assert_close(emb[:B], emb[B:])


def test_mask_tokens_keeps_first_and_last_real_token():
    tokens = text(tiny_batch())
    g = torch.Generator().manual_seed(0)
    deleted = mask_tokens(tokens, 1.0, None, generator=g)
    lengths = tokens["attention_mask"].sum(1)
    for row, n in enumerate(lengths.tolist()):
        expected = torch.zeros(7, dtype=torch.long)
        expected[[0, n - 1]] = 1
        assert torch.equal(deleted["attention_mask"][row], expected)
    assert torch.equal(deleted["input_ids"], tokens["input_ids"])
    replaced = mask_tokens(tokens, 1.0, 4, generator=g)
    assert torch.equal(replaced["attention_mask"], tokens["attention_mask"])
    assert (replaced["input_ids"][:, 1:4] == 4).all() and torch.equal(
        replaced["input_ids"][:, 0], tokens["input_ids"][:, 0])


# ------------------------------------------------------------------------------ pooling


def test_gpo_ignores_padding_and_spans_max_to_mean():
    pool = GeneralizedPooling()
    tokens = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = pool(tokens, mask)
    changed = tokens.clone()
    changed[0, 3:] = 100.0
    torch.testing.assert_close(pool(changed, mask), out)
    weights = pool.weights(mask)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    assert (weights[0, 3:] == 0).all()
    # A weighted sum of sorted values always lies between the mean and the max.
    real = tokens[0, :3]
    assert (out[0] <= real.max(0).values + 1e-6).all() and (out[0] >= real.min(0).values - 1e-6).all()


def test_mean_pooling_is_masked():
    tokens = torch.tensor([[[1.0], [3.0], [50.0]]])
    mask = torch.tensor([[True, True, False]])
    assert float(Pooler("mean")(tokens, mask)) == 2.0
    assert float(Pooler("cls")(tokens, mask)) == 1.0


# ----------------------------------------------------------------------------- momentum


def test_momentum_encoder_fills_queue_and_keeps_training():
    model = tiny_model(**{"momentum.enabled": True})
    assert all(not p.requires_grad for p in model.momentum.encoder.parameters())
    before = copy.deepcopy(model.momentum.encoder.state_dict())
    first = model.losses(tiny_batch())
    assert int(model.momentum.filled) == B and set(first) == {"itc", "vv", "tt"}
    sum(first.values()).backward()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.01)
    model.losses(tiny_batch())
    assert int(model.momentum.filled) == 8 and int(model.momentum.ptr) == (2 * B) % 8
    moved = model.momentum.encoder.state_dict()
    key = "text_out.weight"
    assert not torch.equal(before[key], moved[key])
    # Momentum keys carry no gradient: only the online encoder is trained.
    assert all(p.grad is None for p in model.momentum.encoder.parameters())


def test_checkpoints_load_across_momentum_switch():
    plain, with_momentum = tiny_model(), tiny_model(**{"momentum.enabled": True})
    with_momentum.load_state_dict(plain.state_dict())
    torch.testing.assert_close(with_momentum.momentum.encoder.state_dict()["text_out.weight"],
                               plain.state_dict()["encoder.text_out.weight"])
    assert int(with_momentum.momentum.filled) == 0
    plain.load_state_dict(with_momentum.state_dict())


def test_learnable_temperatures_are_clamped_and_frozen_ones_have_no_grad():
    model = tiny_model(**{"losses.vv.learnable_temperature": False})
    with torch.no_grad():
        model.criterion.logit_scale["itc"].fill_(10.0)
    model.clamp_logit_scale()
    assert float(model.criterion.logit_scale["itc"].detach()) == pytest.approx(math.log(100.0))
    assert not model.criterion.logit_scale["vv"].requires_grad


# ------------------------------------------------------------------------------ configs


def test_smoke_config_composes_and_builds():
    cfg = compose(["model=cookie"])
    assert cfg.model.wst.layers == 1 and cfg.model.image_tower.name == "test_resnet"
    model = MODELS.get(cfg.model.name)(to_plain(cfg.model), vocab_size=VOCAB)
    assert isinstance(model, CookieModel) and model.encoder.wst is not None
    assert cfg.model.train_inputs.image_views == 2 and cfg.model.train_inputs.second_caption


def test_paper_config_follows_the_assumed_spec():
    m = compose(["model=cookie", "scale=paper"]).model
    assert (m.image_tower.name, m.text_tower.hidden_size, m.wst.width, m.wst.heads,
            m.embed_dim) == ("resnet50", 768, 768, 12, 1024)
    assert m.wst.layers in (1, 2) and m.pooling.image == "gpo" and not m.momentum.enabled


def test_ablation_grid_plans_every_variant(tmp_path: Path):
    grid = to_plain(compose(["grid=ablations"]).grid)
    assert grid["claim"]
    plan = plan_grid(grid, [], tmp_path)
    trains = [s for s in plan if s.task == "finetune"]
    # full (= depth 1 at smoke scale), no sharing, -vv, -tt, all three off, depth 2, CLIP
    assert len(trains) == 7 and len(plan) == 14
    layers = sorted(s.cfg.model.wst.layers for s in trains if s.model == "cookie")
    assert layers == [0, 0, 1, 1, 1, 2]
    all_off = [s for s in trains if s.model == "cookie" and s.cfg.model.wst.layers == 0
               and not s.cfg.model.losses.vv.enabled and not s.cfg.model.losses.tt.enabled]
    assert len(all_off) == 1
