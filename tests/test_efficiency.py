"""Tests for FLOPs, parameter counts, latency and the retrieval cost model.

FLOPs throughout are 2 x multiply-accumulates, the convention of torch's FlopCounterMode.
"""

from __future__ import annotations

import json
import math
import resource
import time
import warnings

import pytest
import torch
from torch import Tensor, nn

from harness.eval import efficiency as eff
from harness.eval.flops import (
    FLOPS_CONVENTION,
    FlopCountError,
    build_on_meta,
    count_flops,
    count_model_flops,
    flops_summary,
    image_encode_flops,
    image_step,
    pair_score_flops,
    param_counts,
    text_encode_flops,
    text_step,
)
from harness.eval.timing import LatencyStats, measure_latency, time_workload
from harness.interfaces import CrossEncoder, DualEncoder, TokenFeatures

CPU = torch.device("cpu")


# ---------------------------------------------------------------- toy models for the protocols

class ToyDual(nn.Module):
    """A tiny dual encoder: linear image tower, embedding-bag text tower."""

    def __init__(self, image_size: int = 8, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.image = nn.Linear(3 * image_size * image_size, dim)
        self.embed = nn.Embedding(vocab, dim)
        self.text = nn.Linear(dim, dim)

    def encode_image(self, images: Tensor) -> Tensor:
        return nn.functional.normalize(self.image(images.flatten(1)), dim=-1)

    def encode_text(self, tokens) -> Tensor:
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        pooled = (self.embed(tokens["input_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return nn.functional.normalize(self.text(pooled), dim=-1)

    def losses(self, batch) -> dict[str, Tensor]:
        return {}


class ToyCross(nn.Module):
    """A single-stream cross-encoder: patch and word tokens through one transformer, CLS scored."""

    def __init__(self, dim: int = 16, heads: int = 2, layers: int = 1, patch: int = 4,
                 vocab: int = 50, ff: int | None = None) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff or 4 * dim, dropout=0.0,
                                           batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 1)

    def image_features(self, images: Tensor) -> TokenFeatures:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        return TokenFeatures(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool,
                                                device=tokens.device))

    def text_features(self, tokens) -> TokenFeatures:
        return TokenFeatures(self.embed(tokens["input_ids"]), tokens["attention_mask"].bool())

    def score_pairs(self, image_features: TokenFeatures, text_features: TokenFeatures) -> Tensor:
        tokens = torch.cat([text_features.tokens, image_features.tokens], dim=1)
        mask = torch.cat([text_features.mask, image_features.mask], dim=1)
        fused = self.fusion(tokens, src_key_padding_mask=~mask)
        return self.head(fused[:, 0]).squeeze(-1)

    def losses(self, batch) -> dict[str, Tensor]:
        return {}


def test_toys_implement_the_protocols() -> None:
    assert isinstance(ToyDual(), DualEncoder)
    assert isinstance(ToyCross(), CrossEncoder)


def _dual_batch(n_images: int = 4, n_texts: int = 6, text_len: int = 5):
    images = torch.randn(n_images, 3, 8, 8)
    tokens = {"input_ids": torch.randint(0, 50, (n_texts, text_len)),
              "attention_mask": torch.ones(n_texts, text_len, dtype=torch.long)}
    return images, tokens


# ---------------------------------------------------------------- FLOPs: hand formulas

def test_linear_flops_equal_two_b_in_out() -> None:
    batch, d_in, d_out = 4, 16, 8
    layer, x = nn.Linear(d_in, d_out), torch.randn(batch, d_in)
    count = count_flops(lambda: layer(x))
    assert count.total == 2 * batch * d_in * d_out
    assert count.uncounted_ops == ()
    assert "2 x multiply-accumulates" in FLOPS_CONVENTION


def _encoder_layer_flops(batch: int, n: int, d: int, ff: int) -> int:
    """Hand formula for one post-LN transformer encoder layer on ``n`` tokens of width ``d``.

    Q, K, V and output projections: 4 matrices d x d on n tokens = 4 * 2*n*d*d = 8*n*d^2.
    Attention scores Q K^T: 2*n*n*d; attention-weighted values A V: 2*n*n*d, summed over heads.
    Feed-forward d -> ff -> d: 2 * 2*n*d*ff = 4*n*d*ff. Norms, softmax, bias adds: not counted.
    """
    return batch * (8 * n * d * d + 4 * n * n * d + 4 * n * d * ff)


def test_self_attention_block_flops_match_hand_formula() -> None:
    batch, n, d, heads, ff = 2, 10, 32, 4, 64
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True).eval()
    x = torch.randn(batch, n, d)
    expected = _encoder_layer_flops(batch, n, d, ff)
    assert count_flops(lambda: layer(x)).total == expected
    # An outer no_grad must not switch on the fused path that the counter cannot see.
    with torch.no_grad():
        assert count_flops(lambda: layer(x)).total == expected


def test_fused_op_without_formula_is_reported_not_hidden() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 5, 32)

    def fused() -> None:
        with torch.no_grad():  # torch's inference fast path: one fused aten op
            layer(x)

    with pytest.warns(UserWarning, match="undercounted"):
        count = count_flops(fused)
    assert any("transformer_encoder_layer" in op for op in count.uncounted_ops)


