"""Grid manifests and the report that reads them (and run records) only.

Claims: every grid run writes ``<runs>/.grids/<grid>-<time>.json`` listing its stages, labels
and lineage; ``python -m harness.report`` rebuilds the same tables from manifests and run
records with no config composition and no scheduler call, also for a run with overrides it
is not told about; the newest manifest of a grid wins and ``--manifest`` picks another; a
grid that maps to a published table prints that table's sections whether or not it ran them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis.collect import collect_plan
from harness.analysis.paper import load_paper_numbers
from harness.analysis.tables import retrieval_table
from harness.data.synthetic import ensure_synthetic
from harness.manifest import (
    Manifest,
    ManifestError,
    ManifestStage,
    newest_manifests,
    read_manifest,
    write_manifest,
)
from harness.report import main as report
from harness.run import main as run

FIXTURE = Path(__file__).parent / "fixtures" / "analysis" / "runs"
REPO = Path(__file__).resolve().parents[1]


def _grid_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["grid=smoke", f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'res'}",
            f"data.root={tmp_path / 'data'}", "data.generate.n_images=60",
            "data.num_workers=0", *extra]


def _forbid_compose_and_scheduler(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any config composition or scheduler/subprocess call fail loudly; returns the log."""
    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(f"{name}{args!r}")
            raise AssertionError(f"the report called {name}")
        return call

    import harness.config

    monkeypatch.setattr(harness.config, "compose", refuse("compose"))
    monkeypatch.setattr(subprocess, "run", refuse("subprocess.run"))
    monkeypatch.setattr(subprocess, "Popen", refuse("subprocess.Popen"))
    monkeypatch.setattr(shutil, "which", refuse("shutil.which"))
    return calls


# --- a real grid run ---------------------------------------------------------------------------

