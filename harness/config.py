"""Compose the Hydra config tree (``configs/``) and check names before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.registry import MODELS, UnknownNameError
from harness.resources import ResourceNotFoundError, locate

CONFIG_ENV = "HARNESS_CONFIG_DIR"


def find_config_dir() -> Path:
    """``$HARNESS_CONFIG_DIR``, the checkout's ``configs/`` or the installed package's copy."""
    return locate("config tree", "configs", "configs", env_var=CONFIG_ENV)


try:
    CONFIG_DIR: Path | None = find_config_dir()
    _CONFIG_DIR_ERROR: ResourceNotFoundError | None = None
except ResourceNotFoundError as exc:
    # Importing must not fail (tools that never compose still work); composing says why.
    CONFIG_DIR, _CONFIG_DIR_ERROR = None, exc
GROUPS = ("model", "data", "task", "scale", "cluster", "grid")


def config_dir() -> Path:
    """The config tree in use; raises ResourceNotFoundError naming where it looked."""
    if CONFIG_DIR is None:
        raise _CONFIG_DIR_ERROR or ResourceNotFoundError("config tree not found")
    return CONFIG_DIR


def group_choices(group: str) -> list[str]:
    """Config names available in a group folder."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _check_group_choices(overrides: Sequence[str]) -> None:
    # Hydra's own message for a missing option is buried in a search-path dump; say it plainly.
    config_dir()  # a missing tree fails here, before Hydra's own "primary config" message
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
