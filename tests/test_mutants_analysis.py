"""Claims of the table cells and paired comparisons that the mutation runs found untested.

Each test protects one claim of :mod:`harness.analysis.cells` or
:mod:`harness.analysis.compare` that a surviving mutant showed no other test checked (see
docs/testing.md, "Mutation testing").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis.cells import seed_of, status_text
from harness.analysis.compare import (
    COLUMNS,
    _summary,
    compare_rows,
    load_run,
    paired_bootstrap,
    paired_seeds,
    paired_text,
)
from harness.analysis.tables import paper_sections
from harness.eval.retrieval import record_per_query

N = 128  # queries per run: multiples of 1/128 are exact, so differences add up exactly
PROTOCOL = {"dataset": "synthetic", "split": "test", "n_images": N, "n_texts": N}


def _run(root: Path, name: str, at_one: int) -> str:
    """An evaluated run directory whose first ``at_one`` i2t queries rank 1 and the rest 5."""
    run_dir = root / name
    run_dir.mkdir()
    ranks = np.where(np.arange(N) < at_one, 1, 5)
    record = {"protocol": PROTOCOL, **record_per_query(run_dir, {"i2t": ranks}, {"samples": 0})}
    (run_dir / "result.json").write_text(json.dumps(record))
    return str(run_dir)


def test_a_done_stage_without_a_result_says_no_result_and_why() -> None:
    row = {"status": "done", "has_result": False, "error": "result.json unreadable"}
    assert status_text(row) == "no result: result.json unreadable"
    assert status_text({"status": "done", "has_result": True}) == "done"


def test_a_stage_with_a_result_but_not_done_shows_its_status_not_done() -> None:
    # A result file left by an interrupted attempt is not a finished stage.
    row = {"status": "interrupted", "has_result": True, "error": "SIGTERM"}
    assert status_text(row) == "interrupted (reruns next time): SIGTERM"


def test_a_pending_stage_says_it_has_not_started() -> None:
    assert status_text({"status": "pending", "error": None}) == "pending: not started"


@pytest.mark.parametrize("length", [89, 90])
def test_a_failure_of_up_to_90_characters_is_printed_whole(length: int) -> None:
    error = "x" * length
    assert status_text({"status": "failed", "error": error}) == f"failed: {error}"


@pytest.mark.parametrize("length", [91, 200])
def test_a_longer_failure_is_cut_to_89_characters_and_an_ellipsis(length: int) -> None:
    error = "".join(str(i % 10) for i in range(length))
    assert status_text({"status": "failed", "error": error}) == f"failed: {error[:89]}…"


@pytest.mark.parametrize(("overrides", "seed"), [
    ("model=cookie; seed=3", 3),
    ("+seed=4; data=coco", 4),       # appended to a config without a seed key
    ("++seed=5", 5),                  # forced add
    ("model=clip; seed=-1", -1),      # a negative seed is a seed
    ("seeds=2; model=clip", None),    # another key that starts with "seed"
    ("seed=abc", None),
    ("", None),
])
def test_the_seed_of_a_row_is_read_from_its_overrides(overrides: str, seed: int | None) -> None:
    assert seed_of({"overrides": overrides}) == seed


def test_several_seed_pairs_give_a_mean_difference_and_no_single_interval(
        tmp_path: Path) -> None:
    ref = _run(tmp_path, "ref", 0)
    pairs = [(("a", _run(tmp_path, "a", 32)), ("ref", ref)),
             (("b", _run(tmp_path, "b", 16)), ("ref", ref))]
    r1 = paired_seeds(pairs, samples=200)["i2t_R@1"]
    assert r1["diff"] == pytest.approx((25.0 + 12.5) / 2)
    assert (r1["n"], r1["excluding"], r1["significant"]) == (2, 2, True)
    # One pair's interval would misstate the spread over seeds: none is given.
    assert math.isnan(r1["low"]) and math.isnan(r1["high"]) and math.isnan(r1["p"])


def test_one_seed_pair_gives_its_paired_interval(tmp_path: Path) -> None:
    pairs = [(("a", _run(tmp_path, "a", 32)), ("ref", _run(tmp_path, "ref", 0)))]
    r1 = paired_seeds(pairs, samples=200)["i2t_R@1"]
    assert r1["n"] == 1 and 0 < r1["low"] <= r1["diff"] == 25.0 <= r1["high"] and r1["p"] < 0.05


def test_a_seed_pair_that_cannot_be_compared_is_named_in_the_note(tmp_path: Path) -> None:
    ref = _run(tmp_path, "ref", 0)
    gone = tmp_path / "gone"  # a planned row whose run directory was never written
    also = tmp_path / "also-gone"
    pairs = [(("a", _run(tmp_path, "a", 32)), ("ref", ref)), (("gone", str(gone)), ("ref", ref)),
             (("also", str(also)), ("ref", ref)), (("gone", str(gone)), ("ref", ref))]
    out = paired_seeds(pairs, samples=200)
    assert out["i2t_R@1"]["n"] == 1
    # Each reason once, in order, "; " between them.
    assert out["note"] == "; ".join(
        f"{d}: no readable result.json ([Errno 2] No such file or directory: "
        f"'{d / 'result.json'}')" for d in (gone, also))


def test_the_interval_is_the_central_level_share_of_the_resampled_differences() -> None:
    drawn = np.arange(101.0)  # quantiles of 0..100 are the percentages themselves
    out = _summary(3.0, drawn, level=0.9)
    assert out["diff"] == 3.0 and (out["low"], out["high"]) == pytest.approx((5.0, 95.0))
    assert _summary(3.0, drawn, level=0.5)["low"] == pytest.approx(25.0)


def test_the_p_value_counts_the_observed_sample_once_on_either_side() -> None:
    # 99 resampled differences all below 0: the smaller side holds only the observed one.
    worse, better = np.full(64, 5), np.where(np.arange(64) < 32, 1, 5)
    r1 = paired_bootstrap({"i2t": worse}, {"i2t": better}, samples=99)["i2t_R@1"]
    assert r1["high"] < 0 and r1["p"] == 2 * 1 / 100
    r1 = paired_bootstrap({"i2t": better}, {"i2t": worse}, samples=99)["i2t_R@1"]
    assert r1["low"] > 0 and r1["p"] == 2 * 1 / 100


def test_a_run_without_per_query_ranks_is_refused_saying_how_to_get_them(
        tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"protocol": PROTOCOL}))
    with pytest.raises(ValueError) as err:
        load_run(tmp_path)
    assert str(err.value) == (f"{tmp_path}: result.json has no per_query ranks (evaluated "
                              "before per-query records existed, or not a retrieval eval): "
                              "re-run its eval stage")


def test_compare_rows_without_a_run_dir_column_names_the_columns_it_has() -> None:
    with pytest.raises(ValueError) as err:
        compare_rows(pd.DataFrame({"stage_id": ["a"], "model": ["clip"]}), "a")
    assert str(err.value) == "compare_rows needs a 'run_dir' column; the table has stage_id, model"


def test_compare_rows_passes_its_options_to_the_bootstrap(tmp_path: Path) -> None:
    row = np.where(np.arange(N) % 3 == 0, 1, 5)  # spread out: intervals depend on the draws
    ref = np.where(np.arange(N) % 5 == 0, 1, 5)
    run, ref_run = tmp_path / "row", tmp_path / "ref"
    for run_dir, ranks in ((run, row), (ref_run, ref)):
        run_dir.mkdir()
        record = {"protocol": PROTOCOL, **record_per_query(run_dir, {"i2t": ranks},
                                                            {"samples": 0})}
        (run_dir / "result.json").write_text(json.dumps(record))
    df = pd.DataFrame({"stage_id": ["row", "ref"], "run_dir": [str(run), str(ref_run)]})
    options = {"samples": 40, "seed": 11, "level": 0.5}
    out = compare_rows(df, "ref", metrics=["i2t_R@1"], **options).iloc[0]
    want = paired_bootstrap({"i2t": row}, {"i2t": ref}, names=("row", "ref"),
                            **options)["i2t_R@1"]
    assert (out["low"], out["high"], out["p"]) == (want["low"], want["high"], want["p"])


def test_a_row_that_cannot_be_compared_gets_one_rsum_row_with_the_reason(
        tmp_path: Path) -> None:
    df = pd.DataFrame({"stage_id": ["ref", "gone"],
                       "run_dir": [_run(tmp_path, "ref", 8), str(tmp_path / "gone")]})
    out = compare_rows(df, "ref", samples=50)
    assert out["metric"].tolist() == ["rsum"] and math.isnan(out["diff"].iloc[0])
    assert out["note"].iloc[0].startswith(f"{tmp_path / 'gone'}: no readable result.json")


def test_a_table_of_only_the_reference_gives_an_empty_frame_with_every_column(
        tmp_path: Path) -> None:
    df = pd.DataFrame({"stage_id": ["ref"], "run_dir": [_run(tmp_path, "ref", 8)]})
    out = compare_rows(df, "ref")
    assert out.empty and out.columns.tolist() == list(COLUMNS)


ONE = {"diff": 1.234, "low": 0.5, "high": 2.0, "p": 0.01, "n": 1, "excluding": 1,
       "significant": True}
SEEDS = {"diff": -0.5, "low": math.nan, "high": math.nan, "p": math.nan, "n": 3,
         "excluding": 1, "significant": False}


def test_the_paired_cell_prints_each_difference_with_its_interval_or_seed_count() -> None:
    summary = {"rsum": ONE, "t2i_R@1": SEEDS, "note": ""}
    assert paired_text(summary) == ("RSUM +1.23 [+0.5, +2.0]*; "
                                    "t2i R@1 -0.50 (n=3 seeds, 1/3 exclude 0)")


def test_a_paired_cell_of_metrics_after_a_missing_one_lists_them_all() -> None:
    # rsum needs both directions: a unimodal pair has only i2t_R@1 and t2i_R@1.
    summary = {"i2t_R@1": SEEDS, "t2i_R@1": SEEDS, "note": ""}
    assert paired_text(summary) == ("i2t R@1 -0.50 (n=3 seeds, 1/3 exclude 0); "
                                    "t2i R@1 -0.50 (n=3 seeds, 1/3 exclude 0) — within noise")


def test_an_uncompared_paired_cell_says_why() -> None:
    assert paired_text({"note": "eval-x: no readable result.json"}) == (
        "not compared: eval-x: no readable result.json")
    assert paired_text({"note": ""}) == "not compared: no paired ranks"


def test_a_query_ranked_in_one_run_only_is_left_out_of_the_comparison() -> None:
    # Rank 0: the query had no positive in that run (a skipped unimodal query).
    out = paired_bootstrap({"i2t": np.array([0, 1, 1, 5])}, {"i2t": np.array([2, 1, 5, 0])},
                           samples=20)
    assert out["i2t_R@1"]["diff"] == pytest.approx(100 * (2 - 1) / 2)


def test_runs_without_a_query_ranked_in_both_are_refused_naming_both() -> None:
    with pytest.raises(ValueError) as err:
        paired_bootstrap({"t2i": np.array([0, 3])}, {"t2i": np.array([2, 0])},
                         names=("eval-a", "eval-b"))
    assert str(err.value) == "t2i: no query has a rank in both eval-a and eval-b"


def test_runs_without_a_shared_direction_are_refused_listing_each_ones() -> None:
    ones = np.ones(4, int)
    with pytest.raises(ValueError) as err:
        paired_bootstrap({"i2t": ones, "t2i": ones}, {"t2t": ones}, names=("eval-a", "eval-b"))
    assert str(err.value) == "eval-a (i2t, t2i) and eval-b (t2t) share no ranked direction"
    with pytest.raises(ValueError) as err:
        paired_bootstrap({}, {"t2t": ones}, names=("eval-a", "eval-b"))
    assert str(err.value) == "eval-a (nothing) and eval-b (t2t) share no ranked direction"


def test_a_section_published_with_one_direction_only_is_still_a_section() -> None:
    paper = pd.DataFrame({
        "table": ["t1", "t1", "t1", "t2"], "dataset": ["coco", "coco", "flickr30k", "coco"],
        "split": ["karpathy_test"] * 4,
        "protocol": ["finetuned_5k", "finetuned_5k", "finetuned_1k", "zeroshot_5k"],
        "direction": ["t2i", "i2t", "i2t", "i2t"]})
    assert paper_sections(paper, "t1") == [("coco", ("karpathy_test", "finetuned_5k")),
                                           ("flickr30k", ("karpathy_test", "finetuned_1k"))]
