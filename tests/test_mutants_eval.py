"""Retrieval-metric and cost-model claims the mutation runs found untested.

Each test protects one claim of :mod:`harness.eval.retrieval` or :mod:`harness.eval.efficiency`
that a surviving mutant showed no selected test checked (see docs/testing.md, "Mutation
testing"). Everything runs on the CPU with tiny inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_efficiency import ToyCross, ToyDual, _dual_batch

from harness.eval import efficiency as eff
from harness.eval.bootstrap import (
    DEFAULT_KS,
    DEFAULT_LEVEL,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    bootstrap_intervals,
)
from harness.eval.retrieval import PER_QUERY_FILE, read_per_query, record_per_query, write_per_query

# ------------------------------------------------------------------ retrieval: per-query ranks


def test_per_query_ranks_that_are_not_1d_integers_are_refused_naming_the_direction(
        tmp_path: Path) -> None:
    # A float or 2-D rank array would silently truncate or flatten in ranks.npz.
    with pytest.raises(ValueError) as err:
        write_per_query(tmp_path, {"i2t": torch.tensor([1, 2]), "t2i": np.array([1.0, 2.0])})
    assert str(err.value) == ("per-query ranks 't2i' must be a 1-D integer array, got float64 "
                              "of shape (2,)")
    with pytest.raises(ValueError, match=r"^per-query ranks 'i2t' .* int64 of shape \(1, 2\)$"):
        write_per_query(tmp_path, {"i2t": torch.tensor([[1, 2]])})
    assert not (tmp_path / PER_QUERY_FILE).exists()


RANKS = {"i2t": np.array([1, 3, 2, 12, 1, 6]), "t2i": np.array([2, 1, 1, 9, 4, 1, 1, 30])}


@pytest.mark.parametrize("bootstrap", [None, {}])
def test_per_query_intervals_default_to_the_bootstrap_defaults(
        tmp_path: Path, bootstrap: dict | None) -> None:
    # No task.bootstrap (or an empty one) means 1000 resamples, seed 0, a 95 % interval.
    got = record_per_query(tmp_path, RANKS, bootstrap)["intervals"]
    assert (got["samples"], got["seed"], got["level"]) == (DEFAULT_SAMPLES, DEFAULT_SEED,
                                                           DEFAULT_LEVEL)
    assert got == bootstrap_intervals(RANKS, DEFAULT_KS, DEFAULT_SAMPLES, DEFAULT_SEED,
                                      DEFAULT_LEVEL)


def test_per_query_intervals_use_the_given_samples_seed_and_level(tmp_path: Path) -> None:
    got = record_per_query(tmp_path, RANKS, {"samples": 40, "seed": 7, "level": 0.5},
                           ks=(2,))["intervals"]
    assert (got["samples"], got["seed"], got["level"]) == (40, 7, 0.5)
    assert got == bootstrap_intervals(RANKS, (2,), 40, 7, 0.5)
    # The seed and level change the bounds, so neither may be dropped on the way.
    assert got["bounds"] != bootstrap_intervals(RANKS, (2,), 40, DEFAULT_SEED, 0.5)["bounds"]
    assert got["bounds"] != bootstrap_intervals(RANKS, (2,), 40, 7, DEFAULT_LEVEL)["bounds"]


def test_a_single_bootstrap_sample_still_gives_intervals(tmp_path: Path) -> None:
    # Only samples: 0 turns the intervals off.
    got = record_per_query(tmp_path, RANKS, {"samples": 1})
    assert got["intervals"]["samples"] == 1
    assert set(got["intervals"]["bounds"]) >= {"i2t_R@1", "t2i_meanr", "rsum"}


def test_queries_without_a_positive_are_left_out_of_the_intervals(tmp_path: Path) -> None:
    # Rank 0 marks a query with no positive (t2t, i2i): it is written but not resampled.
    ranks = {"t2t": np.array([0, 2, 1, 0, 5, 1])}
    got = record_per_query(tmp_path, ranks, {"samples": 30, "seed": 3})
    assert got["intervals"] == bootstrap_intervals({"t2t": [2, 1, 5, 1]}, DEFAULT_KS, 30, 3)
    assert read_per_query(tmp_path / got["per_query"])["t2t"].tolist() == [0, 2, 1, 0, 5, 1]


def test_a_rank_file_holding_pickled_objects_is_refused(tmp_path: Path) -> None:
    # ranks.npz is read with allow_pickle=False: a file from elsewhere cannot run code.
    path = tmp_path / PER_QUERY_FILE
    np.savez(path, i2t=np.array([1, "two"], dtype=object))
    with pytest.raises(ValueError, match=r"not a readable per-query rank file \(Object arrays"):
        read_per_query(path)


def test_a_file_that_is_not_a_rank_file_is_refused_naming_its_path_and_why(
        tmp_path: Path) -> None:
    path = tmp_path / PER_QUERY_FILE
    path.write_text("i2t,t2i\n1,2\n")
    with pytest.raises(ValueError) as err:
        read_per_query(path)
    # The message names the file and carries numpy's reason.
    assert str(err.value) == f"{path}: not a readable per-query rank file ({err.value.__cause__})"
    assert str(err.value.__cause__)


# ------------------------------------------------------------------ efficiency: the cost model

CPU = torch.device("cpu")


def _spy_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Keep every step the cost model times, by unit (images, texts, queries, pairs); time it
    for real."""
    steps: dict[str, list] = {}
    real = eff.time_workload

    def spy(step, **kwargs):
        steps.setdefault(kwargs["unit"], []).append(step)
        return real(step, **kwargs)

    monkeypatch.setattr(eff, "time_workload", spy)
    return steps


