"""Config composition, the registry, and stage identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import compose
from harness.launch.store import stage_dir, stage_hash
from harness.registry import MODELS, Registry, UnknownNameError
from harness.run import main


def test_registry_lists_valid_names_and_suggests():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    reg.register("beta", "math:pi")
    assert reg.get("beta") == pytest.approx(3.14159, rel=1e-5)  # lazy "module:attr"
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpah'.*alpha, beta.*'alpha'"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)


def test_models_registered_without_importing_them():
    assert {"clip", "cookie", "single_stream"} <= set(MODELS.names())


def test_scale_patches_model_size():
    smoke, paper = compose(["scale=smoke"]), compose(["scale=paper"])
    assert smoke.model.image_tower.name == paper.model.image_tower.name == "vit_base_patch16_224" \
        or smoke.model.image_size < paper.model.image_size
    assert smoke.model.text_tower.hidden_size < paper.model.text_tower.hidden_size
    assert smoke.task.steps < paper.task.steps


@pytest.mark.parametrize("override, group", [("model=clipp", "model"), ("grid=tabel2", "grid"),
                                             ("data=cocoo", "data"), ("cluster=slurmm", "cluster")])
def test_unknown_names_list_valid_ones(override, group, capsys):
    assert main([override, "dry_run=true"]) == 2
    err = capsys.readouterr().err
    assert f"unknown {group}" in err and "valid names:" in err


def test_stage_identity_ignores_paths_but_not_hyperparameters(tmp_path):
    a = compose(["data.root=/x"])
    b = compose(["data.root=/y", "data.num_workers=7"])
    c = compose(["task.lr=0.5"])
    assert stage_dir(a, tmp_path) == stage_dir(b, tmp_path)
    assert stage_dir(a, tmp_path) != stage_dir(c, tmp_path)
    assert stage_dir(a, tmp_path).name.startswith("finetune-clip-synthetic-")
    assert len(stage_hash({"k": 1})) == 8


def test_dry_run_prints_plan(tmp_path, capsys):
    assert main(["grid=smoke", "dry_run=true", f"run_root={tmp_path}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1:] for line in lines] == [["finetune", "clip", "synthetic", "pending"],
                                                   ["eval", "clip", "synthetic", "pending"]]
    assert not any(Path(tmp_path).iterdir())  # a dry run writes nothing