# ---------------------------------------------------------------- FLOPs: meta / fake / real agree

@pytest.mark.parametrize("mode", ["meta", "fake", "real"])
def test_shape_only_modes_equal_real_for_a_small_cross_encoder(mode: str) -> None:
    real = pair_score_flops(ToyCross, image_size=8, text_len=5, mode="real").total
    count = pair_score_flops(ToyCross, image_size=8, text_len=5, mode=mode)
    assert count.mode == mode
    assert count.total == real == _encoder_layer_flops(1, 4 + 5, 16, 64) + 2 * 16


def test_small_bert_counts_equal_on_fake_and_real() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=100)
    build = lambda: transformers.BertModel(config)  # noqa: E731
    real = text_encode_flops(build, text_len=12, mode="real")
    auto = text_encode_flops(build, text_len=12)
    assert auto.total == real.total
    # Meta cannot run BERT's mask handling (.item() on a meta tensor); auto fell back to fake.
    assert auto.mode == "fake"
    layer = _encoder_layer_flops(1, 12, 64, 128)
    assert real.total == 2 * layer + 2 * 64 * 64  # + pooler


def test_flops_summary_of_a_dual_encoder_has_no_pair_score() -> None:
    summary = flops_summary(ToyDual, image_size=8, text_len=6)
    assert summary["image_encode_flops"] == 2 * (3 * 8 * 8) * 16
    assert summary["text_encode_flops"] == 2 * 16 * 16  # the embedding lookup is free
    assert "pair_score_flops" not in summary
    assert summary["count_mode"] == "meta"
    json.dumps(summary)


def test_pair_score_of_a_dual_encoder_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="CrossEncoder"):
        pair_score_flops(ToyDual, image_size=8, text_len=4)


