"""Name -> factory registries, explicit and lazy.

Entries are ``"module:attr"`` strings resolved on first use, so listing or validating names
never imports a model's heavy dependencies, and a model is never "unknown" just because its
module was not imported yet (the decorator-registry trap). Models are declared by their
config: every ``configs/model/<file>.yaml`` names its model (``name``) and its factory
(``factory: "module:attr"``), so adding a model is one Python file and one config, and a
user's own config tree (``$HARNESS_CONFIG_DIR``) can add models without editing the harness.
The shared layer never imports ``cookie`` or ``baselines`` directly.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Mapping, TypeVar

import yaml

from harness.resources import ResourceNotFoundError, config_tree

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


class Registry(Generic[T]):
    """A typed map from names to lazily imported objects."""

    def __init__(self, kind: str, discover: Callable[[], Mapping[str, str]] | None = None
                 ) -> None:
        self.kind = kind
        self._entries: dict[str, str | T] = {}
        self._discover = discover  # called once, on first lookup; explicit entries win

    def _discovered(self) -> dict[str, str | T]:
        if self._discover is not None:
            found, self._discover = self._discover(), None
            for name, target in found.items():
                self._entries.setdefault(name, target)
        return self._entries

    def register(self, name: str, target: str | T) -> None:
        """Add ``name``; ``target`` is an object or a ``"module:attr"`` string."""
        if name in self._discovered():
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = target

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._discovered())

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` naming the valid choices unless ``name`` is registered."""
        if name in self._discovered():
            return
        close = difflib.get_close_matches(name, self._entries, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}.{hint}"
        )

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing it on first use."""
        self.check(name)
        target = self._entries[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = target
        return target  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._discovered()


def model_factories() -> dict[str, str]:
    """``name -> "module:attr"`` of every model config in the config tree (none without one)."""
    try:
        folder = config_tree() / "model"
    except ResourceNotFoundError:
        return {}  # composing will say where it looked; listing models finds none
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        name, factory = spec.get("name"), spec.get("factory")
        if not isinstance(name, str) or not isinstance(factory, str) or ":" not in factory:
            raise ValueError(f"{path}: a model config needs `name` and `factory: module:attr`, "
                             f"got name={name!r}, factory={factory!r}")
        if name in found:
            raise ValueError(f"{path}: model {name!r} is declared twice in {folder}")
        found[name] = factory
    return found


#: Model factories: ``factory(model_cfg: Mapping, *, vocab_size: int) -> nn.Module``, one per
#: model config (its ``factory`` key).
MODELS: Registry[Callable[..., object]] = Registry("model", discover=model_factories)
