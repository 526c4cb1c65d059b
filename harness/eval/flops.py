"""Parameter and FLOP counts, computable for paper-size models without allocating their weights.

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: **FLOPs = 2 x multiply-accumulates**
of matrix products, convolutions and attention; elementwise work (norms, activations, softmax)
is not counted. Every key that holds such a number ends in ``_flops``.

A model is counted from a factory ``build() -> nn.Module`` that is always run under
``torch.device("meta")``, so a ViT-B/16 or BERT-base never allocates its weights. The forward then
runs on meta tensors, or, where meta tensors cannot run it (``.item()`` on a mask, say), on
``FakeTensor`` copies of the meta parameters: both carry shapes only.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from harness.interfaces import is_cross_encoder

FLOPS_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of matrix products, convolutions and attention, as counted "
    "by torch.utils.flop_counter.FlopCounterMode; elementwise ops are not counted"
)

#: ``auto`` tries ``meta`` then ``fake``; ``real`` builds and runs the model on the CPU for real.
Mode = Literal["auto", "meta", "fake", "real"]

#: ``step(model, device)`` makes its inputs on ``device`` (uncounted) and returns the call to
#: count, or ``None`` when the model does not support it (a dual encoder has no pair score).
Step = Callable[[nn.Module, torch.device], "Callable[[], object] | None"]

# Name parts of ops that do heavy arithmetic: one seen without a formula means the total is low.
# torch's fused inference paths (nn.TransformerEncoderLayer under no_grad) are the usual culprit.
_HEAVY_PARTS = frozenset({"mm", "bmm", "addmm", "baddbmm", "matmul", "einsum", "linear", "conv",
                          "convolution", "attention", "transformer", "lstm", "gru", "rnn"})


class FlopCountError(RuntimeError):
    """FLOPs could not be counted in any of the requested modes; the message gives each reason."""


@dataclass(frozen=True)
class FlopCount:
    """FLOPs (2 x MACs) of one call, split by aten operator, and how they were obtained."""

    total: int
    by_operator: dict[str, int]
    mode: str = "direct"
    uncounted_ops: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {
            "flops": self.total,
            "by_operator_flops": dict(self.by_operator),
            "count_mode": self.mode,
            "uncounted_ops": list(self.uncounted_ops),
            "convention": FLOPS_CONVENTION,
        }


def param_counts(towers: Mapping[str, nn.Module]) -> dict[str, int]:
    """Parameters per tower plus ``total``, where a parameter shared by towers counts once."""
    if "total" in towers:
        raise ValueError("a tower may not be named 'total': that key holds the sum")
    counts: dict[str, int] = {}
    seen: dict[int, int] = {}
    for name, tower in towers.items():
        # Identity, not storage, identifies a parameter: meta tensors all have data_ptr 0.
        params = {id(p): p.numel() for p in tower.parameters()}
        counts[name] = sum(params.values())
        seen.update(params)
    counts["total"] = sum(seen.values())
    return counts


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # CPU SDPA's fused kernel has no formula in torch, so real-CPU and fake-CPU counts would
    # silently drop attention; same arithmetic as torch's sdpa formula (Q K^T, then A V).
    batch, heads, q_len, qk_dim = query_shape
    kv_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * q_len * kv_len * (qk_dim + v_dim)


def _custom_formulas() -> dict[object, Callable[..., int]]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_registry:
        return {}
    return {op: _sdpa_cpu_flops}


class _OpRecorder(TorchDispatchMode):
    """Records every aten op that passes, so uncovered heavy ops can be reported."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[object] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen[getattr(func, "overloadpacket", func)] += 1
        return func(*args, **(kwargs or {}))


