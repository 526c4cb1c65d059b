"""The config tree's layout: size files are optional overrides, training tasks share a base."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import harness.config as config
from harness.config import compose, group_choices, to_plain
from harness.registry import MODELS, UnknownNameError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of configs/ with a new model ``toy`` (CLIP's factory) that has no size file."""
    root = tmp_path / "configs"
    shutil.copytree(REPO / "configs", root)
    toy = yaml.safe_load((REPO / "configs" / "model" / "clip.yaml").read_text())
    toy.update(name="toy", embed_dim=48)
    (root / "model" / "toy.yaml").write_text(yaml.safe_dump(toy))
    monkeypatch.setattr(config, "CONFIG_DIR", root)
    monkeypatch.setitem(MODELS._entries, "toy", "baselines.clip:build_clip")
    return root


def test_a_model_without_size_files_composes_from_its_own_config(tree: Path) -> None:
    for scale in ("smoke", "paper"):
        cfg = compose(["model=toy", f"scale={scale}"])
        assert to_plain(cfg.model) == yaml.safe_load((tree / "model" / "toy.yaml").read_text())


def test_a_size_file_overrides_only_what_it_names(tree: Path) -> None:
    (tree / "size" / "toy_smoke.yaml").write_text("# @package model\nembed_dim: 16\n")
    model = to_plain(compose(["model=toy", "scale=smoke"]).model)
    expected = yaml.safe_load((tree / "model" / "toy.yaml").read_text())
    assert model == {**expected, "embed_dim": 16}
    assert to_plain(compose(["model=toy", "scale=paper"]).model)["embed_dim"] == 48


def test_training_tasks_share_the_base_and_it_is_no_task() -> None:
    base = yaml.safe_load((REPO / "configs" / "task" / "base" / "train.yaml").read_text())
    tasks = {}
    for name in ("pretrain", "finetune"):
        composed = compose([f"task={name}"]).task
        # The base leaves the name and the schedule ??? (mandatory): each task must set them.
        assert not OmegaConf.missing_keys(composed), f"task {name}: unset keys"
        tasks[name] = to_plain(composed)
        assert tasks[name]["name"] == name and base.keys() <= tasks[name].keys()
    assert tasks["finetune"]["steps"] != tasks["pretrain"]["steps"]  # each its own schedule
    assert "base" not in group_choices("task")
    with pytest.raises(UnknownNameError, match="unknown task 'base/train'"):
        compose(["task=base/train"])


def test_a_model_is_registered_by_its_config_alone(tree: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Adding a model is one Python file and one config: the config's `factory` registers it,
    # from the shipped tree or a user's own ($HARNESS_CONFIG_DIR), with no registry edit.
    from baselines.clip import build_clip
    from harness.registry import Registry, model_factories
    from harness.resources import CONFIG_ENV

    monkeypatch.setenv(CONFIG_ENV, str(tree))
    models = Registry("model", discover=model_factories)
    assert models.names() == ["clip", "cookie", "single_stream", "toy"]
    assert models.get("toy") is build_clip
    (tree / "model" / "broken.yaml").write_text("name: broken\nembed_dim: 8\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: a model config needs `name` and "
                                         r"`factory: module:attr`"):
        Registry("model", discover=model_factories).names()


def test_the_shipped_models_come_from_their_configs() -> None:
    assert MODELS.names() == sorted(
        yaml.safe_load(p.read_text())["name"] for p in (REPO / "configs" / "model").glob("*.yaml"))