@pytest.mark.slow
def test_report_rebuilds_a_grid_run_with_overrides_from_its_manifest_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert run(_grid_args(tmp_path, "scale.train.steps=6")) == 0
    (path,) = (tmp_path / "runs" / ".grids").glob("smoke-*.json")
    manifest = read_manifest(path)
    assert manifest.grid == "smoke" and manifest.executor == "local"
    assert "scale.train.steps=6" in manifest.overrides
    finetune, evaluation = manifest.stages
    assert (finetune.label, evaluation.label) == ("finetune:clip:synthetic", "eval:clip:synthetic")
    assert evaluation.parent == finetune.stage_id and evaluation.split == "test"
    assert "scale.train.steps=6" in finetune.overrides and finetune.scale == "smoke"
    assert {p.name for p in (tmp_path / "runs").iterdir()} >= {s.stage_id for s in
                                                                manifest.stages}
    # The record carries the lineage the manifest lists.
    record = json.loads((tmp_path / "runs" / evaluation.stage_id / "result.json").read_text())
    assert record["lineage"]["parents"][0]["stage_id"] == finetune.stage_id
    grid_table = (tmp_path / "res" / "tables" / "smoke.md").read_text()
    capsys.readouterr()

    calls = _forbid_compose_and_scheduler(monkeypatch)
    # Not told about scale.train.steps=6, and nothing composed: the run's numbers, no missing.
    assert report(["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "d")]) == 0
    table = (tmp_path / "d" / "tables" / "smoke.md").read_text()
    row = next(line for line in table.splitlines() if evaluation.stage_id in line)
    assert "| done |" in row and "missing" not in table
    assert f"{record['metrics']['i2t_R@1']:.2f}" in row
    # No argument at all, from the directory holding runs/: the same tables as the grid wrote.
    monkeypatch.delenv("HARNESS_RUNS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert report([]) == 0
    assert (tmp_path / "results" / "tables" / "smoke.md").read_text() == grid_table
    assert calls == []


def test_a_local_grid_writes_its_manifest_before_a_stage_fails(tmp_path, capsys) -> None:
    ensure_synthetic(tmp_path / "data", n_images=60, seed=0, image_size=64)
    (tmp_path / "data" / "dataset_synthetic.json").write_text('{"images": [}')
    assert run(_grid_args(tmp_path, "scale.train.steps=3")) == 1
    (path,) = (tmp_path / "runs" / ".grids").glob("smoke-*.json")
    manifest = read_manifest(path)
    assert [s.task for s in manifest.stages] == ["finetune", "eval"]
    assert manifest.grid_config["name"] == "smoke" and manifest.grid_config["claim"]
    capsys.readouterr()
    assert report(["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "d")]) == 0
    # Read from the manifest and the stage directories alone: the failed fine-tune and the
    # eval stage it blocked (never started, so no directory) are both listed.
    collected = pd.read_csv(tmp_path / "d" / "collected.csv").set_index("stage_id")
    finetune, evaluation = manifest.stages
    assert collected.loc[finetune.stage_id, "status"] == "failed"
    assert collected.loc[evaluation.stage_id, "status"] == "missing"
    assert "missing: never run" in (tmp_path / "d" / "tables" / "smoke.md").read_text()


# --- choosing manifests ------------------------------------------------------------------------

def _stage(stage_id: str) -> ManifestStage:
    task, model, dataset, _ = stage_id.split("-")
    return ManifestStage(stage_id, f"{task}:{model}:{dataset}", task, model, dataset,
                         scale="paper", split="test")


def _manifest(runs: Path, created: str, *stage_ids: str) -> Manifest:
    return Manifest("smoke", created, "local", str(runs), {"name": "smoke", "claim": "c"}, (),
                    tuple(_stage(s) for s in stage_ids))


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "runs"))


def test_newest_manifest_wins_and_manifest_picks_another(runs, tmp_path, capsys) -> None:
    old = write_manifest(runs, _manifest(runs, "2026-11-29T10:00:00+00:00",
                                         "eval-cookie-coco-bbbb2222"), "20261129-100000")
    write_manifest(runs, _manifest(runs, "2026-11-30T10:00:00+00:00",
                                   "eval-cookie-flickr30k-abcd5678"), "20261130-100000")
    args = ["--runs", str(runs), "--results", str(tmp_path / "d")]
    assert report(args) == 0
    table = (tmp_path / "d" / "tables" / "smoke.md").read_text()
    assert "eval-cookie-flickr30k-abcd5678" in table and "eval-cookie-coco-bbbb2222" not in table
    assert report([*args, "--manifest", str(old)]) == 0
    table = (tmp_path / "d" / "tables" / "smoke.md").read_text()
    assert "eval-cookie-coco-bbbb2222" in table and "eval-cookie-flickr30k-abcd5678" not in table


def test_a_legacy_manifest_is_skipped_and_a_malformed_one_named(runs, tmp_path, capsys) -> None:
    grids = runs / ".grids"
    grids.mkdir()
    # What SLURM submissions wrote before manifests carried lineage: skipped, not an error.
    (grids / "smoke-20261101-000000.json").write_text(json.dumps(
        {"grid": "smoke", "submitted_at": "20261101-000000", "stages": {}}))
    assert newest_manifests(runs) == {}
    bad = _manifest(runs, "2026-11-30T10:00:00+00:00", "eval-cookie-coco-bbbb2222").to_json()
    del bad["stages"]["eval-cookie-coco-bbbb2222"]["task"]
    path = grids / "smoke-20261130-100000.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match=r"field stages\.eval-cookie-coco-bbbb2222\.task"):
        read_manifest(path)
    capsys.readouterr()
    assert report(["--runs", str(runs), "--results", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and ".task: missing" in err[0]
    assert not (tmp_path / "d").exists()


def test_report_ignores_overrides_and_says_so(runs, tmp_path, capsys) -> None:
    write_manifest(runs, _manifest(runs, "2026-11-30T10:00:00+00:00",
                                   "eval-cookie-coco-bbbb2222"))
    assert report(["--runs", str(runs), "--results", str(tmp_path / "d"), "--grids", "smoke",
                   "scale=paper"]) == 0
    assert "ignoring scale=paper" in capsys.readouterr().err


def test_the_report_imports_neither_the_planner_nor_the_config_nor_training() -> None:
    code = ("import sys, harness.report, harness.eval.results\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')"
            " or m.startswith(('harness.launch', 'harness.train', 'harness.config')))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True, env={"PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


# --- tables that always show the paper ----------------------------------------------------------

def _smoke_rows(runs: Path, rerank: dict | None = None) -> pd.DataFrame:
    stages = [ManifestStage("eval-clip-synthetic-5a5a5a5a", "eval:clip:synthetic", "eval",
                            "clip", "synthetic", scale="smoke", split="test")]
    df = collect_plan(stages, "table2", runs)
    for key, value in (rerank or {}).items():
        df[key] = [value]
    return df


def _sections(table) -> dict[str, list[list[str]]]:
    return {s.heading: s.rows for s in table.sections}


def test_table2_prints_the_published_table_beside_smoke_rows(runs: Path) -> None:
    paper = load_paper_numbers()
    grid = {"name": "table2", "claim": "c", "paper_table": "table2"}
    sections = _sections(retrieval_table(_smoke_rows(runs), grid, paper))
    flickr = next(rows for h, rows in sections.items() if h.startswith("Flickr30K"))
    coco = next(rows for h, rows in sections.items() if h.startswith("COCO — Karpathy test, 5K"))
    cookie = next(r for r in flickr if r[:2] == ["paper", "COOKIE"])
    assert cookie[5] == "89.0†"  # i2t R@1, recalled
    assert any(r[:2] == ["paper", "COOKIE"] and r[5] == "71.6†" for r in coco)
    for rows in (flickr, coco):  # no harness run on them: say so, with the command
        (not_run,) = [r for r in rows if r[0] == "harness"]
        assert "not run" in not_run[-2]
        assert "python -m harness.run grid=table2 scale=paper" in not_run[-2]
    synthetic = next(rows for h, rows in sections.items() if h.startswith("synthetic"))
    assert [r[0] for r in synthetic] == ["harness"]  # beside, never joined: no Δ, no paper row
    assert not any(r[0].startswith("Δ") for rows in sections.values() for r in rows)
    # A grid that maps to no published table prints only what it ran.
    plain = _sections(retrieval_table(_smoke_rows(runs), {"name": "smoke"}, paper))
    assert list(plain) == [h for h in sections if h.startswith("synthetic")]


def test_a_rerank_row_names_its_first_stage(runs: Path) -> None:
    df = _smoke_rows(runs, {"protocol.rerank_k": 16,
                            "protocol.first_stage": "eval-clip-synthetic-5a5a5a5a"})
    table = retrieval_table(df, {"name": "smoke"}, load_paper_numbers())
    (row,) = [r for s in table.sections for r in s.rows if r[0] == "harness"]
    assert row[4] == "50 img / 250 txt; top-16 rerank of eval:clip:synthetic"
