"""Paired bootstrap comparisons of two runs (harness.analysis.compare)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.analysis.compare import compare_rows, compare_runs, paired_bootstrap
from harness.eval.bootstrap import bootstrap_intervals
from harness.eval.retrieval import record_per_query

PROTOCOL = {"dataset": "synthetic", "split": "test", "n_images": 300, "n_texts": 1500}


def _pair(seed: int = 0, n: int = 1500, better: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of a reference run and of a run that shares its hard and easy queries and moves
    a fraction ``better`` of its non-first queries to rank 1."""
    rng = np.random.default_rng(seed)
    ref = rng.geometric(0.12, n)
    other = ref.copy()
    moved = rng.random(n) < better
    other[moved & (ref > 1)] = 1
    return other, ref


def test_identical_runs_differ_by_zero_with_p_one():
    a, _ = _pair()
    out = paired_bootstrap({"t2i": a}, {"t2i": a.copy()}, samples=200)
    for metric, s in out.items():
        assert (s["diff"], s["low"], s["high"], s["p"], s["significant"]) == (0, 0, 0, 1.0,
                                                                             False), metric


def test_a_real_improvement_is_significant_with_the_observed_difference():
    a, b = _pair(better=0.05)
    out = paired_bootstrap({"t2i": a}, {"t2i": b}, names=("new", "ref"), samples=1000)
    r1 = out["t2i_R@1"]
    assert r1["diff"] == pytest.approx(100 * ((a == 1).mean() - (b == 1).mean()))
    assert r1["diff"] > 0 and r1["low"] > 0 and r1["significant"] and r1["p"] < 0.01
    assert out["t2i_meanr"]["diff"] < 0 and out["t2i_meanr"]["high"] < 0


def test_paired_interval_is_narrower_than_two_separate_ones():
    # Correlated runs: most of each run's spread is the queries', which pairing cancels.
    a, b = _pair(seed=2, better=0.03)
    paired = paired_bootstrap({"t2i": a}, {"t2i": b}, samples=1000)["t2i_R@1"]
    ia = bootstrap_intervals({"t2i": a}, samples=1000)["bounds"]["t2i_R@1"]
    ib = bootstrap_intervals({"t2i": b}, samples=1000)["bounds"]["t2i_R@1"]
    unpaired = math.hypot(ia[1] - ia[0], ib[1] - ib[0])
    assert paired["high"] - paired["low"] < 0.6 * unpaired


def test_r1_p_value_agrees_with_the_normal_paired_test():
    # For R@1 the paired difference is a mean of per-query differences in {-1, 0, 1}:
    # its normal-theory two-sided p-value is what the bootstrap's should be near.
    rng = np.random.default_rng(5)
    n = 2000
    b = rng.geometric(0.3, n)
    a = b.copy()
    flip = rng.random(n)
    a[(flip < 0.03) & (b > 1)] = 1
    a[(flip > 0.96) & (b == 1)] = 2
    d = (a == 1).astype(float) - (b == 1)
    z = d.mean() / (d.std() / math.sqrt(n))
    normal_p = math.erfc(abs(z) / math.sqrt(2))
    assert 0.005 < normal_p < 0.2  # a borderline case, where the factor 2 matters
    boot = paired_bootstrap({"t2i": a}, {"t2i": b}, samples=20000, seed=3)["t2i_R@1"]["p"]
    assert boot == pytest.approx(normal_p, rel=0.3)


def test_rsum_uses_both_directions_and_queries_without_a_positive_are_left_out():
    a_i, b_i = _pair(seed=1, n=300, better=0.1)
    a_t, b_t = _pair(seed=3, n=1500, better=0.1)
    t2t_a, t2t_b = a_t.copy(), b_t.copy()
    t2t_a[:10] = t2t_b[:10] = 0  # skipped in both runs
    out = paired_bootstrap({"i2t": a_i, "t2i": a_t, "t2t": t2t_a},
                           {"i2t": b_i, "t2i": b_t, "t2t": t2t_b}, samples=300)
    keys = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert out["rsum"]["diff"] == pytest.approx(sum(out[k]["diff"] for k in keys))
    assert out["t2t_meanr"]["diff"] == pytest.approx(t2t_a[10:].mean() - t2t_b[10:].mean())


def test_different_query_counts_are_refused_naming_both_runs():
    with pytest.raises(ValueError) as err:
        paired_bootstrap({"t2i": np.ones(5, int)}, {"t2i": np.ones(6, int)},
                         names=("eval-a", "eval-b"))
    assert str(err.value) == ("t2i: eval-a has 5 queries and eval-b has 6; a paired "
                              "comparison needs the same queries")


def _run(root: Path, name: str, ranks: dict[str, np.ndarray] | None,
         protocol: dict = PROTOCOL) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record = {"stage_id": name, "protocol": protocol}
    if ranks is not None:
        record.update(record_per_query(run_dir, {d: torch.as_tensor(r) for d, r in
                                                 ranks.items()}, {"samples": 0}))
    (run_dir / "result.json").write_text(json.dumps(record))
    return run_dir


def test_runs_on_another_split_are_refused_naming_both(tmp_path):
    a, b = _pair(n=1500)
    ra = _run(tmp_path, "eval-clip-synthetic-aaaaaaaa", {"t2i": a})
    rb = _run(tmp_path, "eval-clip-synthetic-bbbbbbbb", {"t2i": b}, {**PROTOCOL, "split": "val"})
    with pytest.raises(ValueError) as err:
        compare_runs(ra, rb)
    assert str(err.value) == (
        "eval-clip-synthetic-aaaaaaaa and eval-clip-synthetic-bbbbbbbb were not evaluated on "
        "the same split and protocol (split: 'test' vs 'val'): no paired comparison")
    out = compare_runs(ra, _run(tmp_path, "eval-c", {"t2i": b}), samples=100)
    assert out["t2i_R@1"]["diff"] == pytest.approx(100 * ((a == 1).mean() - (b == 1).mean()))


def test_compare_rows_gives_every_row_against_the_reference(tmp_path):
    a, b = _pair(better=0.05)
    rows = [("eval-new", _run(tmp_path, "eval-new", {"t2i": a})),
            ("eval-ref", _run(tmp_path, "eval-ref", {"t2i": b})),
            ("eval-old", _run(tmp_path, "eval-old", None)),  # no per-query record
            ("eval-same", _run(tmp_path, "eval-same", {"t2i": b})),
            ("eval-worse", _run(tmp_path, "eval-worse", {"t2i": np.where((b == 1) & (np.arange(b.size) % 3 == 0), 2, b)}))]
    df = pd.DataFrame({"stage_id": [r[0] for r in rows], "run_dir": [str(r[1]) for r in rows]})
    out = compare_rows(df, "eval-ref", metrics=["t2i_R@1"], samples=300)
    assert out["stage_id"].tolist() == ["eval-new", "eval-old", "eval-same", "eval-worse"]
    assert (out["reference"] == "eval-ref").all()
    new, old, same, worse = (out.iloc[i] for i in range(4))
    assert worse["significant"] and worse["high"] < 0
    assert new["significant"] and new["diff"] > 0 and new["note"] == ""
    assert math.isnan(old["diff"]) and not old["significant"]
    assert "has no per_query ranks" in old["note"]
    assert same["diff"] == 0 and same["p"] == 1.0 and not same["significant"]
    with pytest.raises(ValueError, match="reference stage 'eval-x' is not a row"):
        compare_rows(df, "eval-x")