class _ValueBranch(nn.Module):
    """A model whose forward reads tensor values, so no shape-only mode can run it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) if bool(x.sum() >= 0) else x


def test_unrunnable_model_gives_a_clear_error_naming_each_mode() -> None:
    steps = {"fwd": lambda model, device: (lambda: model(torch.zeros(2, 4, device=device)))}
    with pytest.raises(FlopCountError, match="meta: .*fake: .*mode='real'"):
        count_model_flops(_ValueBranch, steps)
    assert count_model_flops(_ValueBranch, steps, mode="real")["fwd"].total == 2 * 2 * 4 * 4


def test_build_that_reads_values_gives_a_clear_error() -> None:
    def build() -> nn.Module:
        scale = torch.tensor(0.5).item()  # fails on meta: a factory that needs real values
        return nn.Linear(4, 4) if scale else nn.Identity()

    with pytest.raises(FlopCountError, match="torch.device\\('meta'\\)"):
        image_encode_flops(build, image_size=4)


# ---------------------------------------------------------------- FLOPs: paper-size models on meta

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def test_vit_b16_flops_on_meta_without_allocating() -> None:
    timm = pytest.importorskip("timm")
    build = lambda: timm.create_model("vit_base_patch16_224", pretrained=False)  # noqa: E731
    model = build_on_meta(build)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert param_counts({"image": model})["total"] == 86_567_656
    before = _peak_rss_mb()
    count = image_encode_flops(build, image_size=224)
    assert _peak_rss_mb() - before < 150  # the fp32 weights alone are 330 MiB
    n, d = 197, 768  # 196 patches + CLS, width 768, 12 layers, MLP 3072
    expected = (12 * _encoder_layer_flops(1, n, d, 4 * d)
                + 2 * 196 * (3 * 16 * 16) * d  # patch embedding
                + 2 * d * 1000)  # classifier head
    assert count.total == expected == 35_127_656_448  # 17.56 GMACs, as timm reports
    assert count.mode == "meta"


def test_bert_base_flops_on_meta_without_allocating() -> None:
    transformers = pytest.importorskip("transformers")
    build = lambda: transformers.BertModel(transformers.BertConfig())  # noqa: E731
    model = build_on_meta(build)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert param_counts({"text": model})["total"] == 109_482_240
    before = _peak_rss_mb()
    count = text_encode_flops(build, text_len=32)
    assert _peak_rss_mb() - before < 150  # the fp32 weights alone are 418 MiB
    d, n = 768, 32
    expected = 12 * _encoder_layer_flops(1, n, d, 4 * d) + 2 * d * d  # + pooler
    assert count.total == expected == 5_474_746_368
    assert count.mode in ("meta", "fake")


def test_twelve_layer_cross_encoder_pair_flops() -> None:
    # ViLT-B/32 shape: 384x384 image in 32-pixel patches (144 tokens) + 40 text tokens.
    build = lambda: ToyCross(dim=768, heads=12, layers=12, patch=32)  # noqa: E731
    count = pair_score_flops(build, image_size=384, text_len=40)
    n, d = 144 + 40, 768
    assert count.total == 12 * _encoder_layer_flops(1, n, d, 4 * d) + 2 * d
    assert 30e9 < count.total < 35e9


# ---------------------------------------------------------------- parameter counts

def test_param_counts_count_shared_parameters_once() -> None:
    shared = nn.Linear(4, 4)  # 20 parameters
    image = nn.Sequential(nn.Linear(3, 4), shared)  # 16 + 20
    text = nn.Sequential(nn.Embedding(10, 4), shared)  # 40 + 20
    counts = param_counts({"image": image, "text": text})
    assert counts == {"image": 36, "text": 60, "total": 76}
    with pytest.raises(ValueError, match="total"):
        param_counts({"total": image})


def test_param_counts_work_on_meta() -> None:
    model = build_on_meta(lambda: nn.Linear(1000, 1000))
    assert param_counts({"m": model}) == {"m": 1_001_000, "total": 1_001_000}


# ---------------------------------------------------------------- latency and budgeted workloads

def test_latency_stats_are_finite_and_ordered() -> None:
    x = torch.randn(64, 64)
    stats = measure_latency(lambda: x @ x, warmup=2, repeats=15, device=CPU)
    assert stats.repeats == 15
    for value in (stats.median_s, stats.p90_s, stats.mean_s, stats.min_s):
        assert math.isfinite(value) and value > 0
    assert stats.min_s <= stats.median_s <= stats.p90_s
    assert set(stats.to_dict()) == {"median_s", "p90_s", "mean_s", "min_s", "repeats"}
    with pytest.raises(ValueError):
        measure_latency(lambda: None, warmup=0, repeats=0, device=CPU)


def test_latency_stops_early_once_the_budget_is_spent() -> None:
    stats = measure_latency(lambda: time.sleep(0.01), warmup=0, repeats=1000, device=CPU,
                            budget_s=0.05)
    assert 3 <= stats.repeats <= 10


def test_latency_percentiles_interpolate() -> None:
    stats = LatencyStats.from_times([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats.median_s, stats.min_s, stats.mean_s) == (3.0, 1.0, 3.0)
    assert stats.p90_s == pytest.approx(4.6)


def _sleepy(seconds_per_batch: float):
    calls: list[int] = []

    def step(n: int) -> None:
        calls.append(n)
        time.sleep(seconds_per_batch)
    return step, calls


def test_workload_within_budget_is_measured_in_full() -> None:
    step, calls = _sleepy(0.002)
    record = time_workload(step, units=45, batch_size=10, device=CPU, budget_s=5.0)
    assert record["status"] == "measured"
    assert record["sample_units"] == record["units"] == 45
    assert calls[-5:] == [10, 10, 10, 10, 5]  # the last, partial batch is run at its real size
    assert record["seconds"] >= 5 * 0.002


def test_workload_over_budget_is_extrapolated_from_whole_batches() -> None:
    step, _ = _sleepy(0.01)
    record = time_workload(step, units=1000, batch_size=10, device=CPU, budget_s=0.035)
    assert record["status"] == "extrapolated"
    assert record["sample_units"] % 10 == 0 and 10 <= record["sample_units"] <= 40
    assert record["seconds"] == pytest.approx(
        record["sample_seconds"] / record["sample_units"] * 1000)
    assert 0.9 <= record["seconds"] <= 3.0  # 100 batches of ~10 ms
    zero = time_workload(step, units=1000, batch_size=10, device=CPU, budget_s=0.0)
    assert zero["status"] == "extrapolated" and zero["sample_units"] == 10


def test_workload_halves_the_batch_on_out_of_memory() -> None:
    def step(n: int) -> None:
        if n > 3:
            raise torch.OutOfMemoryError("fake OOM")

    record = time_workload(step, units=20, batch_size=16, device=CPU, budget_s=1.0)
    assert (record["batch_size"], record["requested_batch_size"]) == (2, 16)
    assert record["status"] == "measured"


# ---------------------------------------------------------------- retrieval cost model

def test_protocol_constants() -> None:
    assert eff.PROTOCOLS == {"coco_5k": (5000, 25000), "flickr30k_1k": (1000, 5000)}
    assert eff.resolve_protocol("coco_5k") == ("coco_5k", 5000, 25000)
    assert eff.resolve_protocol((3, 7)) == ("custom_3x7", 3, 7)
    assert eff.resolve_protocol((1, 1)) == ("custom_1x1", 1, 1)  # the smallest gallery
    for bad in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match="protocol sizes must be positive"):
            eff.resolve_protocol(bad)
    with pytest.raises(KeyError, match="coco_5k"):
        eff.resolve_protocol("coco_1k")


def test_dual_encoder_costs_measured_within_budget() -> None:
    images, tokens = _dual_batch()
    costs = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol=(10, 30), device=CPU,
                                   budget_s=10.0, k=5, query_repeats=3)
    assert costs["status"] == "measured"
    index, ranking = costs["index"], costs["ranking"]
    assert index["image"]["units"] == 10 and index["image"]["batch_size"] == 4
    assert index["text"]["units"] == 30 and index["text"]["batch_size"] == 6
    assert ranking["t2i"]["units"] == 30
    parts = [index["image"], index["text"], ranking["i2t"], ranking["t2i"]]
    assert index["seconds"] == index["image"]["seconds"] + index["text"]["seconds"]
    assert costs["total_s"] == pytest.approx(sum(p["seconds"] for p in parts))
    assert costs["query"]["t2i"]["p90_s"] >= costs["query"]["t2i"]["median_s"] > 0
    assert costs["embed_dim"] == 16 and costs["hardware"]
    json.dumps(costs)


def test_dual_encoder_costs_extrapolated_past_budget() -> None:
    images, tokens = _dual_batch()
    costs = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol="coco_5k", device=CPU,
                                   budget_s=0.0, query_repeats=2)
    assert costs["status"] == "extrapolated"
    assert (costs["n_images"], costs["n_texts"]) == (5000, 25000)
    assert costs["index"]["text"]["sample_units"] == 6  # one batch, then linear
    assert costs["index"]["text"]["status"] == "extrapolated"


def test_cross_encoder_costs_and_the_inference_time_ratio() -> None:
    images, tokens = _dual_batch(n_images=100, n_texts=500)
    dual = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol="flickr30k_1k",
                                  device=CPU, budget_s=30.0, query_repeats=2)
    assert dual["status"] == "measured"  # 6,000 toy encodes fit easily
    cross = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol="flickr30k_1k",
                                    device=CPU, budget_s=0.2, pair_batch_size=64, k=4,
                                    first_stage=dual)
    full = cross["full_scoring"]
    assert full["pairs"]["units"] == 1000 * 5000
    assert full["pairs"]["status"] == full["status"] == "extrapolated"  # 5M pairs in 0.2 s: no
    assert full["pairs"]["sample_units"] % 64 == 0
    # Totals are the sums of their timed parts: features are encoded in both modes.
    features = cross["features"]["image"]["seconds"] + cross["features"]["text"]["seconds"]
    assert cross["features"]["seconds"] == pytest.approx(features) and features > 0
    assert full["total_s"] == pytest.approx(features + full["pairs"]["seconds"])
    rerank = cross["topk_rerank"]
    assert rerank["pairs"]["units"] == 4 * (1000 + 5000)
    assert rerank["first_stage_s"] == dual["total_s"]
    assert rerank["total_s"] == pytest.approx(
        features + rerank["pairs"]["seconds"] + dual["total_s"])
    ratio = eff.inference_time_ratio(dual, cross)
    assert ratio["cross_mode"] == "full_scoring"
    assert ratio["ratio"] == pytest.approx(dual["total_s"] / full["total_s"])
    assert ratio["cross_total_s"] == full["total_s"] and ratio["same_hardware"]
    assert ratio["status"] == "extrapolated"
    json.dumps(cross)


# ------------------------------------------------- the cost model on a clock with known costs

#: Seconds per unit of each kind of workload: binary fractions, so every sum below is exact.
UNIT_SECONDS = {"images": 2.0**-1, "texts": 2.0**-2, "pairs": 2.0**-10, "queries": 2.0**-12}


def _fixed_clock_workload(step, *, units: int, batch_size: int, unit: str = "items",
                          **_: object) -> dict[str, object]:
    """time_workload on a fake clock: every unit of a kind costs UNIT_SECONDS[kind]."""
    seconds = units * UNIT_SECONDS[unit]
    return {"status": "measured", "seconds": seconds, "unit": unit, "units": units,
            "seconds_per_unit": UNIT_SECONDS[unit], "batch_size": batch_size,
            "requested_batch_size": batch_size, "sample_units": units,
            "sample_seconds": seconds}


def test_protocol_totals_equal_hand_computed_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eff, "time_workload", _fixed_clock_workload)
    images, tokens = _dual_batch()
    dual = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol="flickr30k_1k",
                                  device=CPU, budget_s=10.0)  # 20 query timings, the default
    cross = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol="flickr30k_1k",
                                    device=CPU, budget_s=1.0, pair_batch_size=8, k=4,
                                    first_stage=dual)
    # What each record says it is and covers.
    assert (dual["kind"], cross["kind"]) == ("dual_encoder", "cross_encoder")
    assert dual["includes"] == ["image encode", "text encode",
                                "similarity in fp32, once per direction", "top-k per query"]
    assert dual["excludes"] == cross["excludes"] == eff.NOT_INCLUDED
    assert cross["full_scoring"]["includes"] == ["image features", "text features",
                                                 "one pair forward per pair"]
    assert cross["topk_rerank"]["includes"] == ["image features", "text features",
                                                "4 pair forwards per query", "first stage"]
    assert dual["query"]["i2t"]["repeats"] == dual["query"]["t2i"]["repeats"] == 20  # default
    # By hand, Flickr30K 1K (1,000 images, 5,000 texts):
    # dual: encode 1000 x 0.5 + 5000 x 0.25 = 1750 s; rank 6000 queries x 2^-12 s.
    dual_s = 1750 + 6000 / 4096
    assert dual["total_s"] == dual_s == 1751.46484375
    # cross, full scoring: features 1750 s + 5,000,000 pairs x 2^-10 s.
    full_s = 1750 + 5_000_000 / 1024
    assert cross["full_scoring"]["total_s"] == full_s == 6632.8125
    # cross, top-4 re-ranking: features + 4 x 6000 pairs + the dual first stage.
    rerank_s = 1750 + 24_000 / 1024 + dual_s
    assert cross["topk_rerank"]["total_s"] == rerank_s == 3524.90234375
    assert cross["full_scoring"]["per_query_s"] == {"i2t": 5000 / 1024, "t2i": 1000 / 1024}
    # The ratio is against full scoring unless re-ranking is asked for by name.
    assert eff.inference_time_ratio(dual, cross)["ratio"] == dual_s / full_s
    reranked = eff.inference_time_ratio(dual, cross, cross_mode="topk_rerank")
    assert (reranked["ratio"], reranked["cross_mode"]) == (dual_s / rerank_s, "topk_rerank")
    # A first stage given as bare seconds is added as given.
    bare = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol="flickr30k_1k",
                                   device=CPU, budget_s=1.0, pair_batch_size=8, k=4,
                                   first_stage=100.0)["topk_rerank"]
    assert bare["total_s"] == 1750 + 24_000 / 1024 + 100.0
    assert bare["per_query_s"] == {"i2t": 4 / 1024, "t2i": 4 / 1024}
    none = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol="flickr30k_1k",
                                   device=CPU, budget_s=1.0, pair_batch_size=8,
                                   k=4)["topk_rerank"]
    assert (none["k"], none["first_stage_s"]) == (4, None)
    assert none["total_s"] == 1750 + 24_000 / 1024  # no first stage: nothing added
    assert none["includes"][-1] == "no first stage (none given)"


def test_cross_encoder_full_scoring_measured_when_it_fits() -> None:
    images, tokens = _dual_batch()
    cross = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol=(2, 6), device=CPU,
                                    budget_s=10.0, pair_batch_size=8)
    assert cross["full_scoring"]["status"] == "measured"
    assert cross["full_scoring"]["pairs"]["sample_units"] == 12
    assert "topk_rerank" not in cross


def test_protocol_flops_give_the_order_of_the_paper_ratio() -> None:
    image, text, pair = 35_000_000_000, 5_500_000_000, 32_500_000_000
    n_images, n_texts = eff.PROTOCOLS["coco_5k"]
    dual = eff.dual_protocol_flops(n_images, n_texts, image_flops=image, text_flops=text,
                                   embed_dim=1024)
    cross = eff.cross_protocol_flops(n_images, n_texts, image_flops=image, text_flops=text,
                                     pair_flops=pair, k=128, first_stage_flops=dual["total_flops"])
    assert dual["total_flops"] == 5000 * image + 25000 * text + 2 * 5000 * 25000 * 1024
    assert cross["full_scoring_flops"] == cross["feature_flops"] + 5000 * 25000 * pair
    assert dual["total_flops"] / cross["full_scoring_flops"] < 3e-3
    assert cross["topk_rerank_flops"] < cross["full_scoring_flops"]


def test_efficiency_block_is_json_ready() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no undercount warnings on the toys
        flops = flops_summary(ToyCross, image_size=8, text_len=5)
    block = eff.efficiency_block(device=CPU, precision="fp32",
                                 params=param_counts({"fusion": ToyCross()}), flops=flops)
    assert block["flops_convention"] == FLOPS_CONVENTION
    assert block["flops"]["pair_score_flops"] > 0 and block["hardware"]
    json.dumps(block)


def test_steps_can_be_combined_in_one_count() -> None:
    counts = count_model_flops(ToyDual, {"image": image_step(8), "text": text_step(3)})
    assert set(counts) == {"image", "text"}
    assert all(c.mode == "meta" for c in counts.values())


def test_protocol_flops_dicts_by_hand() -> None:
    # 3 images of 100 FLOPs, 4 texts of 10, 8-dim embeddings: index 340, similarity 2*3*4*8.
    assert eff.dual_protocol_flops(3, 4, image_flops=100, text_flops=10, embed_dim=8) == {
        "index_flops": 340, "similarity_flops": 192, "total_flops": 532}
    # Pairs of 1000 FLOPs: full = 340 + 12 pairs; top-2 = 340 + 2 x 7 pairs + first stage.
    assert eff.cross_protocol_flops(3, 4, image_flops=100, text_flops=10, pair_flops=1000,
                                    k=2, first_stage_flops=532) == {
        "feature_flops": 340, "full_scoring_flops": 12_340, "topk_rerank_flops": 14_872}
    assert eff.cross_protocol_flops(3, 4, image_flops=100, text_flops=10, pair_flops=1000,
                                    k=2) == {
        "feature_flops": 340, "full_scoring_flops": 12_340, "topk_rerank_flops": 14_340}
    assert "topk_rerank_flops" not in eff.cross_protocol_flops(
        3, 4, image_flops=100, text_flops=10, pair_flops=1000)


def test_efficiency_block_holds_what_it_was_given() -> None:
    costs = {"coco_5k": {"kind": "dual_encoder", "total_s": 1.5}}
    block = eff.efficiency_block(device=CPU, precision="bf16", params={"image": 3, "total": 3},
                                 flops={"image_encode_flops": 7}, costs=costs)
    assert block["precision"] == "bf16" and block["flops_convention"] == FLOPS_CONVENTION
    assert block["params"] == {"image": 3, "total": 3}
    assert block["flops"] == {"image_encode_flops": 7}
    assert block["protocols"] == costs and block["protocols"]["coco_5k"] is not costs["coco_5k"]
    assert block["device"] == "cpu" and block["hardware"]
    empty = eff.efficiency_block(device=CPU, precision="fp32")
    assert (empty["params"], empty["flops"], empty["protocols"]) == ({}, {}, {})
