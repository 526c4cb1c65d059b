"""Claims of harness.analysis.compare that its whole-module mutation run found untested (see
docs/testing.md, "Mutation testing")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import harness.analysis.compare as compare
from harness.analysis.compare import (
    Reference,
    _summary,
    check_same_queries,
    compare_rows,
    compare_runs,
    paired_bootstrap,
    paired_seeds,
    read_reference,
)
from harness.eval.retrieval import record_per_query


def test_a_reference_matches_its_model_with_the_same_overrides_in_any_order() -> None:
    ref = read_reference({"name": "g", "reference": {"model": "cookie",
                                                     "overrides": ["b=2", "a=1"]}})
    assert ref == Reference("cookie", frozenset({"a=1", "b=2"}))
    assert ref.matches("cookie", "a=1 b=2") and ref.matches("cookie", "b=2  a=1")
    assert not ref.matches("cookie", "a=1")  # a subset of the overrides is another variant
    assert not ref.matches("cookie", "a=1 b=2 c=3")
    assert not ref.matches("clip", "a=1 b=2")  # same overrides, other model
    assert ref.describe() == "cookie (a=1 b=2)"  # sorted, whatever order the grid gave


N = 128  # queries per run
PROTOCOL = {"dataset": "synthetic", "split": "test", "n_images": N, "n_texts": N}
# Spread-out rank-1 queries: intervals and p-values then depend on which queries are drawn.
ROW = np.where(np.arange(N) % 3 == 0, 1, 5)
REF = np.where(np.arange(N) % 5 == 0, 1, 5)
OPTIONS = {"samples": 40, "seed": 11, "level": 0.5}  # none of them the default


def _run(root: Path, name: str, ranks: dict[str, np.ndarray],
         protocol: dict[str, Any] = PROTOCOL) -> str:
    """An evaluated run directory with these per-query ranks."""
    run_dir = root / name
    run_dir.mkdir()
    record = {"protocol": protocol, **record_per_query(run_dir, ranks, {"samples": 0})}
    (run_dir / "result.json").write_text(json.dumps(record))
    return str(run_dir)


def _interval(summary: dict[str, Any]) -> tuple[float, float, float]:
    return summary["low"], summary["high"], summary["p"]


@pytest.mark.parametrize("float_side", [0, 1])
def test_ranks_that_are_not_integers_are_refused_naming_the_run_and_direction(
        float_side: int) -> None:
    ranks = [{"t2i": np.array([1, 2, 3])}, {"t2i": np.array([1, 2, 3])}]
    ranks[float_side]["t2i"] = np.array([1.0, 2.5, 3.0])
    names = ("eval-a", "eval-b")
    with pytest.raises(ValueError) as err:
        paired_bootstrap(ranks[0], ranks[1], names=names, samples=10)
    assert str(err.value) == (f"ranks '{names[float_side]}:t2i' must be integers, "
                              "got float64")


def test_an_interval_wholly_above_zero_is_significant_however_close_to_zero() -> None:
    drawn = np.linspace(0.2, 0.9, 101)
    out = _summary(0.5, drawn, level=0.9)
    assert 0 < out["low"] < 1 and out["significant"]
    touching = _summary(0.5, np.maximum(drawn - 0.5, 0.0), level=0.9)
    assert touching["low"] == 0 and not touching["significant"]


@pytest.mark.parametrize("moved", [0, N - 1])
def test_a_resample_can_draw_the_first_and_the_last_query(moved: int) -> None:
    # Only one query differs between the runs: a resample differs from 0 only by drawing it.
    a, b = np.full(N, 5), np.full(N, 5)
    a[moved] = 1
    r1 = paired_bootstrap({"i2t": a}, {"i2t": b}, samples=200)["i2t_R@1"]
    assert r1["diff"] == 100 / N and r1["low"] == 0 and r1["high"] > 0


@pytest.mark.parametrize("samples", [150, 250])
def test_samples_beyond_one_block_of_draws_are_exactly_that_many(samples: int) -> None:
    # Every resampled difference is below 0, so p counts only the observed sample on the
    # other side: 2 / (samples + 1) tells how many were drawn.
    worse, better = np.full(64, 5), np.where(np.arange(64) < 32, 1, 5)
    r1 = paired_bootstrap({"i2t": worse}, {"i2t": better}, samples=samples)["i2t_R@1"]
    assert r1["high"] < 0 and r1["p"] == 2 / (samples + 1)


def test_runs_without_a_shared_direction_are_refused_listing_the_second_runs_too() -> None:
    ones = np.ones(4, int)
    with pytest.raises(ValueError) as err:
        paired_bootstrap({"i2t": ones}, {"t2t": ones, "i2i": ones}, names=("eval-a", "eval-b"))
    assert str(err.value) == "eval-a (i2t) and eval-b (t2t, i2i) share no ranked direction"
    with pytest.raises(ValueError) as err:
        paired_bootstrap({"i2t": ones}, {}, names=("eval-a", "eval-b"))
    assert str(err.value) == "eval-a (i2t) and eval-b (nothing) share no ranked direction"


def test_protocols_that_differ_in_several_fields_are_refused_naming_each() -> None:
    other = {**PROTOCOL, "split": "val", "n_texts": 640}
    with pytest.raises(ValueError) as err:
        check_same_queries(PROTOCOL, other, ("eval-a", "eval-b"))
    assert str(err.value) == (
        "eval-a and eval-b were not evaluated on the same split and protocol (split: 'test' "
        "vs 'val'; n_texts: 128 vs 640): no paired comparison")


def test_compare_runs_names_both_run_directories_and_passes_its_options_on(
        tmp_path: Path) -> None:
    run = _run(tmp_path, "eval-row", {"i2t": ROW})
    ref = _run(tmp_path, "eval-ref", {"i2t": REF})
    got = compare_runs(Path(run), Path(ref), **OPTIONS)["i2t_R@1"]
    want = paired_bootstrap({"i2t": ROW}, {"i2t": REF}, **OPTIONS)["i2t_R@1"]
    assert _interval(got) == _interval(want)
    assert _interval(got) != _interval(paired_bootstrap({"i2t": ROW}, {"i2t": REF})["i2t_R@1"])
    with pytest.raises(ValueError) as err:
        compare_runs(Path(_run(tmp_path, "eval-t2t", {"t2t": ROW})), Path(ref))
    assert str(err.value) == "eval-t2t (t2t) and eval-ref (i2t) share no ranked direction"


def test_rows_that_cannot_be_paired_with_the_reference_are_noted_naming_both(
        tmp_path: Path) -> None:
    df = pd.DataFrame({"stage_id": ["eval-ref", "eval-val", "eval-t2t"], "run_dir": [
        _run(tmp_path, "eval-ref", {"i2t": REF}),
        _run(tmp_path, "eval-val", {"i2t": ROW}, {**PROTOCOL, "split": "val"}),
        _run(tmp_path, "eval-t2t", {"t2t": ROW})]})
    out = compare_rows(df, "eval-ref", metrics=["i2t_R@1"], samples=20)
    assert out["note"].tolist() == [
        "eval-val and eval-ref were not evaluated on the same split and protocol (split: "
        "'val' vs 'test'): no paired comparison",
        "eval-t2t (t2t) and eval-ref (i2t) share no ranked direction"]
    assert out[["diff", "low", "high", "p"]].isna().all().all()
    assert not out["significant"].any()


def test_seed_pairs_pass_their_options_to_the_bootstrap(tmp_path: Path) -> None:
    pairs = [(("row", _run(tmp_path, "row", {"i2t": ROW})),
              ("ref", _run(tmp_path, "ref", {"i2t": REF})))]
    got = paired_seeds(pairs, **OPTIONS)["i2t_R@1"]
    want = paired_bootstrap({"i2t": ROW}, {"i2t": REF}, **OPTIONS)["i2t_R@1"]
    assert got["n"] == 1 and _interval(got) == _interval(want)


def test_a_seed_pair_whose_reference_has_no_ranks_is_noted_and_later_pairs_still_count(
        tmp_path: Path) -> None:
    gone = tmp_path / "gone"  # the reference run of this seed was never written
    pairs = [(("a", _run(tmp_path, "a", {"i2t": ROW})), ("gone", str(gone))),
             (("b", _run(tmp_path, "b", {"i2t": ROW})),
              ("ref", _run(tmp_path, "ref", {"i2t": REF})))]
    out = paired_seeds(pairs, samples=20)
    assert out["i2t_R@1"]["n"] == 1
    assert out["note"] == (f"{gone}: no readable result.json ([Errno 2] No such file or "
                           f"directory: '{gone / 'result.json'}')")


@pytest.mark.parametrize("diff, low, high, excluding", [
    (0.5, 0.2, 0.8, 1),  # a small difference whose interval lies above 0
    (0.5, 0.0, 1.0, 0),  # an interval that touches 0 does not exclude it
    (-0.5, -0.8, -0.2, 1),
    (-0.5, -1.0, 0.0, 0),
    (-0.5, -0.8, 0.5, 0),
])
def test_a_seed_pair_excludes_zero_only_when_its_interval_lies_strictly_on_the_mean_side(
        diff: float, low: float, high: float, excluding: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def one_row(frame: pd.DataFrame, ref: str, metrics: tuple[str, ...],
                **options: Any) -> pd.DataFrame:
        return pd.DataFrame([{"stage_id": "a", "reference": ref, "metric": m, "diff": diff,
                              "low": low, "high": high, "p": 0.01, "significant": True,
                              "note": ""} for m in metrics])

    monkeypatch.setattr(compare, "compare_rows", one_row)
    out = paired_seeds([(("a", "run-a"), ("ref", "run-ref"))])
    for metric in compare.TABLE_METRICS:
        assert (out[metric]["excluding"], out[metric]["significant"]) == (excluding,
                                                                         bool(excluding))