def test_an_unknown_protocol_error_lists_the_known_ones() -> None:
    with pytest.raises(KeyError) as err:
        eff.resolve_protocol("coco_1k")
    assert err.value.args[0] == "unknown protocol 'coco_1k'; known: coco_5k, flickr30k_1k"


def test_a_top_k_larger_than_the_gallery_ranks_the_whole_gallery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 images, 3 texts, 16-dim embeddings, k = 10: every query's top-k is its whole gallery
    # (k is cut to the gallery's size, not to the embedding width).
    steps = _spy_steps(monkeypatch)
    images, tokens = _dual_batch()
    costs = eff.dual_encoder_costs(ToyDual(dim=16), images, tokens, protocol=(2, 3), device=CPU,
                                   budget_s=10.0, k=10, query_repeats=2)
    assert costs["k"] == 10 and costs["ranking"]["i2t"]["units"] == 2
    i2t, t2i = steps["queries"]
    values, indices = i2t(2)
    assert indices.shape == (2, 3) and sorted(indices[0].tolist()) == [0, 1, 2]
    assert (values[:, :-1] >= values[:, 1:]).all()  # best first
    assert t2i(3).indices.shape == (3, 2)


def test_each_single_query_timing_encodes_one_query_against_the_other_gallery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The per-query latency is one image (or one caption) encoded and ranked, not a batch.
    calls = []
    real = eff.measure_latency

    def spy(fn, **kwargs):
        calls.append(fn)
        return real(fn, **kwargs)

    monkeypatch.setattr(eff, "measure_latency", spy)
    images, tokens = _dual_batch(n_images=4, n_texts=6)
    costs = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol=(5, 7), device=CPU,
                                   budget_s=10.0, k=3, query_repeats=2)
    assert costs["query"]["i2t"]["repeats"] == 2
    with torch.inference_mode():  # the galleries are inference tensors
        i2t, t2i = (call() for call in calls)
    assert i2t.indices.shape == t2i.indices.shape == (1, 3)
    assert int(i2t.indices.max()) < 7 and int(t2i.indices.max()) < 5


def test_a_dual_encoder_record_names_its_protocol_k_precision_and_ranking_seconds() -> None:
    images, tokens = _dual_batch()
    costs = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol=(3, 5), device=CPU,
                                   budget_s=10.0, k=2, query_repeats=2)
    assert (costs["protocol"], costs["k"], costs["precision"]) == ("custom_3x5", 2, "fp32")
    ranking = costs["ranking"]
    assert ranking["seconds"] == ranking["i2t"]["seconds"] + ranking["t2i"]["seconds"] > 0


