"""Compose the Hydra config tree (``configs/``) and check names before any work starts."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.registry import MODELS, UnknownNameError
from harness.resources import CONFIG_ENV, ResourceNotFoundError  # noqa: F401  (re-exported)
from harness.resources import config_tree as find_config_dir

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


class ConfigValueError(ValueError):
    """A command-line value whose type does not fit its key; the message names both."""


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for these command-line overrides.

    Mistakes are one-line errors before anything runs: an unknown group choice or key
    (:class:`UnknownNameError`, with the closest valid names) and a value of the wrong type
    (:class:`ConfigValueError`). ``+key=value`` adds a new key on purpose and is not checked.
    """
    from hydra.errors import HydraException

    _check_group_choices(overrides)
    try:
        cfg = _hydra_compose(list(overrides))
    except HydraException as exc:
        _check_keys(overrides)  # raises the one-line error when a key is unknown
        # Hydra's message spans lines and ends in a documentation link: keep what it says.
        lines = [line.strip().rstrip(".") for line in str(exc).splitlines()
                 if line.strip() and not line.startswith("See ")]
        raise ConfigValueError(": ".join(lines[:2]) or type(exc).__name__) from None
    _check_value_types(overrides, cfg)
    MODELS.check(str(cfg.model.name))
    return cfg


def _hydra_compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


_SKELETONS: dict[tuple[str, ...], DictConfig] = {}


def _value_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, raw value)`` of the plain ``key=value`` overrides (not group choices, not
    ``+``/``~``/``++`` ones)."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and not key.startswith(("+", "~")) and key not in GROUPS and "@" not in key:
            out.append((key, value))
    return out


def _skeleton(overrides: Sequence[str]) -> DictConfig:
    """The config these overrides' group choices compose to, before any value is set."""
    choices = tuple(item for item in overrides
                    if item.partition("=")[0].lstrip("+~") in GROUPS
                    or "@" in item.partition("=")[0])
    key = (str(config_dir()), *choices)
    if key not in _SKELETONS:  # planning a grid composes the same choices many times
        _SKELETONS[key] = _hydra_compose(list(choices))
    return _SKELETONS[key]


def dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every key of a nested mapping as a dotted path, inner nodes included."""
    keys: list[str] = []
    if isinstance(tree, dict):
        for name, value in tree.items():
            path = f"{prefix}{name}"
            keys += [path, *dotted_keys(value, f"{path}.")]
    return keys


def closest_keys(key: str, keys: Sequence[str], n: int = 3) -> list[str]:
    """The valid dotted keys nearest to ``key`` (whole path first, then the last part)."""
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if close:
        return close
    leaf = key.rsplit(".", 1)[-1]
    leaves: dict[str, list[str]] = {}
    for candidate in keys:
        leaves.setdefault(candidate.rsplit(".", 1)[-1], []).append(candidate)
    near = difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.6)
    return [full for name in near for full in leaves[name]][:n]


def _lookup(cfg: DictConfig, key: str) -> Any:
    """The plain, resolved value at a dotted key; _ABSENT when missing, _UNKNOWN when it does
    not resolve (an environment variable not set here, say)."""
    try:
        node = OmegaConf.select(cfg, key, default=_ABSENT)
    except Exception:
        return _UNKNOWN
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception:
            return _UNKNOWN
    return node


_ABSENT, _UNKNOWN = object(), object()


def _check_keys(overrides: Sequence[str]) -> None:
    """Raise :class:`UnknownNameError` for the first ``key=value`` whose key does not exist."""
    values = _value_overrides(overrides)
    if not values:
        return
    try:
        skeleton = _skeleton(overrides)
    except Exception:  # the group choices themselves do not compose: Hydra's error says why
        return
    for key, _ in values:
        if _lookup(skeleton, key) is _ABSENT:
            close = closest_keys(key, dotted_keys(OmegaConf.to_container(skeleton)))
            hint = f"; closest valid keys: {', '.join(close)}" if close else ""
            raise UnknownNameError(f"unknown config key {key!r}{hint}")


def _type_name(value: Any) -> str | None:
    """The kind of value a key holds, or None when any value fits it."""
    if value is None or isinstance(value, str):
        return None  # unset, or free text (a number is a fine folder or split name)
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "a list ([a,b])"
    if isinstance(value, dict):
        return "a mapping ({k: v})"
    return None


def _fits(old: Any, new: Any) -> bool:
    if new is None or _type_name(old) is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, int):
        return isinstance(new, int)
    return isinstance(new, type(old))


def _check_value_types(overrides: Sequence[str], cfg: DictConfig) -> None:
    """Raise :class:`ConfigValueError` for a ``key=value`` whose value has the wrong type."""
    values = _value_overrides(overrides)
    if not values:
        return
    skeleton = _skeleton(overrides)
    for key, raw in values:
        old, new = _lookup(skeleton, key), _lookup(cfg, key)
        if _UNKNOWN in (old, new) or _ABSENT in (old, new):
            continue  # an unresolvable interpolation fails later with its own message
        if not _fits(old, new):
            raise ConfigValueError(f"{key}={raw}: expected {_type_name(old)} "
                                   f"(default {old!r}), got {new!r}")


def to_plain(cfg: DictConfig | Any) -> Any:
    """Resolved plain-Python copy of a config node."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
