"""Every registered model end to end at toy size: pretrain -> finetune -> eval through
``python -m harness.run`` (the stage runner users call), on the embedded dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.registry import MODELS
from harness.run import main

pytestmark = pytest.mark.slow

#: Loss terms each model's training stages must log: the stage paths really ran the model.
LOSS_TERMS = {"cookie": {"itc", "vv", "tt"}, "clip": {"itc"},
              "single_stream": {"itm", "mlm"}}
RECALLS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")


def test_every_registered_model_has_an_end_to_end_test() -> None:
    assert set(MODELS.names()) == set(LOSS_TERMS)


def _stage_dirs(runs: Path) -> dict[str, Path]:
    dirs = [p for p in runs.iterdir() if not p.name.startswith(".")]
    return {p.name.split("-")[0]: p for p in dirs}


@pytest.mark.parametrize("model", sorted(LOSS_TERMS))
def test_pretrain_finetune_eval_through_the_stage_runner(model: str, tmp_path: Path) -> None:
    args = [
        "grid=table2", f"grid.experiments.0.models=[{model}]",
        "grid.experiments.1.models=[]",  # the re-ranking row needs COOKIE's eval run
        f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}",
        f"data.root={tmp_path / 'data'}", "data.generate.n_images=200", "data.num_workers=0",
        "scale.pretrain.steps=4", "scale.train.steps=4",
        "scale.pretrain.batch_size=16", "scale.train.batch_size=16",
    ]
    assert main(args) == 0
    stages = _stage_dirs(tmp_path / "runs")
    assert set(stages) == {"pretrain", "finetune", "eval"}
    for task, run in stages.items():
        assert run.name.startswith(f"{task}-{model}-synthetic-")
        for name in ("resolved.yaml", "result.json", "COMPLETE"):
            assert (run / name).is_file(), f"{run.name} lacks {name}"
    # Lineage: finetune starts from the pretrain stage, eval loads the finetuned weights.
    for child, parent in (("finetune", "pretrain"), ("eval", "finetune")):
        resolved = yaml.safe_load((stages[child] / "resolved.yaml").read_text())
        assert resolved["task"]["init_from"] == stages[parent].name
    for task in ("pretrain", "finetune"):
        result = json.loads((stages[task] / "result.json").read_text())
        assert result["train"]["steps"] == 4
        assert set(result["train"]["final_losses"]) >= LOSS_TERMS[model], result["train"]
    result = json.loads((stages["eval"] / "result.json").read_text())
    assert (result["protocol"]["n_images"], result["protocol"]["n_texts"]) == (20, 100)
    metrics = result["metrics"]
    assert all(0 <= metrics[k] <= 100 for k in RECALLS)
    assert metrics["rsum"] == pytest.approx(sum(metrics[k] for k in RECALLS))
    table = (tmp_path / "results" / "tables" / "table2.md").read_text()
    assert stages["eval"].name in table
