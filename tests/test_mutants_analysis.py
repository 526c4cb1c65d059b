"""Analysis claims (table cells, paired comparisons, tables) the mutation runs found untested.

Each test protects one claim of :mod:`harness.analysis.cells`, ``compare``, ``tables`` or
``cost_tables`` that a surviving mutant showed no other test checked (see docs/testing.md,
"Mutation testing"). Collected frames are real run directories where the claim is about
reading them, and hand-built frames with the columns ``collect`` writes otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from table_cells import markdown_rows
from test_table_stats import GRID, N_IMAGES, N_TEXTS, TITLE, _ranks, _stage, _tables
from test_table_stats import _run as _eval_run

from harness.analysis.cells import (
    METRICS,
    PaperRow,
    distinguishing_overrides,
    row_intervals,
    seed_of,
    sig,
    status_text,
    without_seed,
)
from harness.analysis.compare import (
    COLUMNS,
    Reference,
    _summary,
    compare_rows,
    load_run,
    paired_bootstrap,
    paired_seeds,
    paired_text,
)
from harness.analysis.cost_tables import ZERO_FLOPS_NOTE, cost_table, ratio_table, unimodal_table
from harness.analysis.paper import load_paper_numbers
from harness.analysis.tables import (
    _comparison_cells,
    _delta,
    _harness_cells,
    _not_run_cells,
    _paper_cells,
    _section_keys,
    grid_tables,
    not_run_command,
    paper_sections,
    protocol_cell,
    retrieval_table,
    section_heading,
    seed_units,
    write_tables,
)
from harness.eval.retrieval import record_per_query
from harness.manifest import ManifestStage
from harness.record import read_record

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
    ("seed=X1", None),                # a value that is not an integer, whatever it starts with
    ("Xseed=7", None),                # only Hydra's + and ~ prefixes are taken off the key
    ("", None),
])
def test_the_seed_of_a_row_is_read_from_its_overrides(overrides: str, seed: int | None) -> None:
    assert seed_of({"overrides": overrides}) == seed


def test_a_missing_stage_says_which_other_configs_ran_it() -> None:
    # collect puts the names of finished runs of the stage under other configs in "error".
    others = "runs of this stage under other configs exist: eval-clip-coco-1a2b3c4d"
    assert status_text({"status": "missing", "error": others}) == (
        f"missing: never run (no run directory); {others}")
    assert status_text({"status": "missing", "error": None}) == (
        "missing: never run (no run directory)")


def test_a_status_the_table_has_no_words_for_is_printed_as_it_is() -> None:
    assert status_text({"status": "queued", "error": None}) == "queued"


@pytest.mark.parametrize(("value", "cell"), [
    (None, ""), (math.nan, ""),      # a missing value prints nothing
    (0, "0"), (0.0, "0"),            # zero is no small number to print in exponent form
    (1e-4, "0.0001"),                # the smallest value printed in decimals
    (5e-5, "5.0e-05"), (-3e-5, "-3.0e-05"),  # smaller ones in exponent form, two digits
])
def test_sig_prints_missing_zero_and_tiny_values(value: Any, cell: str) -> None:
    assert sig(value) == cell


def test_a_table_without_rows_has_no_distinguishing_overrides() -> None:
    assert distinguishing_overrides(pd.DataFrame(columns=["stage_id", "overrides"])) == {}


def test_the_distinguishing_overrides_of_a_row_are_joined_by_a_space() -> None:
    rows = pd.DataFrame({"stage_id": ["a", "b"],
                         "overrides": ["model=x; lr=0.1; layers=2", "model=x; lr=0.2; layers=4"]})
    assert distinguishing_overrides(rows) == {"a": "lr=0.1 layers=2", "b": "lr=0.2 layers=4"}


@pytest.mark.parametrize(("variant", "left"), [
    ("model.layers=2 seed=3 lr=0.1", "model.layers=2 lr=0.1"),
    ("+seed=1 lr=0.1", "lr=0.1"),     # Hydra's append prefix
    ("++seed=1 lr=0.1", "lr=0.1"),    # and its force-add prefix
    ("seed=a=b lr=0.1", "lr=0.1"),    # the key is what precedes the first "="
    ("Xseed=1 lr=0.1", "Xseed=1 lr=0.1"),  # another key that ends in "seed"
])
def test_a_variant_without_its_seed_keeps_every_other_override(variant: str, left: str) -> None:
    assert without_seed(variant) == left


def test_a_stage_not_done_shows_no_interval_even_with_a_record_on_disk(tmp_path: Path) -> None:
    run_dir = tmp_path / "eval-clip-synthetic-aaaaaaaa"
    _eval_run(tmp_path, run_dir.name, "clip", _ranks(0, 0.4))
    done = {"status": "done", "has_result": True, "run_dir": str(run_dir)}
    assert row_intervals(done) is not None and "i2t_R@1" in row_intervals(done).bounds
    # An interrupted re-run leaves the earlier record in place: it is not this stage's result.
    assert row_intervals({**done, "status": "interrupted"}) is None


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


def test_seed_pairs_that_cancel_exclude_zero_on_no_side(tmp_path: Path) -> None:
    # One seed +12.5, the other -12.5, each interval excluding 0 on its own side: the mean is
    # exactly 0, so no pair excludes 0 on the side of the mean and nothing is significant.
    pairs = [(("a", _run(tmp_path, "a", 32)), ("r1", _run(tmp_path, "r1", 16))),
             (("b", _run(tmp_path, "b", 0)), ("r2", _run(tmp_path, "r2", 16)))]
    r1 = paired_seeds(pairs, samples=200)["i2t_R@1"]
    assert r1["diff"] == 0.0
    assert (r1["n"], r1["excluding"], r1["significant"]) == (2, 0, False)


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


GALLERY = {"protocol.n_images": 1000, "protocol.n_texts": 5000}


def test_a_rerank_protocol_cell_names_k_and_the_first_stage_by_its_label() -> None:
    row = {**GALLERY, "protocol.rerank_k": 16, "protocol.first_stage": "eval-clip-coco-1234"}
    assert protocol_cell(row, {"eval-clip-coco-1234": "CLIP"}) == (
        "1000 img / 5000 txt; top-16 rerank of CLIP")
    assert protocol_cell(row, {"other": "x"}) == (
        "1000 img / 5000 txt; top-16 rerank of eval-clip-coco-1234")
    assert protocol_cell({**GALLERY, "protocol.rerank_k": 8}) == (
        "1000 img / 5000 txt; top-8 rerank of its first stage")
    assert protocol_cell(GALLERY) == "1000 img / 5000 txt"


def test_a_harness_row_names_its_first_stage_by_the_label_the_table_uses() -> None:
    unit = pd.DataFrame([{"model": "cross", "status": "pending", "stage_id": "eval-cross-1",
                          "scale": "smoke", "regime": "finetuned", **GALLERY,
                          "protocol.rerank_k": 4, "protocol.first_stage": "eval-clip-1"}])
    cells, _ = _harness_cells(unit, None, {"eval-clip-1": "CLIP (first stage)"})
    assert cells[4] == "1000 img / 5000 txt; top-4 rerank of CLIP (first stage)"


def test_a_dataset_without_a_display_label_is_headed_by_its_name() -> None:
    assert section_heading("cc3m", ("karpathy_test", "zeroshot_5k"), "test") == (
        "cc3m — Karpathy test, 5K images (paper protocol zeroshot_5k)")
    assert section_heading("coco", ("karpathy_test", "finetuned_1k"), "test") == (
        "COCO — Karpathy test, 1K images (paper protocol finetuned_1k)")


def test_a_section_without_results_says_when_published_rows_appear() -> None:
    assert section_heading("coco", None, "test", has_results=False) == (
        "coco — split test: no result yet, so no gallery to join on; published rows appear "
        "once a run reports its protocol")


def _rows(*specs: tuple[str, bool]) -> pd.DataFrame:
    """Eval rows (dataset, done) of the Karpathy test split, 5,000 fine-tuned images."""
    return pd.DataFrame([{"dataset": d, "split": "test", "regime": "finetuned",
                          "protocol.n_images": 5000 if done else None,
                          "status": "done" if done else "pending", "has_result": done}
                         for d, done in specs])


def test_a_row_without_a_result_joins_the_section_of_its_datasets_done_row() -> None:
    keys = _section_keys(_rows(("coco", True), ("coco", False), ("flickr30k", False)))
    joined = ("coco", ("karpathy_test", "finetuned_5k"))
    assert keys == [joined, joined, ("flickr30k", None)]


def test_a_row_without_a_result_joins_its_datasets_only_published_section() -> None:
    one = [("flickr30k", ("karpathy_test", "finetuned_1k"))]
    two = [("coco", ("karpathy_test", "finetuned_5k")), ("coco", ("karpathy_test", "zeroshot_5k"))]
    assert _section_keys(_rows(("flickr30k", False)), one) == one
    assert _section_keys(_rows(("coco", False)), two) == [("coco", None)]


def _units(*specs: tuple[str, str, str | None, bool]) -> list[list[int]]:
    """seed_units of rows (model, scale, seed, done), all in one section, no variant."""
    rows = pd.DataFrame([{"stage_id": f"s{i}", "model": m, "scale": sc,
                          "overrides": f"seed={seed}" if seed is not None else "",
                          "status": "done" if done else "pending", "has_result": done}
                         for i, (m, sc, seed, done) in enumerate(specs)])
    return seed_units(rows, [("coco", None)] * len(rows), {f"s{i}": "" for i in range(len(rows))})


def test_seeds_of_one_model_and_scale_are_one_unit_and_other_rows_stay_alone() -> None:
    assert _units(("clip", "smoke", "0", True), ("clip", "smoke", "1", True),
                  ("clip", "paper", "0", True), ("clip", "smoke", "2", False),
                  ("clip", "smoke", None, True), ("clip", "smoke", None, True)) == [
        [0, 1], [2], [3], [4], [5]]


def test_seeds_of_two_variants_of_one_model_are_two_units() -> None:
    rows = pd.DataFrame([{"stage_id": f"s{i}", "model": "cookie", "scale": "smoke",
                          "overrides": f"seed={i % 2}", "status": "done", "has_result": True}
                         for i in range(4)])
    variants = {"s0": "", "s1": "", "s2": "model.wst.layers=0", "s3": "model.wst.layers=0"}
    assert seed_units(rows, [("coco", None)] * 4, variants) == [[0, 1], [2, 3]]


def test_a_not_run_section_row_says_which_command_runs_it() -> None:
    grid = {"name": "table2"}
    assert not_run_command(grid) == "python -m harness.run grid=table2 scale=paper"
    assert not_run_command({**grid, "paper_command": "bash scripts/t2.sh"}) == (
        "bash scripts/t2.sh")
    cells = _not_run_cells("coco", grid, variant=False)
    assert cells[:5] == ["harness", "—", "—", "—", "—"] and cells[-1] == ""
    assert cells[-2] == ("not run: no run on COCO yet; `python -m harness.run grid=table2 "
                         "scale=paper` runs it (needs the real dataset)")
    assert set(cells[5:-2]) == {""} and len(cells) == 5 + 7 + 2
    assert len(_not_run_cells("cc3m", grid, variant=True)) == len(cells) + 1
    assert "no run on cc3m yet" in _not_run_cells("cc3m", grid, variant=True)[-2]


def _paired_cells(root: Path, runs: list[tuple[str, str, tuple[str, ...]]], reference: dict
                  ) -> tuple[dict[str, str], pd.DataFrame]:
    """The "Paired Δ vs reference" cell of each harness row (by its Run cell), and the csv."""
    for i, (name, model, _) in enumerate(runs):
        _eval_run(root, name, model, _ranks(i, 0.4))
    stages = [_stage(name, model, *extra) for name, model, extra in runs]
    md, csv, _ = _tables(root, stages, {**GRID, "reference": reference})
    cells = {r["Run"]: r["Paired Δ vs reference"] for r in markdown_rows(md, TITLE)
             if r["Source"] == "harness"}
    return cells, csv


def test_a_section_without_the_reference_model_says_so_in_the_paired_cell(
        tmp_path: Path) -> None:
    cells, _ = _paired_cells(tmp_path, [("eval-clip-synthetic-aaaaaaaa", "clip", ())],
                             {"model": "cookie", "overrides": []})
    assert cells == {"eval-clip-synthetic-aaaaaaaa":
                     "no reference row (cookie (no variant override)) in this section"}


def test_seeds_without_a_seed_in_common_with_the_reference_are_not_compared(
        tmp_path: Path) -> None:
    runs = [("eval-cookie-synthetic-00000000", "cookie", ("seed=0",)),
            ("eval-clip-synthetic-00000001", "clip", ("seed=1",))]
    cells, _ = _paired_cells(tmp_path, runs, {"model": "cookie", "overrides": []})
    assert cells["eval-clip-synthetic-00000001"] == (
        "not compared: no seed in common with the reference")


def test_the_csv_names_the_reference_run_of_every_seed_pair(tmp_path: Path) -> None:
    runs = [(f"eval-{m}-synthetic-{s:08d}", m, (f"seed={s}",)) for m in ("cookie", "clip")
            for s in (0, 1)]
    _, csv = _paired_cells(tmp_path, runs, {"model": "cookie", "overrides": []})
    line = csv[csv["model"] == "clip"].iloc[0]
    assert line["vs_reference"] == "eval-cookie-synthetic-00000000 eval-cookie-synthetic-00000001"


def _write_tables(root: Path, runs: list[tuple[str, str, tuple[str, ...]]], grid: dict,
                  missing: tuple[ManifestStage, ...] = ()) -> tuple[str, pd.DataFrame]:
    """The Markdown and retrieval csv of a grid of done synthetic eval runs (and stages that
    never ran)."""
    for i, (name, model, _) in enumerate(runs):
        _eval_run(root, name, model, _ranks(i, 0.4))
    stages = [_stage(name, model, *extra) for name, model, extra in runs]
    md, csv, _ = _tables(root, [*stages, *missing], grid)
    return md, csv


def test_the_retrieval_notes_explain_intervals_seeds_variants_and_paired_marks(
        tmp_path: Path) -> None:
    runs = [*((f"eval-cookie-synthetic-{s:08d}", "cookie", (f"seed={s}",)) for s in (0, 1)),
            ("eval-clip-synthetic-aaaaaaaa", "clip", ("seed=0", "model.temperature=0.1"))]
    md, _ = _write_tables(tmp_path, runs, {**GRID, "reference": {"model": "cookie"}})
    notes = [line[2:] for line in md.splitlines() if line.startswith("- ")]
    for note in (
            "[low, high] after a harness number: its 95% percentile bootstrap interval (300 "
            "resamples of the test queries: images for i2t, captions for t2i; RSUM from both), "
            "from the run record. It covers the choice of queries only, not training (seeds, "
            "machines).",
            "mean ± std: over the training seeds of one experiment (sample std; n in Status); "
            "its [low, high] is the mean of the seeds' per-query intervals. Each seed's stage "
            "is a row of collected.csv.",
            "Variant = the overrides (of the stage or its training parents) that differ from "
            "the other rows.",
            "Paired Δ vs reference = row − reference, where the reference is cookie (no "
            "variant override) in the same section (same split and protocol; grid key "
            "`reference`); paired bootstrap over the same resampled queries for both runs, "
            "seed matched with seed, [low, high] its 95% interval. * = the interval excludes 0 "
            "(with n seeds: every seed's does); within noise = none of RSUM, i2t R@1, t2i R@1 "
            "excludes 0."):
        assert note in notes


def test_a_grid_without_a_claim_has_a_title_without_one(tmp_path: Path) -> None:
    md, _ = _write_tables(tmp_path, [("eval-clip-synthetic-aaaaaaaa", "clip", ())],
                          {"name": "tiny"})
    assert md.startswith("## tiny: cross-modal retrieval\n")


def test_a_rerank_row_names_its_first_stage_by_the_manifest_label(tmp_path: Path) -> None:
    first, rerank = "eval-clip-synthetic-aaaaaaaa", "eval-cookie-synthetic-bbbbbbbb"
    _write_tables(tmp_path, [(first, "clip", ()), (rerank, "cookie", ())], GRID)
    result = tmp_path / rerank / "result.json"
    record = json.loads(result.read_text())
    record["protocol"].update(rerank_k=4, first_stage=first)
    result.write_text(json.dumps(record))
    md, _, _ = _tables(tmp_path, [_stage(first, "clip"), _stage(rerank, "cookie")], GRID)
    row = next(r for r in markdown_rows(md, TITLE) if r["Run"] == rerank)
    assert row["Protocol / gallery"] == (
        f"{N_IMAGES} img / {N_TEXTS} txt; top-4 rerank of eval:clip:synthetic")


def test_published_sections_a_grid_never_ran_get_a_not_run_row(tmp_path: Path) -> None:
    never = ManifestStage("eval-cookie-coco-cccccccc", "eval:cookie:coco", "eval", "cookie",
                          "coco", scale="paper", split="test",
                          overrides=("task=eval", "model=cookie", "data=coco"))
    md, csv = _write_tables(tmp_path, [("eval-clip-synthetic-aaaaaaaa", "clip", ())],
                            {**GRID, "paper_table": "table2", "reference": {"model": "cookie"}},
                            missing=(never,))
    command = "python -m harness.run grid=tiny scale=paper"
    rows = markdown_rows(md, TITLE)
    not_run_rows = [r for r in rows if r["Status"].startswith("not run:")]
    assert [r["Status"] for r in not_run_rows] == [
        f"not run: no run on Flickr30K yet; `{command}` runs it (needs the real dataset)"]
    # Rows that are no harness result (published, not run) have an empty paired cell.
    assert {r["Paired Δ vs reference"] for r in rows if r["Source"] != "harness"} == {""}
    assert any(r["Source"] == "paper" for r in rows)
    not_run = csv[csv["status"] == f"not run: {command}"]
    assert not_run[["section_dataset", "paper_protocol"]].values.tolist() == [
        ["flickr30k", "finetuned_1k"]]
    # A stage that never ran on COCO joins COCO's one published section, not a section of
    # its own.
    line = csv[csv["stage_id"] == never.stage_id].iloc[0]
    assert (line["section_dataset"], line["paper_protocol"]) == ("coco", "finetuned_5k")

@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_numbers()


def _row(stage_id: str, model: str, overrides: str = "", **fields: Any) -> dict[str, Any]:
    """A done eval row of the collected frame."""
    return {"stage_id": stage_id, "task": "eval", "model": model, "scale": "smoke",
            "dataset": "synthetic", "status": "done", "has_result": True,
            "overrides": overrides, **fields}


def _cost(protocol: str, mode: str, total_s: float, **fields: Any) -> dict[str, Any]:
    """The cost.<protocol>.<mode>.* columns of one timed protocol."""
    values = {"kind": "bench", "n_images": 1000, "n_texts": 5000, "index_s": 1.0,
              "ranking_s": 0.5, "query_i2t_s": 0.002, "query_t2i_s": 0.003,
              "total_s": total_s, "status": "measured", "flops": math.nan,
              "hardware": "cpu", **fields}
    return {f"cost.{protocol}.{mode}.{k}": v for k, v in values.items()}


EFF = {"eff.params_total": 1.5e6, "eff.image_flops": 2e9, "eff.text_flops": 3e8,
       "eff.pair_flops": math.nan}


def test_cost_rows_print_seconds_to_four_digits_protocol_tflops_and_variants(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([
        _row("eval-clip-1", "clip", **EFF,
             **_cost("coco_1k", "dual", 12.3456, index_s=1.23456, flops=2.5e12,
                     hardware=math.nan)),
        _row("eval-ss-2", "single_stream", "model.layers=2",
             **{**EFF, "eff.text_flops": 0.0, "eff.pair_flops": 4e9},
             **_cost("coco_1k", "full_scoring", 99.0)),
        _row("eval-clip-3", "clip", **EFF, **{"eff.measured.encode_s": 1.23456,
                                               "eff.measured.rank_s": 0.5}),
    ])
    table = cost_table(df, {"name": "g"}, paper)
    assert table.columns[:7] == ["Model", "Variant", "Scale", "Params (M)", "GFLOPs / image",
                                 "GFLOPs / text", "GFLOPs / pair"]
    rows = [dict(zip(table.columns, r)) for r in table.sections[0].rows]
    dual, cross, eval_run = rows
    assert (dual["Variant"], cross["Variant"]) == ("—", "model.layers=2")
    assert (dual["Index (s)"], dual["Total (s)"]) == ("1.235", "12.35")
    assert (dual["Protocol TFLOPs"], dual["Hardware"]) == ("2.5", "")
    assert (eval_run["Index (s)"], eval_run["Total (s)"], eval_run["Hardware"]) == (
        "1.235", "1.735", "")
    # A cross-encoder's text features cost no matrix products: a dash, and the note why.
    assert cross["GFLOPs / text"] == "—" and ZERO_FLOPS_NOTE in table.notes
    assert table.data["variant"].tolist() == ["—", "model.layers=2", "—"]


def test_a_stage_with_efficiency_numbers_but_no_timed_protocol_has_a_cost_table(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-clip-3", "clip", **EFF)])
    table = cost_table(df, {"name": "g"}, paper)
    assert table is not None and table.sections[0].rows[0][2] == "1.5"


def test_a_grid_can_ask_for_an_empty_cost_table(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([{**_row("eval-clip-1", "clip"), "status": "pending",
                        "has_result": False}])
    assert cost_table(df, {"name": "g"}, paper) is None
    table = cost_table(df, {"name": "g", "show_empty_tables": ["cost"]}, paper)
    assert table is not None and table.sections[0].rows[0][-1] == "pending: not started"


def test_ratio_rows_come_in_protocol_order_with_timing_and_mode(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([
        _row("eval-clip-1", "clip", **_cost("p5k", "dual", 0.5)),
        _row("eval-ss-2", "single_stream", **_cost("p1k", "rerank_16", 12.3456),
             **_cost("p5k", "full_scoring", 500.0)),
        _row("eval-cookie-3", "cookie", **_cost("p1k", "dual", 0.2)),
    ])
    table = ratio_table(df, {"name": "g"}, paper)
    rows = [dict(zip(table.columns, r)) for r in table.sections[0].rows]
    assert [(r["Protocol"], r["Dual encoder"]) for r in rows] == [("p1k", "cookie"),
                                                                  ("p5k", "clip")]
    assert [r["Cross-encoder (mode)"] for r in rows] == ["single_stream (rerank_16)",
                                                         "single_stream (full scoring)"]
    assert [r["Timing"] for r in rows] == ["measured", "measured"]
    assert [(r["Dual total (s)"], r["Cross total (s)"]) for r in rows] == [("0.2", "12.35"),
                                                                          ("0.5", "500")]


def test_unimodal_columns_are_by_direction_then_k_and_undone_rows_carry_no_values(
        paper: pd.DataFrame) -> None:
    metrics = {"metric.t2t_R@10": 30.0, "metric.t2t_R@1": 10.0, "metric.t2t_R@5": 20.0,
               "metric.i2i_R@1": 5.0}
    df = pd.DataFrame([_row("eval-clip-1", "clip", **metrics),
                       {**_row("eval-clip-2", "clip", **metrics), "status": "interrupted"}])
    table = unimodal_table(df, {"name": "g"}, paper)
    assert table.columns[5:-1] == ["i2i R@1", "t2t R@1", "t2t R@5", "t2t R@10"]
    assert table.sections[0].rows[0][5:-1] == ["5.00", "10.00", "20.00", "30.00"]
    # An interrupted stage's leftover metrics are not its result: empty, in the csv too.
    assert table.data["t2t_R@1"].tolist()[0] == 10.0 and math.isnan(table.data["t2t_R@1"][1])


def _cost_rows(table: Any) -> list[dict[str, str]]:
    """The displayed rows of a one-section table, by column name."""
    return [dict(zip(table.columns, r)) for r in table.sections[0].rows]


def test_flops_and_query_milliseconds_print_three_significant_digits(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-clip-1", "clip", **{**EFF, "eff.image_flops": 1.2345e9},
                            **_cost("coco_1k", "dual", 9.0, query_i2t_s=0.0012345))])
    row, = _cost_rows(cost_table(df, {"name": "g"}, paper))
    assert (row["GFLOPs / image"], row["Query i2t (ms)"]) == ("1.23", "1.23")


def test_cost_cells_divide_by_exact_powers_of_ten(paper: pd.DataFrame) -> None:
    # Each scaled value is an exact decimal tie (1.1875, 1.375), so a divisor a hair off
    # 10^6 / 10^9 / 10^12 rounds it the other way.
    eff = {"eff.params_total": 1_187_500, "eff.image_flops": 1.375e9,
           "eff.text_flops": 1.375e9, "eff.pair_flops": 1.375e9}
    df = pd.DataFrame([_row("eval-ss-1", "single_stream", **eff,
                            **_cost("coco_1k", "full_scoring", 9.0, flops=1.375e12))])
    row, = _cost_rows(cost_table(df, {"name": "g"}, paper))
    assert [row[c] for c in ("Params (M)", "GFLOPs / image", "GFLOPs / text", "GFLOPs / pair",
                             "Protocol TFLOPs")] == ["1.188", "1.38", "1.38", "1.38", "1.38"]


def test_a_stage_with_timed_protocols_but_no_efficiency_block_has_a_cost_table(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-clip-1", "clip", **_cost("coco_1k", "dual", 12.5))])
    table = cost_table(df, {"name": "g"}, paper)
    assert table is not None and _cost_rows(table)[0]["Total (s)"] == "12.5"


def test_a_timed_mode_without_a_label_is_printed_by_its_name(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-ss-1", "single_stream", **EFF,
                            **_cost("coco_1k", "rerank_16", 3.0))])
    assert _cost_rows(cost_table(df, {"name": "g"}, paper))[0]["Mode"] == "rerank_16"


def test_an_eval_run_that_measured_no_seconds_is_not_timed(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-clip-1", "clip", **EFF)])
    row, = _cost_rows(cost_table(df, {"name": "g"}, paper))
    assert (row["Mode"], row["Index (s)"], row["Total (s)"], row["Timing"]) == (
        "eval run*", "", "", "not timed")


@pytest.mark.parametrize("varied", [False, True])
def test_zero_image_flops_get_the_zero_flops_note_after_the_other_gflops_note(
        paper: pd.DataFrame, varied: bool) -> None:
    rows = [_row("eval-x-1", "clip", "model.layers=2" if varied else "",
                 **{**EFF, "eff.image_flops": 0.0}),
            _row("eval-x-2", "clip", "model.layers=4" if varied else "", **EFF)]
    table = cost_table(pd.DataFrame(rows), {"name": "g"}, paper)
    assert ("Variant" in table.columns) is varied
    assert [r["GFLOPs / image"] for r in _cost_rows(table)] == ["—", "2"]
    pair_note = "An empty GFLOPs / pair means the model scores no pairs (a dual encoder)."
    assert table.notes.index(ZERO_FLOPS_NOTE) == table.notes.index(pair_note) + 1 == 3


@pytest.mark.parametrize("varied", [False, True])
def test_the_cost_tables_number_columns_are_right_aligned_with_or_without_variants(
        paper: pd.DataFrame, varied: bool) -> None:
    rows = [_row(f"eval-clip-{i}", "clip", f"model.layers={i}" if varied else "", **EFF,
                 **_cost("coco_1k", "dual", 9.0)) for i in (1, 2)]
    table = cost_table(pd.DataFrame(rows), {"name": "g"}, paper)
    assert ("Variant" in table.columns) is varied
    assert {table.columns[i] for i in table.numeric} == {
        "Params (M)", "GFLOPs / image", "GFLOPs / text", "GFLOPs / pair", "Index (s)",
        "Query i2t (ms)", "Query t2i (ms)", "Total (s)", "Protocol TFLOPs"}


def test_ratio_rows_print_both_totals_to_four_digits_and_flag_other_hardware(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([
        _row("eval-clip-1", "clip", **_cost("p1k", "dual", 1.23456, hardware="cpu")),
        _row("eval-ss-2", "single_stream", **_cost("p1k", "full_scoring", 98.7654,
                                                   hardware="NVIDIA H100")),
    ])
    row, = _cost_rows(ratio_table(df, {"name": "g"}, paper))
    assert (row["Dual total (s)"], row["Cross total (s)"], row["Same hardware"]) == (
        "1.235", "98.77", "NO")


def test_ratio_rows_without_a_published_claim_say_so(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([
        _row("eval-clip-1", "clip", **_cost("p1k", "dual", 0.5)),
        _row("eval-ss-2", "single_stream", **_cost("p1k", "full_scoring", 50.0)),
    ])
    table = ratio_table(df, {"name": "g"}, paper[paper["table"] != "claims"])
    assert _cost_rows(table)[0]["Paper claim"] == "not in results/paper"
    line = table.data.iloc[0]
    assert line["ratio"] == 0.01 and line["paper_ratio"] is None and line["paper_status"] is None


def test_an_undone_rows_unimodal_cells_are_empty(paper: pd.DataFrame) -> None:
    metrics = {"metric.t2t_R@1": 10.0, "metric.i2i_R@1": 5.0}
    df = pd.DataFrame([_row("eval-clip-1", "clip", **metrics),
                       {**_row("eval-clip-2", "clip", **metrics), "status": "failed",
                        "error": "CUDA out of memory"}])
    table = unimodal_table(df, {"name": "g"}, paper)
    assert [r[5:] for r in table.sections[0].rows] == [
        ["5.00", "10.00", "done"], ["", "", "failed: CUDA out of memory"]]


def _done(stage_id: str, model: str, run_dir: str = "", seed: int | None = None,
          done: bool = True) -> dict[str, Any]:
    """A collected eval row for :func:`_comparison_cells` (its run_dir is read only when the
    row is paired with its reference)."""
    return {"stage_id": stage_id, "model": model, "run_dir": run_dir or f"/nonexistent/{stage_id}",
            "overrides": "" if seed is None else f"seed={seed}",
            "status": "done" if done else "pending", "has_result": done}


COOKIE = Reference("cookie", frozenset())
A, B = ("synthetic", None), ("coco", ("karpathy_test", "finetuned_5k"))


def test_every_later_row_gets_its_paired_cell_after_rows_that_have_none() -> None:
    # In unit order: a row not done (no cell), a section without the reference, the
    # reference, a row with no seed in common with it, and again a section without one.
    rows = pd.DataFrame([_done("p", "clip", done=False), _done("b1", "clip"),
                         _done("ref", "cookie", seed=0), _done("s1", "clip", seed=1),
                         _done("b2", "clip")])
    cells, fields = _comparison_cells(rows, [[0], [1], [2], [3], [4]], [A, B, A, A, B],
                                      {sid: "" for sid in rows["stage_id"]}, COOKIE)
    none = "no reference row (cookie (no variant override)) in this section"
    assert cells == {1: none, 2: "reference",
                     3: "not compared: no seed in common with the reference", 4: none}
    assert fields == {}


def test_the_reference_row_is_the_one_with_the_referenced_variant() -> None:
    rows = pd.DataFrame([_done("plain", "cookie", seed=0), _done("wst0", "cookie", seed=1)])
    variants = {"plain": "", "wst0": "model.wst.layers=0"}
    reference = Reference("cookie", frozenset({"model.wst.layers=0"}))
    cells, _ = _comparison_cells(rows, [[0], [1]], [A, A], variants, reference)
    assert cells == {0: "not compared: no seed in common with the reference", 1: "reference"}


def test_a_pair_not_evaluated_like_its_reference_is_named_in_the_paired_cell(
        tmp_path: Path) -> None:
    ref, row = _run(tmp_path, "eval-cookie-ref", 16), _run(tmp_path, "eval-clip-row", 32)
    result = Path(row) / "result.json"
    record = json.loads(result.read_text())
    record["protocol"]["n_texts"] = 5 * N
    result.write_text(json.dumps(record))
    rows = pd.DataFrame([_done("eval-cookie-ref", "cookie", ref),
                         _done("eval-clip-row", "clip", row)])
    cells, _ = _comparison_cells(rows, [[0], [1]], [A, A], {"eval-cookie-ref": "",
                                                             "eval-clip-row": ""}, COOKIE)
    assert cells[1] == (f"not compared: eval-clip-row and eval-cookie-ref were not evaluated on "
                        f"the same split and protocol (n_texts: {5 * N} vs {N}): no paired "
                        "comparison")


def test_rows_that_are_no_harness_result_have_a_dash_in_the_variant_column() -> None:
    grid = {"name": "table2"}
    assert _not_run_cells("coco", grid, variant=True)[:6] == ["harness", "—", "—", "—", "—", "—"]
    prow = PaperRow("table2", "COOKIE", values={"i2t_R@1": 50.0},
                    statuses={"i2t_R@1": "sourced"})
    assert _paper_cells(prow, "finetuned", "finetuned_5k", variant=True)[:7] == [
        "paper", "COOKIE", "—", "published", "finetuned", "finetuned_5k", "50.0"]


def test_the_delta_to_a_paper_row_covers_only_metrics_both_report() -> None:
    prow = PaperRow("table2", "COOKIE", values={"i2t_R@1": 50.0, "t2i_R@1": 40.0},
                    statuses={"i2t_R@1": "sourced", "t2i_R@1": "sourced"})
    row = {"metric.i2t_R@1": 52.5, "metric.t2i_R@1": math.nan, "metric.rsum": 400.0}
    assert _delta(row, prow) == {"i2t_R@1": 2.5}


def test_a_grid_picks_its_table_kinds_by_name(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-clip-1", "clip", **EFF, **{
        "metric.t2t_R@1": 10.0, "protocol.n_images": 50, "protocol.n_texts": 250,
        "split": "test", "regime": "finetuned", **{f"metric.{m}": 1.0 for m in (
            "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")}})])
    tables = grid_tables(df, {"name": "g", "tables": ["unimodal", "retrieval", "cost"]}, paper)
    assert [t.stem for t in tables] == ["g_unimodal", "g_retrieval", "g_cost"]


def test_write_tables_uses_the_published_numbers_it_is_given(
        tmp_path: Path, paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_row("eval-clip-1", "clip", **_cost("p1k", "dual", 0.5)),
                       _row("eval-ss-2", "single_stream", **_cost("p1k", "full_scoring", 50.0))])
    grid = {"name": "g", "tables": ["ratio"]}
    write_tables(df, grid, tmp_path, paper[paper["table"] != "claims"])
    assert "| not in results/paper |" in (tmp_path / "tables" / "g.md").read_text()


def test_a_section_published_with_text_to_image_rows_only_is_a_section() -> None:
    paper = pd.DataFrame({"table": ["t1", "t1"], "dataset": ["coco", "flickr30k"],
                          "split": ["karpathy_test"] * 2,
                          "protocol": ["finetuned_5k", "finetuned_1k"], "direction": ["t2i", "i2t"]})
    assert paper_sections(paper, "t1") == [("coco", ("karpathy_test", "finetuned_5k")),
                                           ("flickr30k", ("karpathy_test", "finetuned_1k"))]


def test_a_section_with_results_on_no_published_protocol_says_so_by_default() -> None:
    assert section_heading("coco", None, "val") == (
        "coco — split val: not a published protocol: no paper counterpart, paper columns empty")


def _seed_unit(root: Path, values: dict[str, list[float]]) -> pd.DataFrame:
    """Done eval rows (one per seed) with these metric values, each with its run record."""
    rows = []
    for s in range(len(next(iter(values.values())))):
        name = f"eval-clip-synthetic-{s:08d}"
        _eval_run(root, name, "clip", _ranks(20 + s, 0.4))
        rows.append({"stage_id": name, "model": "clip", "scale": "smoke", "regime": "finetuned",
                     "status": "done", "has_result": True, "run_dir": str(root / name),
                     "overrides": f"seed={s}", **GALLERY,
                     **{f"metric.{m}": v[s] for m, v in values.items()}})
    return pd.DataFrame(rows)


def test_two_seeds_are_a_mean_with_std_and_their_mean_interval(tmp_path: Path) -> None:
    unit = _seed_unit(tmp_path, {m: [10.0, 20.0] for m in METRICS})
    cells, fields = _harness_cells(unit, None)
    bounds = [read_record(Path(d)).intervals.bounds["i2t_R@1"] for d in unit["run_dir"]]
    low, high = (bounds[0][0] + bounds[1][0]) / 2, (bounds[0][1] + bounds[1][1]) / 2
    assert cells[5] == f"15.00 ± 7.07 [{low:.1f}, {high:.1f}]"
    assert (fields["i2t_R@1"], fields["i2t_R@1_low"], fields["i2t_R@1_high"]) == pytest.approx(
        (15.0, low, high))
    assert fields["i2t_R@1_std"] == pytest.approx(math.sqrt(50))
    assert (fields["n_seeds"], fields["seeds"]) == (2, "0 1")
    assert cells[-2] == "done; mean ± std over n=2 seeds (0, 1)"


def test_a_metric_a_done_row_lacks_is_an_empty_cell_before_the_others() -> None:
    # A row without a run record (no interval) and without i2t R@1: its other metrics print.
    unit = pd.DataFrame([{"stage_id": "eval-x", "model": "clip", "status": "done",
                          "has_result": True, "run_dir": None, **GALLERY,
                          **{f"metric.{m}": math.nan if m == "i2t_R@1" else 1.0
                             for m in METRICS}}])
    cells, fields = _harness_cells(unit, None)
    assert cells[5:12] == ["", "1.00", "1.00", "1.00", "1.00", "1.00", "1.00"]
    assert "i2t_R@1" not in fields and fields["rsum"] == 1.0


def _eval_row(stage_id: str, model: str, dataset: str, split: str, **fields: Any
              ) -> dict[str, Any]:
    """A done eval row of the collected frame with every table metric (no run record)."""
    return {**_row(stage_id, model, dataset=dataset, split=split, regime="finetuned",
                   run_dir=None, **GALLERY), **{f"metric.{m}": 1.0 for m in METRICS}, **fields}


def test_a_paper_dataset_off_the_published_protocols_is_still_a_paper_dataset(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_eval_row("eval-clip-coco-1", "clip", "coco", "val"),
                       _eval_row("eval-clip-synthetic-2", "clip", "synthetic", "test")])
    table = retrieval_table(df, {"name": "g"}, paper)
    assert [s.heading for s in table.sections] == [
        "coco — split val: not a published protocol: no paper counterpart, paper columns empty",
        "synthetic — not a dataset of the paper (no published rows in results/paper/): no "
        "paper counterpart, paper columns empty"]


def test_a_first_stage_without_a_label_is_named_by_its_stage_id(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([
        _eval_row("eval-clip-1", "clip", "synthetic", "test", label=math.nan),
        _eval_row("eval-cookie-2", "cookie", "synthetic", "test", label="eval:cookie:synthetic",
                  **{"protocol.rerank_k": 4, "protocol.first_stage": "eval-clip-1"})])
    table = retrieval_table(df, {"name": "g"}, paper)
    protocols = [dict(zip(table.columns, r))["Protocol / gallery"] for r in table.sections[0].rows]
    assert protocols == ["1000 img / 5000 txt", "1000 img / 5000 txt; top-4 rerank of eval-clip-1"]


COCO_5K = {"protocol.n_images": 5000, "protocol.n_texts": 25000}


def _by_source(table: Any, heading_start: str) -> list[dict[str, str]]:
    """The rows of the section whose heading starts so, by column name."""
    section = next(s for s in table.sections if s.heading.startswith(heading_start))
    return [dict(zip(table.columns, r)) for r in section.rows]


def test_done_rows_of_one_dataset_on_two_protocols_are_two_sections() -> None:
    rows = pd.DataFrame([{"dataset": "coco", "split": "test", "regime": "finetuned",
                          "protocol.n_images": n, "status": "done", "has_result": True}
                         for n in (5000, 1000)])
    assert _section_keys(rows) == [("coco", ("karpathy_test", "finetuned_5k")),
                                   ("coco", ("karpathy_test", "finetuned_1k"))]


def test_a_section_after_one_without_a_paper_protocol_gets_its_paper_row_and_delta(
        paper: pd.DataFrame) -> None:
    # The synthetic section comes first and joins no published protocol; the COCO 5K one
    # after it still gets COOKIE's published row and the Δ row, with a dash under Variant and
    # an empty cell for the metric the harness row lacks.
    df = pd.DataFrame([
        _eval_row("eval-clip-synthetic-1", "clip", "synthetic", "test"),
        _eval_row("eval-cookie-coco-2", "cookie", "coco", "test", scale="paper",
                  overrides="model.wst.layers=0", **COCO_5K, **{"metric.i2t_R@1": math.nan})])
    table = retrieval_table(df, {"name": "g"}, paper)
    paper_row, harness, delta = _by_source(table, "COCO")
    assert (paper_row["Source"], harness["Source"], delta["Source"]) == (
        "paper", "harness", "Δ vs paper")
    assert (paper_row["i2t R@5"], harness["i2t R@5"], delta["i2t R@5"]) == (
        "90.9†", "1.00", "-89.90")
    assert (harness["i2t R@1"], delta["i2t R@1"], delta["Variant"]) == ("", "", "—")


def test_seeds_of_a_paper_scale_model_get_no_delta_row(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_eval_row(f"eval-cookie-coco-{s}", "cookie", "coco", "test",
                                 scale="paper", overrides=f"seed={s}", **COCO_5K)
                       for s in (0, 1)])
    table = retrieval_table(df, {"name": "g"}, paper)
    assert [r["Source"] for r in _by_source(table, "COCO")] == ["paper", "harness"]


def test_a_not_run_published_section_has_a_full_row_and_a_harness_csv_line(
        paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_eval_row(f"eval-cookie-coco-{i}", "cookie", "coco", "test",
                                 overrides=f"model.wst.layers={i}", **COCO_5K)
                       for i in (0, 2)])
    table = retrieval_table(df, {"name": "g", "paper_table": "table2"}, paper)
    assert "Variant" in table.columns
    not_run = [r for r in _by_source(table, "Flickr30K") if r["Status"].startswith("not run")]
    assert len(not_run) == 1 and len(not_run[0]) == len(table.columns)
    assert [not_run[0][c] for c in ("Source", "Model", "Variant", "Scale")] == [
        "harness", "—", "—", "—"]
    line = table.data[table.data["status"].str.startswith("not run", na=False)]
    assert line[["source", "model", "section_dataset"]].values.tolist() == [
        ["harness", "", "flickr30k"]]


def test_a_harness_row_without_numbers_has_an_empty_paired_cell(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_eval_row("eval-cookie-1", "cookie", "synthetic", "test"),
                       {**_eval_row("eval-clip-2", "clip", "synthetic", "test"),
                        "status": "pending", "has_result": False}])
    table = retrieval_table(df, {"name": "g", "reference": {"model": "cookie"}}, paper)
    cells = [r["Paired Δ vs reference"] for r in _by_source(table, "synthetic")]
    assert cells == ["reference", ""]


def test_a_claim_is_printed_whole_in_the_title(paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_eval_row("eval-clip-1", "clip", "synthetic", "test")])
    table = retrieval_table(df, {"name": "g", "claim": "as fast as model X"}, paper)
    assert table.title == "g: cross-modal retrieval — as fast as model X"
