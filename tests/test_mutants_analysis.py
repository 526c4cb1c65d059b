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
import pytest

from harness.analysis.cells import seed_of, status_text
from harness.analysis.compare import paired_seeds
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
    pairs = [(("a", _run(tmp_path, "a", 32)), ("ref", ref)), (("gone", str(gone)), ("ref", ref))]
    out = paired_seeds(pairs, samples=200)
    assert out["i2t_R@1"]["n"] == 1
    assert out["note"] == f"{gone}: no readable result.json " + \
        f"([Errno 2] No such file or directory: '{gone / 'result.json'}')"
