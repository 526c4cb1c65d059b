"""The committed paper-size cost table (results/paper_size_cpu) is consistent with itself and
with the cost model: its ratios and totals are recomputed from the CSV's parts, never re-run.

README quotes from this table: COOKIE needs 3,791 s for COCO 5K on the reference CPU, a
ViLT-B/32-sized single-stream model 1.13 M s for top-128 re-ranking and 36 M s for full
scoring; dual / single = 3.3e-3 against re-ranking and 1.1e-4 against full scoring.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.eval import efficiency as eff

TABLES = Path(__file__).resolve().parents[1] / "results" / "paper_size_cpu" / "tables"
K_TEST = 128  # the paper-size single-stream re-ranks the top 128 (configs/size)


@pytest.fixture(scope="module")
def cost() -> pd.DataFrame:
    return pd.read_csv(TABLES / "table3_cost.csv")


@pytest.fixture(scope="module")
def ratio() -> pd.DataFrame:
    return pd.read_csv(TABLES / "table3_ratio.csv")


def _one(frame: pd.DataFrame, **match: object) -> pd.Series:
    rows = frame
    for key, value in match.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, match
    return rows.iloc[0]


def test_each_ratio_is_dual_total_over_cross_total_of_the_cost_rows(
        cost: pd.DataFrame, ratio: pd.DataFrame) -> None:
    assert len(ratio) == 8  # 2 protocols x 2 dual encoders x 2 single-stream modes
    for _, row in ratio.iterrows():
        dual = _one(cost, stage_id=row["dual_stage_id"], protocol=row["protocol"], mode="dual")
        cross = _one(cost, stage_id=row["cross_stage_id"], protocol=row["protocol"],
                     mode=row["cross_mode"])
        assert row["dual_total_s"] == dual["total_s"]
        assert row["cross_total_s"] == cross["total_s"]
        assert row["ratio"] == row["dual_total_s"] / row["cross_total_s"]


def test_headline_numbers_quoted_in_the_readme(ratio: pd.DataFrame) -> None:
    full = _one(ratio, protocol="coco_5k", dual_model="cookie", cross_mode="full_scoring")
    rerank = _one(ratio, protocol="coco_5k", dual_model="cookie", cross_mode="topk_rerank")
    assert round(full["dual_total_s"]) == 3791
    assert f"{rerank['cross_total_s']:.3g}" == "1.13e+06"
    assert f"{full['cross_total_s']:.2g}" == "3.6e+07"
    assert f"{rerank['ratio']:.1e}" == "3.3e-03"
    assert f"{full['ratio']:.1e}" == "1.1e-04"


def test_totals_are_the_sums_of_their_parts(cost: pd.DataFrame) -> None:
    for _, row in cost.iterrows():
        if row["mode"] == "dual":
            assert row["total_s"] == pytest.approx(row["index_s"] + row["ranking_s"], rel=1e-12)
        elif row["mode"] == "full_scoring":
            # Per query: every gallery item's pair (i2t: n_texts pairs, t2i: n_images pairs);
            # the protocol: features once plus all n_images x n_texts pairs.
            per_pair = row["query_i2t_s"] / row["n_texts"]
            assert row["query_t2i_s"] == pytest.approx(row["n_images"] * per_pair, rel=1e-12)
            pairs_s = row["n_images"] * row["n_texts"] * per_pair
            assert row["total_s"] == pytest.approx(row["index_s"] + pairs_s, rel=1e-12)
            assert row["index_s"] > 0  # the features are part of the total
    cookie = _one(cost, model="cookie", protocol="coco_5k", mode="dual")
    assert cookie["index_s"] / cookie["total_s"] > 0.99  # encoding dominates a dual encoder


def test_ratios_from_the_cost_model_with_the_tables_parts(cost: pd.DataFrame,
                                                          ratio: pd.DataFrame) -> None:
    ss = "single_stream"
    for protocol in ("coco_5k", "flickr30k_1k"):
        dual = _one(cost, model="cookie", protocol=protocol, mode="dual")
        full = _one(cost, model=ss, protocol=protocol, mode="full_scoring")
        rerank = _one(cost, model=ss, protocol=protocol, mode="topk_rerank")
        n_images, n_texts = eff.PROTOCOLS[protocol]
        per_pair = full["query_i2t_s"] / n_texts
        cross = {"full_scoring": {"total_s": full["index_s"] + n_images * n_texts * per_pair,
                                  "status": "extrapolated"},
                 "topk_rerank": {"total_s": rerank["total_s"], "status": "extrapolated"}}
        first = {"total_s": dual["total_s"], "status": "extrapolated"}
        for mode in ("full_scoring", "topk_rerank"):
            want = _one(ratio, protocol=protocol, dual_model="cookie", cross_mode=mode)
            got = eff.inference_time_ratio(first, cross, cross_mode=mode)
            assert got["ratio"] == pytest.approx(want["ratio"], rel=1e-12), (protocol, mode)


def test_protocol_flops_equal_hand_computed_counts(cost: pd.DataFrame) -> None:
    cookie = _one(cost, model="cookie", protocol="coco_5k", mode="dual")
    image, text = int(cookie["image_flops"]), int(cookie["text_flops"])
    assert (image, text) == (28_681_340_928, 6_425_186_304)
    dual = eff.dual_protocol_flops(5000, 25000, image_flops=image, text_flops=text,
                                   embed_dim=1024)
    # 5000 images + 25000 texts encoded, plus a 5000 x 25000 x 1024 similarity product.
    assert dual["total_flops"] == 304_292_362_240_000 == cookie["flops"]
    ss = _one(cost, model="single_stream", protocol="coco_5k", mode="full_scoring")
    features, pair = int(ss["image_flops"]), int(ss["pair_flops"])
    assert (features, int(ss["text_flops"]), pair) == (679_477_248, 0, 31_222_963_200)
    cross = eff.cross_protocol_flops(5000, 25000, image_flops=features, text_flops=0,
                                     pair_flops=pair, k=K_TEST)
    # Features: 5000 x 679,477,248. Full: + 125 M pairs. Top-128: + 128 x 30,000 pairs.
    assert cross["full_scoring_flops"] == 3_902_873_797_386_240_000 == int(ss["flops"])
    rerank = _one(cost, model="single_stream", protocol="coco_5k", mode="topk_rerank")
    assert cross["topk_rerank_flops"] == 119_899_576_074_240_000 == int(rerank["flops"])
