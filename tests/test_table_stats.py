"""Statistics in the retrieval tables: bootstrap intervals, paired marks against a configured
reference, and seeds aggregated to mean ± std.

The run directories are real files: a fixture record (tests/fixtures/analysis/runs) with its
metrics, ``ranks.npz`` and intervals recomputed from synthetic per-query ranks, collected as a
tiny grid (50 images, 250 captions: the fixture's toy sizes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from table_cells import markdown_rows, row_where

from harness.analysis.cells import interval_text, num
from harness.analysis.collect import collect_plan
from harness.analysis.compare import Reference, read_reference
from harness.analysis.tables import write_tables
from harness.eval.retrieval import metrics_from_ranks, record_per_query
from harness.manifest import ManifestStage
from harness.record import Lineage, make_record

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "tests" / "fixtures" / "analysis" / "runs" / "eval-clip-synthetic-5a5a5a5a"
N_IMAGES, N_TEXTS = 50, 250
BOOTSTRAP = {"samples": 300, "seed": 0, "level": 0.95}
TITLE = "tiny: cross-modal retrieval — fixture grid"


def _ranks(seed: int, p_first: float) -> dict[str, np.ndarray]:
    """Per-query ranks with about ``p_first`` of each direction's queries at rank 1."""
    rng = np.random.default_rng(seed)
    return {"i2t": np.where(rng.random(N_IMAGES) < p_first, 1, rng.integers(2, 40, N_IMAGES)),
            "t2i": np.where(rng.random(N_TEXTS) < p_first, 1, rng.integers(2, 40, N_TEXTS))}


