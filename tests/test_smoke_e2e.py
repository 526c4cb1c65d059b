"""End to end: ``python -m harness.run grid=smoke`` builds data, trains, evaluates, tabulates."""

from __future__ import annotations

import json

import pytest

from harness.eval.results import PROTOCOL_KEYS, REQUIRED_KEYS
from harness.run import main

pytestmark = pytest.mark.slow


def test_smoke_grid_end_to_end(tmp_path, capsys):
    args = [
        "grid=smoke", f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}",
        f"data.root={tmp_path / 'data'}", "data.generate.n_images=600",
        "scale.train.steps=150", "data.num_workers=0",
    ]
    assert main(args) == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert [r.name.split("-")[0] for r in runs] == ["eval", "finetune"]
    eval_dir, train_dir = runs
    for run in runs:
        for name in ("config.yaml", "resolved.yaml", "env.json", "result.json", "COMPLETE"):
            assert (run / name).is_file(), f"{run.name} lacks {name}"
    result = json.loads((eval_dir / "result.json").read_text())
    assert set(REQUIRED_KEYS) <= set(result) and set(PROTOCOL_KEYS) <= set(result["protocol"])
    assert result["protocol"]["n_images"] == 60 and result["protocol"]["n_texts"] == 300
    metrics, chance = result["metrics"], result["chance"]
    # A trained model, not a lucky draw: several times chance in both directions.
    assert metrics["i2t_R@1"] > 3 * chance["i2t_R@1"], metrics
    assert metrics["t2i_R@1"] > 3 * chance["t2i_R@1"], metrics
    assert (train_dir / "checkpoints" / "latest.pt").is_file()
    # Each record says how long its stage took (bench/profile_runs.py adds them up); the
    # training loop is part of its stage.
    train = json.loads((train_dir / "result.json").read_text())
    assert 0 < train["train"]["wall_s"] < train["timing"]["stage_s"]
    assert result["timing"]["stage_s"] > 0 and result["timing"]["process_age_at_start_s"] > 0
    assert (train_dir / "tokenizer" / "vocab.txt").is_file()
    assert len(list((tmp_path / "runs" / ".features").glob("*.pt"))) == 1  # embeddings cached
    table = (tmp_path / "results" / "tables" / "smoke.md").read_text()
    assert f"{metrics['t2i_R@1']:.2f}" in table and eval_dir.name in table

    capsys.readouterr()
    assert main(args) == 0  # everything is done: nothing reruns
    out = capsys.readouterr().out
    assert "0 ran, 2 already done" in out