def _is_heavy(op_name: str) -> bool:
    parts = set(re.split(r"[._]", op_name))
    return bool(parts & _HEAVY_PARTS) or any(part.startswith("conv") for part in parts)


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """FLOPs (2 x MACs) of running ``fn()`` once, forward only, on whatever tensors it uses."""
    counter = FlopCounterMode(display=False, custom_mapping=_custom_formulas())
    recorder = _OpRecorder()
    # Grad stays enabled: under no_grad torch takes fused fast paths (nn.MultiheadAttention,
    # nn.TransformerEncoderLayer) that the counter cannot see. On meta or fake tensors the
    # autograd graph this records holds no memory; no backward ever runs.
    with torch.enable_grad(), counter, recorder:
        fn()
    by_op = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    uncounted = tuple(
        sorted(str(op) for op in recorder.seen
               if op not in counter.flop_registry and _is_heavy(str(op)))
    )
    if uncounted:
        warnings.warn(f"FLOPs undercounted: no formula for {', '.join(uncounted)}", stacklevel=2)
    return FlopCount(int(counter.get_total_flops()), by_op, uncounted_ops=uncounted)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.device("meta")`` in eval mode: shapes only, no weight memory."""
    with torch.device("meta"):
        model = build()
    return model.eval()


def to_fake(model: nn.Module, fake_mode: FakeTensorMode) -> nn.Module:
    """Replace every parameter and buffer, in place, by a CPU ``FakeTensor`` of the same shape."""
    # Built fresh inside the mode rather than converted from the meta tensors: converting leaves
    # weak references behind that make nn.Module._apply (to_empty) refuse to swap the tensors.
    memo: dict[int, Tensor] = {}
    with fake_mode:
        for module in model.modules():
            for slots, as_param in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in list(slots.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in memo:  # tied weights stay tied
                        memo[id(tensor)] = _fake_like(tensor, as_param)
                    slots[name] = memo[id(tensor)]
    return model


def _fake_like(tensor: Tensor, as_param: bool) -> Tensor:
    empty = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
    return nn.Parameter(empty, requires_grad=tensor.requires_grad) if as_param else empty


def _count_steps(
    model: nn.Module, steps: Mapping[str, Step], device: torch.device
) -> dict[str, FlopCount]:
    counts = {}
    for name, step in steps.items():
        call = step(model, device)
        if call is not None:
            counts[name] = count_flops(call)
    return counts


def _count_in_mode(
    model: nn.Module, steps: Mapping[str, Step], mode: str
) -> dict[str, FlopCount]:
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    device = torch.device("cpu")
    if mode == "meta":
        # Kept active so tensors the model makes without a device land on meta too.
        context, device = torch.device("meta"), torch.device("meta")
    elif mode == "fake":
        context = FakeTensorMode(allow_non_fake_inputs=True)
        model = to_fake(model, context)
    with context:
        counts = _count_steps(model, steps, device)
    return {name: replace(count, mode=mode) for name, count in counts.items()}


def count_model_flops(
    build: Callable[[], nn.Module], steps: Mapping[str, Step], *, mode: Mode = "auto"
) -> dict[str, FlopCount]:
    """FLOPs of each named step on a model from ``build``, counted without allocating weights."""
    if mode not in ("auto", "meta", "fake", "real"):
        raise ValueError(f"mode must be auto, meta, fake or real, not {mode!r}")
    if mode == "real":
        return _count_in_mode(build().eval(), steps, "real")
    try:
        model = build_on_meta(build)
    except Exception as exc:
        raise FlopCountError(
            f"building the model under torch.device('meta') failed ({type(exc).__name__}: {exc}); "
            "a factory that loads weights or reads tensor values cannot be counted abstractly: "
            "build it from a config, or use mode='real' for a small model"
        ) from exc
    failures: list[str] = []
    for attempt in ("meta", "fake") if mode == "auto" else (mode,):
        try:
            return _count_in_mode(model, steps, attempt)
        except Exception as exc:  # any failure means this mode cannot run the model: try the next
            failures.append(f"{attempt}: {type(exc).__name__}: {_first_line(exc)}")
            cause = exc
    raise FlopCountError(
        "could not run the model on shape-only tensors; " + "; ".join(failures)
        + ". Data-dependent code (.item(), nonzero, Python branches on values) is the usual "
        "cause: pick a code path without it (e.g. attn_implementation='eager') or mode='real'"
    ) from cause


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def _image_call(model: nn.Module) -> Callable[[Tensor], object]:
    # A cross-encoder's per-image cost is the cacheable unimodal part that score_pairs reuses;
    # its encode_image, when it has one, is a separate first-stage head (first_stage_step).
    names = ("image_features",) if is_cross_encoder(model) else ("encode_image",
                                                                   "image_features")
    for name in names:
        if callable(getattr(model, name, None)):
            return getattr(model, name)
    return model  # a bare image tower


def _text_call(model: nn.Module) -> Callable[[Mapping[str, Tensor]], object]:
    names = ("text_features",) if is_cross_encoder(model) else ("encode_text", "text_features")
    for name in names:
        if callable(getattr(model, name, None)):
            return getattr(model, name)
    return lambda tokens: model(**tokens)  # a bare Hugging Face style text tower


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def dummy_images(image_size: int | tuple[int, int], device: torch.device, n: int = 1) -> Tensor:
    """An ``[n, 3, H, W]`` float batch; on meta or fake devices it holds no memory."""
    return torch.zeros(n, 3, *_hw(image_size), device=device)


def dummy_tokens(text_len: int, device: torch.device, n: int = 1) -> dict[str, Tensor]:
    """``input_ids`` (all 0) and ``attention_mask`` (all 1), both ``LongTensor[n, text_len]``."""
    return {
        "input_ids": torch.zeros(n, text_len, dtype=torch.long, device=device),
        "attention_mask": torch.ones(n, text_len, dtype=torch.long, device=device),
    }


def image_step(image_size: int | tuple[int, int]) -> Step:
    """Step encoding one image: ``encode_image``, ``image_features`` or the module itself."""
    def step(model: nn.Module, device: torch.device) -> Callable[[], object]:
        images = dummy_images(image_size, device)
        return lambda: _image_call(model)(images)
    return step


def text_step(text_len: int) -> Step:
    """Step encoding one ``text_len``-token text: ``encode_text``, ``text_features`` or forward."""
    def step(model: nn.Module, device: torch.device) -> Callable[[], object]:
        tokens = dummy_tokens(text_len, device)
        return lambda: _text_call(model)(tokens)
    return step


def pair_step(image_size: int | tuple[int, int], text_len: int) -> Step:
    """Step scoring one (image, text) pair from cached features; ``None`` if not a cross-encoder."""
    def step(model: nn.Module, device: torch.device) -> Callable[[], object] | None:
        if not is_cross_encoder(model):
            return None
        image = model.image_features(dummy_images(image_size, device))
        text = model.text_features(dummy_tokens(text_len, device))
        return lambda: model.score_pairs(image, text)
    return step


def first_stage_step(modality: str, image_size: int | tuple[int, int], text_len: int) -> Step:
    """Step of a cross-encoder's own dual head on one item; ``None`` for other models."""
    def step(model: nn.Module, device: torch.device) -> Callable[[], object] | None:
        encode = getattr(model, f"encode_{modality}", None)
        if not (is_cross_encoder(model) and callable(encode)):
            return None
        item = (dummy_images(image_size, device) if modality == "image"
                else dummy_tokens(text_len, device))
        return lambda: encode(item)
    return step


