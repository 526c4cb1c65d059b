"""Claims of the table cells and paired comparisons that the mutation runs found untested.

Each test protects one claim of :mod:`harness.analysis.cells` or
:mod:`harness.analysis.compare` that a surviving mutant showed no other test checked (see
docs/testing.md, "Mutation testing").
"""

from __future__ import annotations

import pytest

from harness.analysis.cells import seed_of, status_text


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