def test_cost_defaults_are_the_documented_ones() -> None:
    # k = 10, ranking batches of 1024 queries, pair batches of 256, one warm-up batch; each
    # is written to the record (requested_batch_size, warmup_batches).
    images, tokens = _dual_batch()
    dual = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol=(2, 3), device=CPU,
                                  budget_s=10.0, query_repeats=2)
    assert dual["k"] == 10
    assert dual["ranking"]["i2t"]["requested_batch_size"] == 1024
    assert {w["warmup_batches"] for part in ("index", "ranking")
            for w in dual[part].values() if isinstance(w, dict)} == {1}
    cross = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol=(2, 3), device=CPU,
                                    budget_s=10.0)
    pairs = cross["full_scoring"]["pairs"]
    assert (pairs["requested_batch_size"], pairs["warmup_batches"]) == (256, 1)
    assert cross["features"]["image"]["warmup_batches"] == 1


def test_costs_in_bf16_run_under_bf16_autocast_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every timed step (encodes, features, pair scores) runs under the precision's autocast.
    steps = _spy_steps(monkeypatch)
    images, tokens = _dual_batch()
    dual = eff.dual_encoder_costs(ToyDual(), images, tokens, protocol=(2, 3), device=CPU,
                                  budget_s=10.0, k=2, precision="bf16", query_repeats=2)
    assert dual["precision"] == "bf16"
    assert steps["images"][0](1).dtype == steps["texts"][0](1).dtype == torch.bfloat16
    cross = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol=(2, 3), device=CPU,
                                    budget_s=10.0, pair_batch_size=4, precision="bf16")
    assert cross["precision"] == "bf16"
    assert steps["images"][1](1).tokens.dtype == torch.bfloat16
    assert steps["pairs"][0](2).dtype == torch.bfloat16


def test_cross_encoder_feature_steps_encode_the_rows_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A step of n encodes n images or n texts: a last, partial batch costs less than a full one.
    steps = _spy_steps(monkeypatch)
    images, tokens = _dual_batch(n_images=4, n_texts=6)
    eff.cross_encoder_costs(ToyCross(), images, tokens, protocol=(2, 3), device=CPU,
                            budget_s=10.0, pair_batch_size=4)
    (image_step,), (text_step,), (pair_step,) = steps["images"], steps["texts"], steps["pairs"]
    assert (len(image_step(1)), len(image_step(3))) == (1, 3)
    assert (len(text_step(1)), len(text_step(2))) == (1, 2)
    assert pair_step(3).shape == (3,)


def test_a_cross_encoder_record_names_its_protocol_sizes_and_precision() -> None:
    images, tokens = _dual_batch()
    cross = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol=(2, 3), device=CPU,
                                    budget_s=10.0, pair_batch_size=4)
    assert {key: cross[key] for key in ("kind", "protocol", "n_images", "n_texts", "precision")} \
        == {"kind": "cross_encoder", "protocol": "custom_2x3", "n_images": 2, "n_texts": 3,
            "precision": "fp32"}


def test_rerank_per_query_seconds_add_the_first_stage_query_latency() -> None:
    # Re-ranking one query costs its k pair forwards plus the first stage's own query latency,
    # direction by direction.
    first = {"total_s": 5.0, "status": "measured",
             "query": {"i2t": {"median_s": 0.25}, "t2i": {"median_s": 0.5}}}
    images, tokens = _dual_batch()
    rerank = eff.cross_encoder_costs(ToyCross(), images, tokens, protocol=(2, 3), device=CPU,
                                     budget_s=10.0, pair_batch_size=4, k=2,
                                     first_stage=first)["topk_rerank"]
    per_pair = rerank["pairs"]["seconds_per_unit"]
    assert rerank["per_query_s"] == {"i2t": 2 * per_pair + 0.25, "t2i": 2 * per_pair + 0.5}
    assert rerank["first_stage_s"] == 5.0


def test_the_time_ratio_record_carries_both_totals() -> None:
    dual = {"total_s": 1.0, "status": "measured", "hardware": "cpu x"}
    cross = {"full_scoring": {"total_s": 4.0, "status": "extrapolated"}, "hardware": "cpu x"}
    assert eff.inference_time_ratio(dual, cross) == {
        "ratio": 0.25, "dual_total_s": 1.0, "cross_total_s": 4.0, "cross_mode": "full_scoring",
        "same_hardware": True, "status": "extrapolated"}