def image_encode_flops(
    build: Callable[[], nn.Module], *, image_size: int | tuple[int, int] = 224, mode: Mode = "auto"
) -> FlopCount:
    """FLOPs (2 x MACs) to encode one image."""
    return count_model_flops(build, {"image": image_step(image_size)}, mode=mode)["image"]


def text_encode_flops(
    build: Callable[[], nn.Module], *, text_len: int, mode: Mode = "auto"
) -> FlopCount:
    """FLOPs (2 x MACs) to encode one text of ``text_len`` tokens."""
    return count_model_flops(build, {"text": text_step(text_len)}, mode=mode)["text"]


def pair_score_flops(
    build: Callable[[], nn.Module],
    *,
    image_size: int | tuple[int, int] = 224,
    text_len: int,
    mode: Mode = "auto",
) -> FlopCount:
    """FLOPs (2 x MACs) of ``CrossEncoder.score_pairs`` on one pair, features excluded."""
    counts = count_model_flops(build, {"pair": pair_step(image_size, text_len)}, mode=mode)
    if "pair" not in counts:
        raise TypeError("the model has no score_pairs: it does not implement CrossEncoder")
    return counts["pair"]


def flops_summary(
    build: Callable[[], nn.Module],
    *,
    image_size: int | tuple[int, int] = 224,
    text_len: int,
    mode: Mode = "auto",
) -> dict[str, object]:
    """JSON-ready FLOPs per image encode, text encode and (cross-encoders) pair score.

    For a cross-encoder, ``image_encode``/``text_encode`` count the cached unimodal features
    and ``first_stage_image``/``first_stage_text`` its own contrastive head, when it has one.
    """
    steps = {
        "image_encode": image_step(image_size),
        "text_encode": text_step(text_len),
        "pair_score": pair_step(image_size, text_len),
        "first_stage_image": first_stage_step("image", image_size, text_len),
        "first_stage_text": first_stage_step("text", image_size, text_len),
    }
    counts = count_model_flops(build, steps, mode=mode)
    summary: dict[str, object] = {f"{name}_flops": c.total for name, c in counts.items()}
    summary.update(
        convention=FLOPS_CONVENTION,
        image_size=list(_hw(image_size)),
        text_len=text_len,
        count_mode=next(iter(counts.values())).mode,
        uncounted_ops=sorted({op for c in counts.values() for op in c.uncounted_ops}),
    )
    return summary