def _run(root: Path, name: str, model: str, ranks: dict[str, np.ndarray]) -> dict:
    """A done eval run directory whose metrics, ranks.npz and intervals agree."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record = json.loads((TEMPLATE / "result.json").read_text())
    tensors = {d: torch.as_tensor(r) for d, r in ranks.items()}
    record.update(stage_id=name, model=model, grid="tiny",
                  metrics=metrics_from_ranks(tensors["i2t"], tensors["t2i"]),
                  **record_per_query(run_dir, tensors, BOOTSTRAP))
    (run_dir / "result.json").write_text(json.dumps(record))
    (run_dir / "COMPLETE").write_text("")
    return record


def _stage(name: str, model: str, *overrides: str) -> ManifestStage:
    return ManifestStage(name, f"eval:{model}:synthetic", "eval", model, "synthetic",
                         scale="smoke", split="test",
                         overrides=("task=eval", f"model={model}", "data=synthetic",
                                    *overrides))


def _tables(root: Path, stages: list[ManifestStage], grid: dict) -> tuple[str, pd.DataFrame,
                                                                          pd.DataFrame]:
    collected = collect_plan(stages, grid["name"], root)
    write_tables(collected, grid, root / "results")
    out = root / "results" / "tables"
    csv = pd.read_csv(out / f"{grid['name']}_retrieval.csv")
    return (out / f"{grid['name']}.md").read_text(), csv, collected


GRID = {"name": "tiny", "claim": "fixture grid"}


def test_each_harness_recall_shows_its_bootstrap_interval(tmp_path: Path) -> None:
    records = {m: _run(tmp_path, f"eval-{m}-synthetic-0000000{i}", m, _ranks(i, 0.3))
               for i, m in enumerate(("cookie", "clip"))}
    stages = [_stage(r["stage_id"], m) for m, r in records.items()]
    md, csv, _ = _tables(tmp_path, stages, GRID)
    rows = markdown_rows(md, TITLE)
    for model, record in records.items():
        cells = row_where(rows, {"Source": "harness", "Model": model})
        line = csv[csv["stage_id"] == record["stage_id"]].iloc[0]
        for metric, header in (("i2t_R@1", "i2t R@1"), ("t2i_R@5", "t2i R@5"),
                               ("rsum", "RSUM")):
            low, high = record["intervals"]["bounds"][metric]
            assert low <= record["metrics"][metric] <= high
            assert cells[header] == f"{num(record['metrics'][metric])} {interval_text(low, high)}"
            assert (line[f"{metric}_low"], line[f"{metric}_high"]) == pytest.approx((low, high))
    assert ("its 95% percentile bootstrap interval (300 resamples of the test queries: images "
            "for i2t, captions for t2i") in md
    assert "Paired Δ" not in md  # no reference configured: no comparison column


def test_rows_are_compared_with_the_configured_reference(tmp_path: Path) -> None:
    full = _ranks(0, 0.5)
    worse = {d: np.where(r == 1, 5, r) for d, r in full.items()}  # loses every rank-1 hit
    noisy = {d: r.copy() for d, r in full.items()}
    noisy["t2i"][:3] = np.where(noisy["t2i"][:3] == 1, 2, 1)  # three captions swap
    runs = [("eval-cookie-synthetic-aaaaaaaa", "cookie", full, ()),
            ("eval-clip-synthetic-bbbbbbbb", "clip", worse, ()),
            ("eval-cookie-synthetic-cccccccc", "cookie", noisy, ("model.wst.layers=0",))]
    for name, model, ranks, _ in runs:
        _run(tmp_path, name, model, ranks)
    stages = [_stage(name, model, *extra) for name, model, _, extra in runs]
    grid = {**GRID, "reference": {"model": "cookie", "overrides": []}}
    md, csv, _ = _tables(tmp_path, stages, grid)
    rows = markdown_rows(md, TITLE)
    cell = {r["Run"]: r["Paired Δ vs reference"] for r in rows if r["Source"] == "harness"}
    assert cell["eval-cookie-synthetic-aaaaaaaa"] == "reference"
    clip = cell["eval-clip-synthetic-bbbbbbbb"]
    assert clip.startswith("RSUM -") and clip.count("*") == 3 and "within noise" not in clip
    assert cell["eval-cookie-synthetic-cccccccc"].endswith(" — within noise")
    assert "*" not in cell["eval-cookie-synthetic-cccccccc"]
    line = csv.set_index("stage_id").loc["eval-clip-synthetic-bbbbbbbb"]
    assert line["vs_reference"] == "eval-cookie-synthetic-aaaaaaaa"
    assert bool(line["vs_ref_rsum_significant"]) and line["vs_ref_rsum_high"] < 0
    assert "the reference is cookie (no variant override) in the same section" in md
    assert "* = the interval excludes 0" in md


def test_seeds_are_one_row_with_mean_std_and_n(tmp_path: Path) -> None:
    seeds = (0, 1, 2)
    stages, metrics = [], {"cookie": [], "clip": []}
    for model, p_first in (("cookie", 0.6), ("clip", 0.2)):
        for s in seeds:
            name = f"eval-{model}-synthetic-{s:08d}"
            metrics[model].append(_run(tmp_path, name, model, _ranks(10 + s, p_first))["metrics"])
            stages.append(_stage(name, model, f"seed={s}"))
    grid = {**GRID, "reference": {"model": "cookie", "overrides": []}}
    md, csv, collected = _tables(tmp_path, stages, grid)
    assert len(collected) == 6  # the per-seed stages stay in collected.csv
    rows = [r for r in markdown_rows(md, TITLE) if r["Source"] == "harness"]
    assert [r["Model"] for r in rows] == ["cookie", "clip"]
    for row in rows:
        values = [m["rsum"] for m in metrics[row["Model"]]]
        mean, std = np.mean(values), np.std(values, ddof=1)
        assert row["RSUM"].startswith(f"{num(mean)} ± {num(std)} [")
        assert row["Status"] == "done; mean ± std over n=3 seeds (0, 1, 2)"
        assert row["Run"].split() == [f"eval-{row['Model']}-synthetic-{s:08d}" for s in seeds]
    clip = rows[1]["Paired Δ vs reference"]
    assert "RSUM -" in clip and "(n=3 seeds, 3/3 exclude 0)*" in clip
    line = csv[csv["model"] == "clip"].iloc[0]
    assert line["n_seeds"] == 3 and line["seeds"] == "0 1 2"
    assert line["rsum_std"] == pytest.approx(np.std([m["rsum"] for m in metrics["clip"]],
                                                    ddof=1))
    assert "mean ± std: over the training seeds of one experiment" in md


@pytest.mark.parametrize("value, message", [
    ("cookie", "grid 'g' reference: expected {model: <harness model>, overrides: [...]}, "
               "got 'cookie'"),
    ({"model": "cookie", "overrides": "a=1"}, "grid 'g' reference.overrides: expected a list "
                                              "of key=value strings, got 'a=1'"),
    ({"model": "cookie", "label": "full"}, "grid 'g' reference: unknown key(s) ['label']; "
                                           "known: model, overrides"),
])
def test_a_bad_reference_is_refused_naming_the_grid(value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        read_reference({"name": "g", "reference": value})
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["ablations", "table2"])
def test_committed_grids_name_the_full_cookie_model_as_reference(name: str) -> None:
    grid = yaml.safe_load((ROOT / "configs" / "grid" / f"{name}.yaml").read_text())
    assert read_reference(grid) == Reference("cookie", frozenset())
    # Exactly one experiment runs that model with no variant override: the full model.
    full = [e for e in grid["experiments"]
            if "cookie" in e["models"] and not e.get("overrides")]
    assert len(full) == 1


def test_an_eval_stage_record_keeps_the_intervals_it_computed(tmp_path: Path) -> None:
    # What the eval stage hands the record writer (record_per_query's intervals block) must
    # make a record, or every dual-encoder eval stage fails before writing result.json.
    tensors = {d: torch.as_tensor(r) for d, r in _ranks(3, 0.4).items()}
    block = record_per_query(tmp_path, tensors, BOOTSTRAP)
    record = make_record(stage_id="eval-clip-synthetic-00000000", grid="tiny", task="eval",
                         model="clip", dataset="synthetic", split="test", scale="smoke",
                         lineage=Lineage((), "tiny", "smoke", ()),
                         metrics=metrics_from_ranks(tensors["i2t"], tensors["t2i"]),
                         extra=dict(block))
    assert record.per_query == "ranks.npz"
    assert record.intervals is not None and record.intervals.samples == 300
    assert record.intervals.bounds["rsum"] == tuple(block["intervals"]["bounds"]["rsum"])
