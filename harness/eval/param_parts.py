"""Parameters per functional part (image tower, text tower, shared transformer, heads).

The split is read from what the model does, not from its attribute names, so a new model
needs no table entry: each module is traced (forward pre-hooks) while the model encodes one
dummy image and one dummy text and, for a cross-encoder, scores one pair. A parameter then
belongs to

* ``heads``: the last parameterised module of an encode or pair-score call (the projection or
  matching head), or a module no retrieval call runs (training-only heads, loss temperatures);
* ``shared_transformer``: modules that both modalities pass through, or that score a pair
  (COOKIE's weight-sharing transformer, a single-stream model's joint transformer);
* ``image_tower`` / ``text_tower``: modules only one modality passes through.

A submodule never called itself, whose parent uses its weights directly (the output
projection of ``nn.MultiheadAttention``), goes with its nearest called ancestor.

Every parameter is counted once (tied weights included), so the parts sum to ``total``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from harness.eval.flops import dummy_images, dummy_tokens
from harness.interfaces import is_cross_encoder

#: The parts, in the order figures stack them.
PARTS = ("image_tower", "text_tower", "shared_transformer", "heads")


class _Tracer:
    """Which modules each named call ran, in order."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: dict[str, list[nn.Module]] = {}
        self._current: list[nn.Module] | None = None

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        def pre_hook(module: nn.Module, _args: object) -> None:
            if self._current is not None:
                self._current.append(module)

        handles = [m.register_forward_pre_hook(pre_hook) for m in self.model.modules()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run(self, name: str, call: Callable[[], object]) -> object:
        self._current = self.calls.setdefault(name, [])
        try:
            return call()
        finally:
            self._current = None


def _trace(model: nn.Module, image_size: int, text_len: int) -> _Tracer:
    device = next(model.parameters()).device
    images, tokens = dummy_images(image_size, device), dummy_tokens(text_len, device)
    tracer = _Tracer(model)
    with tracer.hooked(), torch.no_grad():
        if is_cross_encoder(model):
            image = tracer.run("image_features", lambda: model.image_features(images))
            text = tracer.run("text_features", lambda: model.text_features(tokens))
            tracer.run("pair", lambda: model.score_pairs(image, text))
        for modality, item in (("image", images), ("text", tokens)):
            encode = getattr(model, f"encode_{modality}", None)
            if callable(encode):
                tracer.run(f"encode_{modality}", lambda encode=encode, item=item: encode(item))
    return tracer


def _owned(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def _inherit(module: nn.Module, called: dict[int, set[str]], parent: set[str],
             paths: dict[int, set[str]]) -> None:
    # A submodule whose weights its parent uses directly (nn.MultiheadAttention's out_proj)
    # is never called itself: it belongs wherever its nearest called ancestor runs.
    used = called.get(id(module)) or parent
    for p in _owned(module):
        paths.setdefault(id(p), set()).update(used)
    for child in module.children():
        _inherit(child, called, used, paths)


def param_parts(model: nn.Module, *, image_size: int, text_len: int) -> dict[str, int]:
    """Parameters per part (see the module docstring) plus ``total``; parts sum to the total."""
    was_training = model.training
    model.eval()  # dropout and batch statistics must not move while tracing
    try:
        tracer = _trace(model, image_size, text_len)
    finally:
        model.train(was_training)
    called: dict[int, set[str]] = {}  # module id -> the modalities whose calls ran it
    heads: set[int] = set()
    for call, modules in tracer.calls.items():
        kind = ("pair" if call == "pair" else call.removeprefix("encode_").removesuffix("_features"))
        for module in modules:
            called.setdefault(id(module), set()).add(kind)
        if call.startswith("encode_") or call == "pair":
            last = next((m for m in reversed(modules) if _owned(m)), None)
            heads.update(id(p) for p in (_owned(last) if last is not None else []))
    paths: dict[int, set[str]] = {}  # parameter id -> the modalities that use it
    _inherit(model, called, set(), paths)
    counts = dict.fromkeys(PARTS, 0)
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied parameter once
        if id(p) in seen:
            continue
        seen.add(id(p))
        used = paths.get(id(p), set())
        if not used or id(p) in heads:
            part = "heads"
        elif "pair" in used or {"image", "text"} <= used:
            part = "shared_transformer"
        else:
            part = "image_tower" if "image" in used else "text_tower"
        counts[part] += p.numel()
    counts["total"] = sum(counts.values())
    return counts
