"""Name -> factory registries, explicit and lazy.

Entries are ``"module:attr"`` strings resolved on first use, so listing or validating names
never imports a model's heavy dependencies, and a model is never "unknown" just because its
module was not imported yet (the decorator-registry trap). The shared layer names model
modules only here, as strings; it never imports ``cookie`` or ``baselines`` directly.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


class Registry(Generic[T]):
    """A typed map from names to lazily imported objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, str | T] = {}

    def register(self, name: str, target: str | T) -> None:
        """Add ``name``; ``target`` is an object or a ``"module:attr"`` string."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = target

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` naming the valid choices unless ``name`` is registered."""
        if name in self._entries:
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
        return name in self._entries


#: Model factories: ``factory(model_cfg: Mapping, *, vocab_size: int, special_ids=None)
#: -> nn.Module``; ``special_ids`` are the tokenizer's pad/unk/cls/sep/mask ids.
MODELS: Registry[Callable[..., object]] = Registry("model")
MODELS.register("clip", "baselines.clip:build_clip")
MODELS.register("cookie", "cookie.model:build_cookie")
MODELS.register("single_stream", "baselines.single_stream:build_single_stream")
