"""Compose the Hydra config tree (``configs/``) and check names before any work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.registry import MODELS, UnknownNameError

CONFIG_DIR = Path(os.environ.get("HARNESS_CONFIG_DIR",
                                 Path(__file__).resolve().parents[1] / "configs"))
GROUPS = ("model", "data", "task", "scale", "cluster", "grid")


def group_choices(group: str) -> list[str]:
    """Config names available in a group folder."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _check_group_choices(overrides: Sequence[str]) -> None:
    # Hydra's own message for a missing option is buried in a search-path dump; say it plainly.
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+~")
        if sep and key in GROUPS and value not in ("null", ""):
            choices = group_choices(key)
            if value not in choices:
                raise UnknownNameError(
                    f"unknown {key} {value!r}; valid names: {', '.join(choices)}")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for these command-line overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _check_group_choices(overrides)
    if GlobalHydra.instance().is_initialized():
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    MODELS.check(str(cfg.model.name))
    return cfg


def to_plain(cfg: DictConfig | Any) -> Any:
    """Resolved plain-Python copy of a config node."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
