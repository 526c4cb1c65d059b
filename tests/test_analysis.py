"""Analysis: collect run directories, rebuild tables (Markdown, LaTeX, CSV) and figures.

Uses the hand-made run directories in tests/fixtures/analysis (see its README): done, failed,
running and bench stages, plus one planned stage with no directory (missing).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from table_cells import latex_rows, markdown_rows, row_by, row_where

from harness.analysis.collect import (
    collect,
    collect_plan,
    costs_long,
    eval_run_seconds,
    write_collected,
)
from harness.analysis.cost_tables import cost_table, ratio_table, unimodal_table
from harness.analysis.paper import load_paper_numbers
from harness.analysis.plots import read_metrics_log, recall_vs_time_figure, write_figures
from harness.analysis.render import Section, Table, latex_escape, to_latex
from harness.analysis.tables import (
    METRICS,
    paper_protocol,
    retrieval_table,
    write_grid_tables,
    write_tables,
)
from harness.manifest import Manifest, ManifestStage, write_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "analysis" / "runs"
COOKIE_COCO = "eval-cookie-coco-bbbb2222"


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "runs"))


def _stage(runs: Path, task: str, model: str, data: str, name: str,
           parent: ManifestStage | None = None, overrides: tuple[str, ...] = (),
           scale: str = "paper") -> ManifestStage:
    return ManifestStage(name, f"{task}:{model}:{data}", task, model, data, scale=scale,
                         split="test" if task == "eval" else None,
                         parent=parent.stage_id if parent else None,
                         overrides=(f"task={task}", f"model={model}", f"data={data}",
                                    *overrides))


def _manifest(runs: Path, stages: list[ManifestStage], grid: dict) -> Manifest:
    return Manifest(grid=grid["name"], created_at="2026-11-30T00:00:00+00:00",
                    executor="local", run_root=str(runs), grid_config=grid, overrides=(),
                    stages=tuple(stages))


def _plan(runs: Path) -> list[ManifestStage]:
    ft = _stage(runs, "finetune", "cookie", "coco", "finetune-cookie-coco-aaaa1111")
    ft2 = _stage(runs, "finetune", "single_stream", "coco", "finetune-single_stream-coco-cccc3333")
    ftf = _stage(runs, "finetune", "single_stream", "flickr30k",
                 "finetune-single_stream-flickr30k-99990000")
    ftc = _stage(runs, "finetune", "cookie", "flickr30k", "finetune-cookie-flickr30k-99991111")
    fts = _stage(runs, "finetune", "clip", "synthetic", "finetune-clip-synthetic-5b5b5b5b",
                 scale="smoke")
    return [
        ft, _stage(runs, "eval", "cookie", "coco", COOKIE_COCO, ft),
        ft2, _stage(runs, "eval", "single_stream", "coco", "eval-single_stream-coco-dddd4444", ft2),
        ftf, _stage(runs, "eval", "single_stream", "flickr30k",
                    "eval-single_stream-flickr30k-ffff6666", ftf),
        ftc, _stage(runs, "eval", "cookie", "flickr30k", "eval-cookie-flickr30k-abcd5678", ftc),
        _stage(runs, "eval", "clip", "synthetic", "eval-clip-synthetic-5a5a5a5a", fts,
               scale="smoke"),
        _stage(runs, "eval", "clip", "flickr30k", "eval-clip-flickr30k-77777777"),
        _stage(runs, "eval", "clip", "coco", "eval-clip-coco-eeee5555", ft),  # never run
        _stage(runs, "bench", "clip", "synthetic", "bench-clip-synthetic-b3b3b3b3", scale="smoke"),
    ]


GRID = {"name": "table2", "claim": "fixture grid", "paper_table": "table2"}


@pytest.fixture()
def collected(runs: Path) -> pd.DataFrame:
    return collect_plan(_plan(runs), "table2", runs)


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_numbers()


def _result(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "result.json").read_text())


def _row(df: pd.DataFrame, stage_id: str) -> pd.Series:
    return df.set_index("stage_id").loc[stage_id]


# --- collect ---------------------------------------------------------------------------------

def test_collect_has_one_row_per_planned_stage_with_its_status(collected: pd.DataFrame) -> None:
    status = dict(zip(collected["stage_id"], collected["status"]))
    assert len(collected) == 12
    assert status[COOKIE_COCO] == "done"
    assert status["eval-single_stream-coco-dddd4444"] == "failed"
    assert status["eval-clip-flickr30k-77777777"] == "running"
    assert status["eval-clip-coco-eeee5555"] == "missing"
    assert status["finetune-cookie-flickr30k-99991111"] == "missing"
    failed = _row(collected, "eval-single_stream-coco-dddd4444")
    assert "CUDA out of memory" in failed["error"] and not failed["has_result"]
    assert pd.isna(failed["metric.i2t_R@1"])


def test_collect_flattens_every_block(runs: Path, collected: pd.DataFrame) -> None:
    res = _result(runs, COOKIE_COCO)
    row = _row(collected, COOKIE_COCO)
    for key, value in res["metrics"].items():
        assert row[f"metric.{key}"] == value
    for key, value in res["protocol"].items():
        assert row[f"protocol.{key}"] == value or (value is None and pd.isna(row[f"protocol.{key}"]))
    assert (row["task"], row["model"], row["dataset"], row["split"], row["scale"]) == \
        ("eval", "cookie", "coco", "test", "paper")
    assert row["regime"] == "finetuned" and row["parent"] == "finetune-cookie-coco-aaaa1111"
    assert row["eff.params_total"] == 147_180_000 and row["eff.params.wst"] == 14_200_000
    assert row["eff.image_flops"] == 12_300_000_000 and pd.isna(row["eff.pair_flops"])
    assert row["eff.measured.encode_s"] == 41.25
    assert row["cost.coco_5k.dual.total_s"] == 61.75
    assert row["cost.coco_5k.dual.status"] == "measured"
    assert row["env.git_sha"].startswith("0123456") and row["env.git_dirty"] is False
    assert row["env.device"] == "NVIDIA H100 80GB HBM3"
    train = _row(collected, "finetune-cookie-coco-aaaa1111")
    assert (train["train.steps"], train["train.samples_seen"], train["train.wall_s"]) == \
        (100, 25600, 3600.5)
    assert train["train.final_loss.vv"] == 0.22


def test_collect_run_root_scans_directories_and_marks_grids(runs: Path) -> None:
    every = collect(runs)
    assert set(every["stage_id"]) == {p.name for p in runs.iterdir()}
    assert "missing" not in set(every["status"])
    # Lineage from resolved.yaml alone: the eval's parent directory says it was fine-tuned.
    assert _row(every, COOKIE_COCO)["regime"] == "finetuned"
    planned = collect(runs, {"table2": _manifest(runs, _plan(runs), GRID)})
    assert _row(planned, "eval-clip-coco-eeee5555")["status"] == "missing"
    assert _row(planned, COOKIE_COCO)["grids"] == "table2"


def test_collected_csv_round_trips(tmp_path: Path, collected: pd.DataFrame) -> None:
    path = write_collected(collected, tmp_path / "collected.csv")
    back = pd.read_csv(path)
    assert list(back["stage_id"]) == list(collected["stage_id"])
    assert _row(back, COOKIE_COCO)["metric.rsum"] == _row(collected, COOKIE_COCO)["metric.rsum"]


def test_costs_long_has_one_row_per_protocol_and_mode(collected: pd.DataFrame) -> None:
    costs = costs_long(collected)
    cross = costs[costs["stage_id"] == "eval-single_stream-flickr30k-ffff6666"]
    assert set(cross["mode"]) == {"full_scoring", "topk_rerank"}
    assert dict(zip(cross["mode"], cross["status"])) == {"full_scoring": "extrapolated",
                                                          "topk_rerank": "measured"}


# --- protocol join ---------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "joined"), [
    (("coco", "test", 5000, "finetuned"), ("karpathy_test", "finetuned_5k")),
    (("flickr30k", "test", 1000, "finetuned"), ("karpathy_test", "finetuned_1k")),
    (("coco", "test", 5000, "zeroshot"), ("karpathy_test", "zeroshot_5k")),
    (("synthetic", "test", 5000, "finetuned"), None),
    (("coco", "val", 5000, "finetuned"), None),
    (("coco", "test", 4999, "finetuned"), None),
    (("coco", "test", 5000, None), None),
    (("flickr30k", "test", 1000, "transfer:coco"), None),
])
def test_paper_protocol_joins_on_keys_only(args: tuple, joined: tuple | None) -> None:
    assert paper_protocol(*args) == joined


# --- retrieval table -------------------------------------------------------------------------

#: Column header of each metric in the Markdown and LaTeX retrieval tables.
HEADER = {"i2t_R@1": "i2t R@1", "i2t_R@5": "i2t R@5", "i2t_R@10": "i2t R@10",
          "t2i_R@1": "t2i R@1", "t2i_R@5": "t2i R@5", "t2i_R@10": "t2i R@10", "rsum": "RSUM"}
DONE_EVALS = (COOKIE_COCO, "eval-cookie-flickr30k-abcd5678", "eval-clip-synthetic-5a5a5a5a")


def test_retrieval_numbers_equal_result_files(runs: Path, tmp_path: Path) -> None:
    paths = write_grid_tables(GRID, _plan(runs), runs, tmp_path)
    tables = tmp_path / "tables"
    assert tables / "table2.md" in paths
    md = markdown_rows((tables / "table2.md").read_text(),
                       "table2: cross-modal retrieval — fixture grid")
    tex = latex_rows((tables / "table2_retrieval.tex").read_text())
    csv = pd.read_csv(tables / "table2_retrieval.csv")
    assert set(HEADER) == set(METRICS)
    for name in DONE_EVALS:
        metrics = _result(runs, name)["metrics"]
        md_row, tex_row = row_by(md, "Run", name), row_by(tex, "Run", name)
        csv_row = csv[(csv["source"] == "harness") & (csv["stage_id"] == name)]
        assert len(csv_row) == 1
        for m, header in HEADER.items():
            # Each cell under its own header, in every format, for this stage only.
            assert md_row[header] == f"{metrics[m]:.2f}", (name, header)
            assert tex_row[header] == f"{metrics[m]:.2f}", (name, header)
            assert csv_row[m].iloc[0] == metrics[m], (name, m)
    # Rows without a result print no number under any metric header.
    for name in ("eval-single_stream-coco-dddd4444", "eval-clip-coco-eeee5555"):
        assert {row_by(md, "Run", name)[h] for h in HEADER.values()} == {""}
        assert {row_by(tex, "Run", latex_escape(name))[h] for h in HEADER.values()} == {""}


def test_paper_rows_carry_status_marks_and_legend(collected: pd.DataFrame,
                                                  paper: pd.DataFrame) -> None:
    table = retrieval_table(collected, GRID, paper)
    rows = {(r[0], r[1]): r for s in table.sections for r in s.rows
            if s.heading and s.heading.startswith("COCO")}
    assert rows[("paper", "COOKIE")][5] == "71.6†"       # recalled
    assert rows[("paper", "UNITER-large")][5] == "65.7"  # sourced: unmarked
    lightning = rows[("paper", "LightningDOT")]          # R@1 sourced, R@5 recalled
    assert (lightning[5], lightning[6]) == ("60.1", "85.1†")
    assert any("† = recalled" in note and "‡ = assumed" in note for note in table.notes)


def test_paper_row_status_is_its_weakest_number() -> None:
    from harness.analysis.tables import PaperRow

    row = PaperRow("table2", "X", statuses={"i2t_R@1": "sourced", "t2i_R@1": "recalled"})
    assert row.status() == "recalled"
    assert PaperRow("table2", "X").status() == "sourced"  # no numbers: nothing to weaken it


def test_paper_rows_key_limits_published_rows_to_the_harness_models(
        collected: pd.DataFrame, paper: pd.DataFrame) -> None:
    def paper_models(grid: dict) -> set[str]:
        table = retrieval_table(collected, grid, paper)
        return {r[1] for s in table.sections for r in s.rows if r[0] == "paper"}

    assert len(paper_models(GRID)) > 10  # a grid named like a published table: every row
    assert paper_models({**GRID, "paper_rows": False}) == {"COOKIE"}
    assert paper_models({"name": "mine", "paper_rows": True}) == paper_models(GRID)


def test_delta_row_is_harness_minus_paper(collected: pd.DataFrame, paper: pd.DataFrame) -> None:
    data = retrieval_table(collected, GRID, paper).data
    delta = data[(data["source"] == "delta") & (data["stage_id"] == COOKIE_COCO)].iloc[0]
    assert delta["i2t_R@1"] == pytest.approx(70.12 - 71.6)
    assert delta["rsum"] == pytest.approx(477.31 - 481.6)
    assert data[data["source"] == "delta"]["stage_id"].tolist().count(
        "eval-single_stream-flickr30k-ffff6666") == 0  # no published row of the same model
    smoke = collected.assign(scale="smoke")  # same gallery, toy models: no delta at all
    assert "delta" not in set(retrieval_table(smoke, GRID, paper).data["source"])


def test_synthetic_rows_never_join_a_paper_protocol(collected: pd.DataFrame,
                                                    paper: pd.DataFrame) -> None:
    table = retrieval_table(collected, GRID, paper)
    synth = [s for s in table.sections if s.heading.startswith("synthetic")]
    assert len(synth) == 1 and "no paper counterpart" in synth[0].heading
    assert [r[0] for r in synth[0].rows] == ["harness"]  # no paper rows, no delta
    assert synth[0].rows[0][2] == "smoke"
    row = table.data[table.data["stage_id"] == "eval-clip-synthetic-5a5a5a5a"].iloc[0]
    assert row["section_dataset"] == "synthetic" and pd.isna(row["paper_protocol"])


def test_failed_running_and_missing_rows_show_status_not_numbers(
        collected: pd.DataFrame, paper: pd.DataFrame) -> None:
    table = retrieval_table(collected, GRID, paper)
    rows = [r for s in table.sections for r in s.rows if r[0] == "harness"]
    by_status = {r[-2].split(":")[0]: r for r in rows}
    for status in ("failed", "running", "missing"):
        assert set(by_status[status][5:12]) == {""}
    assert "CUDA out of memory" in by_status["failed"][-2]
    assert by_status["missing"][-1] == "eval-clip-coco-eeee5555"  # the run it would have
    # A missing stage has no error: its status says so and nothing else (no "; nan").
    assert by_status["missing"][-2] == "missing: never run (no run directory)"


def test_ablation_rows_list_distinguishing_overrides(runs: Path, paper: pd.DataFrame) -> None:
    common = ("task.steps=5",)
    # Fine-tuned parents: the COCO row joins its published protocol, so paper rows appear.
    ft = _stage(runs, "finetune", "cookie", "coco", "finetune-cookie-coco-aaaa1111")
    plan = [_stage(runs, "eval", "cookie", "coco", COOKIE_COCO, ft, overrides=common),
            _stage(runs, "eval", "cookie", "flickr30k", "eval-cookie-flickr30k-abcd5678", ft,
                   overrides=(*common, "model.wst.layers=0"))]
    table = retrieval_table(collect_plan(plan, "ablations", runs), {"name": "ablations"}, paper)
    assert "Variant" in table.columns
    variants = [r[2] for s in table.sections for r in s.rows if r[0] == "harness"]
    assert variants == ["—", "model.wst.layers=0"]
    harness = table.data[table.data["source"] == "harness"]
    assert harness["variant"].fillna("").tolist() == ["", "model.wst.layers=0"]
    # Paper rows get the Variant column too: every row has one cell per column.
    assert any(r[0] == "paper" for s in table.sections for r in s.rows)
    assert all(len(r) == len(table.columns) for s in table.sections for r in s.rows)


# --- LaTeX -----------------------------------------------------------------------------------

def _assert_compiles_shaped(tex: str) -> None:
    stripped = re.sub(r"\\[{}%&#_$]", "", tex)
    assert stripped.count("{") == stripped.count("}"), "unbalanced braces"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} closes the wrong environment"
    assert not stack, f"unclosed environments {stack}"
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    body = tex.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0]
    # Outside of escapes, no raw specials in cells: every & is a column separator.
    for line in body.splitlines():
        if line.endswith(r"\\") and not line.startswith(r"\multicolumn"):
            cells = re.split(r"(?<!\\)&", line[:-2])
            assert len(cells) == tex.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0].__len__()
        assert re.search(r"(?<!\\)[%#_]", line) is None, line


def test_latex_escapes_special_characters() -> None:
    assert latex_escape("a_b 50% R&D #1 {x} $") == r"a\_b 50\% R\&D \#1 \{x\} \$"
    table = Table(stem="t_x", title="odd_title 100%", columns=["Model_name", "R@1 %"],
                  sections=[Section("head_ing & more", [["a_b", "5% & #3"], ["x†", "y‡"]])],
                  notes=["note_with # and %"], data=pd.DataFrame(), numeric=frozenset({1}))
    tex = to_latex(table)
    _assert_compiles_shaped(tex)
    assert r"a\_b & 5\% \& \#3 \\" in tex
    assert r"x\textsuperscript{\dag}" in tex and r"\label{tab:t-x}" in tex


def test_grid_latex_files_are_balanced(runs: Path, tmp_path: Path) -> None:
    paths = write_grid_tables(GRID, _plan(runs), runs, tmp_path)
    texs = [p for p in paths if p.suffix == ".tex"]
    assert {p.stem for p in texs} == {"table2_retrieval", "table2_cost", "table2_ratio",
                                      "table2_unimodal"}
    for path in texs:
        _assert_compiles_shaped(path.read_text())
    assert r"finetuned\_5k" in (tmp_path / "tables" / "table2_retrieval.tex").read_text()


# --- cost, ratio, unimodal -------------------------------------------------------------------

def test_cost_table_labels_measured_and_extrapolated(collected: pd.DataFrame,
                                                     paper: pd.DataFrame) -> None:
    table = cost_table(collected, GRID, paper)
    data = table.data
    cookie = data[(data["stage_id"] == COOKIE_COCO)].iloc[0]
    assert (cookie["total_s"], cookie["timing"], cookie["params_total"]) == \
        (61.75, "measured", 147_180_000)
    full = data[(data["mode"] == "full_scoring")].iloc[0]
    assert (full["total_s"], full["timing"]) == (12503.0, "extrapolated")
    assert "measured (this split)" in {r[12] for r in table.sections[0].rows}
    bench = data[data["stage_id"] == "bench-clip-synthetic-b3b3b3b3"].iloc[0]
    assert bench["protocol"] == "custom_50x250"


#: Cost-table cells of the fixture's timed protocols, by hand from their result.json files:
#: (model, protocol, mode) -> {header: printed value}. Seconds to 4 significant figures,
#: query seconds in ms to 3, parameters in millions to 4, GFLOPs to 3.
COST_CELLS = {
    ("cookie", "coco_5k (5000/25000)", "index + rank"): {
        "Params (M)": "147.2", "GFLOPs / image": "12.3", "GFLOPs / text": "2.1",
        "GFLOPs / pair": "", "Index (s)": "61.5", "Query i2t (ms)": "4.2",
        "Query t2i (ms)": "3.1", "Total (s)": "61.75", "Timing": "measured"},
    ("single_stream", "flickr30k_1k (1000/5000)", "full scoring"): {
        "Params (M)": "111", "GFLOPs / image": "9", "GFLOPs / text": "0.8",
        "GFLOPs / pair": "15", "Index (s)": "3", "Query i2t (ms)": "2500",
        "Query t2i (ms)": "12500", "Total (s)": "12503", "Timing": "extrapolated"},
    ("single_stream", "flickr30k_1k (1000/5000)", "top-k rerank"): {
        "Index (s)": "3", "Query i2t (ms)": "64", "Query t2i (ms)": "64", "Total (s)": "21",
        "Timing": "measured"},
}
#: Ratio-table cells: (protocol, cross-encoder (mode)) -> {header: printed value}.
RATIO_CELLS = {
    ("flickr30k_1k", "single_stream (full scoring)"): {
        "Dual encoder": "cookie", "Dual total (s)": "12.55", "Cross total (s)": "12503",
        "Ratio dual / cross": "0.001", "Timing": "extrapolated"},  # 12.55 / 12503
    ("flickr30k_1k", "single_stream (top-k rerank)"): {
        "Dual encoder": "cookie", "Dual total (s)": "12.55", "Cross total (s)": "21",
        "Ratio dual / cross": "0.598", "Timing": "extrapolated"},  # 12.55 / 21
}


def test_cost_and_ratio_cells_sit_under_their_headers(runs: Path, tmp_path: Path) -> None:
    write_grid_tables(GRID, _plan(runs), runs, tmp_path)
    tables = tmp_path / "tables"
    md_text = (tables / "table2.md").read_text()
    formats = {
        "md": (markdown_rows(md_text, "table2: retrieval cost per model"),
               markdown_rows(md_text, "table2: dual vs cross-encoder inference time"), str),
        "tex": (latex_rows((tables / "table2_cost.tex").read_text()),
                latex_rows((tables / "table2_ratio.tex").read_text()), latex_escape),
    }
    for fmt, (cost_rows, ratio_rows, esc) in formats.items():
        for (model, protocol, mode), cells in COST_CELLS.items():
            row = row_where(cost_rows, {"Model": esc(model), "Protocol (img/txt)": esc(protocol),
                                        "Mode": esc(mode)})
            assert {h: row[h] for h in cells} == {h: esc(v) for h, v in cells.items()}, fmt
        for (protocol, cross), cells in RATIO_CELLS.items():
            row = row_where(ratio_rows, {"Protocol": esc(protocol),
                                         "Cross-encoder (mode)": esc(cross)})
            assert {h: row[h] for h in cells} == {h: esc(v) for h, v in cells.items()}, fmt
    cost_csv = pd.read_csv(tables / "table2_cost.csv")
    cookie = cost_csv[(cost_csv["stage_id"] == COOKIE_COCO) & (cost_csv["mode"] == "dual")]
    assert cookie[["index_s", "total_s", "query_i2t_s", "query_t2i_s"]].values.tolist() == [
        [61.5, 61.75, 0.0042, 0.0031]]
    ratio_csv = pd.read_csv(tables / "table2_ratio.csv")
    full = ratio_csv[ratio_csv["cross_mode"] == "full_scoring"].iloc[0]
    assert (full["dual_total_s"], full["cross_total_s"]) == (12.55, 12503.0)
    assert full["ratio"] == 12.55 / 12503.0


def test_ratio_table_sits_beside_the_paper_claim(collected: pd.DataFrame,
                                                 paper: pd.DataFrame) -> None:
    data = ratio_table(collected, GRID, paper).data
    full = data[(data["protocol"] == "flickr30k_1k") & (data["cross_mode"] == "full_scoring")]
    assert full["ratio"].iloc[0] == pytest.approx(12.55 / 12503.0)
    assert full["status"].iloc[0] == "extrapolated"  # either side extrapolated
    assert full["paper_ratio"].iloc[0] == 0.003 and full["paper_status"].iloc[0] == "sourced"


def test_ratio_table_says_not_measured_without_timings(paper: pd.DataFrame,
                                                       collected: pd.DataFrame) -> None:
    no_costs = collected[[c for c in collected.columns if not c.startswith("cost.")]]
    table3 = {"name": "table3", "show_empty_tables": ["cost", "ratio"]}
    table = ratio_table(no_costs, table3, paper)
    assert table.sections[0].rows == [[
        "—", "", "", "", "", "", "not measured: no dual and cross-encoder timed on one protocol",
        "", "0.003 (COOKIE vs one-stream)"]]
    assert table.data.to_dict("records") == [
        {"status": "not measured", "paper_ratio": 0.003, "paper_status": "sourced"}]
    assert ratio_table(no_costs, {"name": "smoke"}, paper) is None
    # Without the claim in the published numbers the table says so.
    no_claim = paper[paper["table"] != "claims"]
    table = ratio_table(no_costs, table3, no_claim)
    assert table.sections[0].rows[0][-1] == "not in results/paper"
    assert table.data.to_dict("records") == [
        {"status": "not measured", "paper_ratio": None, "paper_status": None}]


def test_unimodal_table_when_metrics_present(collected: pd.DataFrame,
                                             paper: pd.DataFrame) -> None:
    table = unimodal_table(collected, GRID, paper)
    assert table.columns[5:7] == ["i2i R@1", "t2t R@1"]
    cookie = table.data[table.data["stage_id"] == COOKIE_COCO].iloc[0]
    assert (cookie["t2t_R@1"], cookie["i2i_R@1"]) == (41.5, 33.25)
    assert any("5.7" in n for n in table.notes)


def test_grid_tables_key_picks_the_kinds(collected: pd.DataFrame, paper: pd.DataFrame) -> None:
    from harness.analysis.tables import grid_tables

    picked = grid_tables(collected, {"name": "table2", "tables": ["cost", "ratio"]}, paper)
    assert [t.stem for t in picked] == ["table2_cost", "table2_ratio"]
    every = grid_tables(collected, {"name": "table2"}, paper)
    assert [t.stem for t in every] == ["table2_retrieval", "table2_cost", "table2_ratio",
                                       "table2_unimodal"]
    with pytest.raises(ValueError, match=r"grid 'table2': unknown table kind\(s\) \['costs'\]"):
        grid_tables(collected, {"name": "table2", "tables": ["costs"]}, paper)


def test_smoke_like_grid_without_eval_stages_writes_no_retrieval_table(
        runs: Path, tmp_path: Path, paper: pd.DataFrame) -> None:
    df = collect_plan([_plan(runs)[-1]], "table3", runs)  # a bench stage only
    paths = write_tables(df, {"name": "table3"}, tmp_path, paper)
    assert {p.name for p in paths} == {"table3.md", "table3_cost.tex", "table3_cost.csv",
                                       "table3_ratio.tex", "table3_ratio.csv"}


# --- figures ---------------------------------------------------------------------------------

def test_figures_are_written(collected: pd.DataFrame, tmp_path: Path,
                             paper: pd.DataFrame) -> None:
    paths = write_figures(collected, GRID, tmp_path, paper, timing=collected)
    names = {p.name for p in paths}
    for stem in ("table2_recall_vs_time", "table2_cost_breakdown", "table2_recall_at_k",
                 "table2_train_finetune-cookie-coco-aaaa1111"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    for path in paths:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    captions = (tmp_path / "figures" / "table2.md").read_text()
    assert "recall_vs_time" in captions and "Skipped" not in captions


def test_recall_vs_time_borrows_bench_time_of_same_gallery(collected: pd.DataFrame) -> None:
    import matplotlib.pyplot as plt

    rows = collected[collected["stage_id"] == "eval-clip-synthetic-5a5a5a5a"]
    fig, caption = recall_vs_time_figure(rows, timing=collected)
    (x, _), = fig.axes[0].collections[0].get_offsets().tolist()
    plt.close(fig)
    assert x == pytest.approx(0.127) and "custom_50x250 retrieval protocol" in caption
    # Another gallery size: still the bench protocol's seconds, never the eval run's own.
    other = rows.assign(**{"protocol.n_images": 51})
    fig, _ = recall_vs_time_figure(other, timing=collected)
    (x, _), = fig.axes[0].collections[0].get_offsets().tolist()
    plt.close(fig)
    assert x == pytest.approx(0.127)


def test_eval_run_seconds_of_dual_and_cross_encoders() -> None:
    dual = {"eff.measured.encode_s": 1.5, "eff.measured.rank_s": 0.25}
    assert eval_run_seconds(dual) == (1.5, 0.25, 1.75)
    # A cross-encoder's eval times its features, pair scoring and ranking: total_s covers all.
    cross = {"eff.measured.features_s": 0.5, "eff.measured.rank_s": 0.01,
             "eff.measured.total_s": 80.0, "eff.measured.encode_s": float("nan")}
    assert eval_run_seconds(cross) == (0.5, 0.01, 80.0)
    assert eval_run_seconds({}) == (None, None, None)


def test_metrics_log_keeps_last_record_of_repeated_step(runs: Path) -> None:
    frame = read_metrics_log(runs / "finetune-cookie-coco-aaaa1111" / "metrics.jsonl")
    assert frame["step"].is_unique and frame["step"].max() == 100
    assert {"loss", "loss/itc", "loss/vv", "loss/tt"} <= set(frame.columns)


def test_report_cli_marks_missing_stages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.report import main

    # A manifest but no run at all: only written when asked (tests/test_ownership.py checks
    # the refusal).
    smoke = {"name": "smoke", "claim": "pipeline check"}
    stages = [_stage(tmp_path, "eval", "clip", "synthetic", "eval-clip-synthetic-00000000",
                     scale="smoke")]
    write_manifest(tmp_path / "runs", _manifest(tmp_path / "runs", stages, smoke))
    code = main(["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                 "--grids", "smoke", "--allow-empty"])
    printed = capsys.readouterr().out.split()
    assert code == 0
    assert str(tmp_path / "res" / "collected.csv") in printed
    md = (tmp_path / "res" / "tables" / "smoke.md").read_text()
    assert "missing: never run" in md and "no paper counterpart" in md


# --- whole files -----------------------------------------------------------------------------

EXPECTED = Path(__file__).parent / "fixtures" / "analysis" / "expected"


def test_written_tables_equal_the_reviewed_copies(runs: Path, tmp_path: Path) -> None:
    """Every table file of the fixture grid, byte for byte, against a reviewed copy.

    After an intended change of a table's text, rewrite the copies with
    ``UPDATE_EXPECTED_TABLES=1 pytest tests/test_analysis.py -k reviewed_copies`` and review
    the diff before committing it.
    """
    import difflib
    import os

    paths = write_grid_tables(GRID, _plan(runs), runs, tmp_path)
    assert len(paths) == 9
    if os.environ.get("UPDATE_EXPECTED_TABLES") == "1":
        EXPECTED.mkdir(exist_ok=True)
        for path in paths:
            (EXPECTED / path.name).write_bytes(path.read_bytes())
    assert sorted(p.name for p in EXPECTED.iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        got, want = path.read_text(), (EXPECTED / path.name).read_text()
        diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "expected",
                                              "written", lineterm="", n=1))
        assert got == want, f"{path.name} differs from its reviewed copy:\n{diff[:3000]}"
