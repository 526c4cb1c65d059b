"""One optimisation step: precision, gradient accumulation, clipping, agreement across ranks.

Accumulation (``accum_steps = k > 1``) splits each rank's batch into ``k`` micro-batches.
A model that exposes the *feature-cache protocol* keeps the whole batch as its negative pool:

* ``train_features(batch) -> dict[str, Tensor]``: per-row tensors (embeddings, ids);
* ``losses_from_features(features) -> dict[str, Tensor]``: loss terms from the features of
  several micro-batches concatenated on dim 0 (gathering across ranks itself).

The step then runs GradCache: a no-grad forward of every micro-batch, the loss on the cached
features (their gradients are kept), and a second forward of each micro-batch with the RNG
state of its first one, back-propagating the cached gradients. The gradient equals the
full-batch gradient up to float rounding, for the price of a second forward. Other models
get plain accumulation, whose negatives are only the micro-batch's (the loop warns).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import Tensor, nn

from harness.dist import all_reduce_gradients, all_reduce_max, is_distributed

Batch = dict[str, Tensor]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the term."""


def supports_feature_cache(model: nn.Module) -> bool:
    """The model implements ``train_features`` and ``losses_from_features``."""
    return all(callable(getattr(model, name, None))
               for name in ("train_features", "losses_from_features"))


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: fp32) and the loss scaler fp16 needs."""

    name: str
    device_type: str
    dtype: torch.dtype | None
    scaler: Any = None

    def autocast(self) -> ContextManager[Any]:
        """The forward's autocast context (a no-op for fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(name: str | None, device: torch.device) -> Precision:
    """``auto`` (bf16 on GPU, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16`` (GPU, scaled)."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp32":
        return Precision(name, device.type, None)
    if name == "bf16":
        return Precision(name, device.type, torch.bfloat16)
    if name == "fp16":
        if device.type != "cuda":
            raise ValueError("task.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
        return Precision(name, device.type, torch.float16, torch.amp.GradScaler("cuda"))
    raise ValueError(f"task.precision={name!r}; valid: auto, fp32, bf16, fp16")


class _Call(nn.Module):
    """``forward(batch)`` = ``model.<method>(batch)``: what DDP and torch.compile wrap."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return getattr(self.model, self.method)(batch)


def _split(batch: Batch, parts: int) -> list[Batch]:
    if parts == 1:
        return [batch]
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: c[i] for k, c in chunks.items()} for i in range(parts)]


def _rng_capture(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _rng_restore(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class StepResult:
    """Detached loss terms (mean over micro-batches), gradient norm, agreed stop flag."""

    losses: dict[str, Tensor]
    grad_norm: Tensor | None
    stop: bool


class Stepper:
    """Forward, backward and update of one step, on one process or under DDP."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Mapping[str, Any],
                 precision: Precision, device: torch.device) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.precision, self.device = precision, device
        self.accum = int(cfg.get("accum_steps", 1) or 1)
        self.grad_clip = float(cfg.get("grad_clip") or 0.0)
        self.cached = self.accum > 1 and supports_feature_cache(model)
        self.ddp: nn.Module | None = None
        method = "train_features" if self.cached else "losses"
        forward: nn.Module = _Call(model, method)
        if is_distributed() and not self.cached:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Buffers are rank-local state here (queues, running stats): models that need them
            # equal on every rank synchronise them themselves; rank 0's copy is checkpointed.
            # (Newer torch renamed broadcast_buffers; every rank starts from one state anyway.)
            no_buffer_sync = ({"forward_sync_buffers": False}
                              if "forward_sync_buffers" in inspect.signature(DDP).parameters
                              else {"broadcast_buffers": False})
            forward = self.ddp = DDP(
                forward, device_ids=[device.index] if device.type == "cuda" else None,
                gradient_as_bucket_view=True, **no_buffer_sync,
                find_unused_parameters=bool(cfg.get("ddp_find_unused", True)),
                static_graph=bool(cfg.get("ddp_static_graph", False)))
        elif is_distributed():
            from harness.dist import broadcast_parameters

            broadcast_parameters(model)  # DDP would do this when wrapping
        if cfg.get("compile"):
            forward = torch.compile(forward)
        self.forward: Callable[[Batch], dict[str, Tensor]] = forward

    @property
    def plain_accumulation(self) -> bool:
        """Accumulation whose negatives are per micro-batch (model lacks the cache protocol)."""
        return self.accum > 1 and not self.cached

    def _backward(self, loss: Tensor) -> None:
        scaler = self.precision.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def _plain(self, micro: list[Batch]) -> dict[str, Tensor]:
        totals: dict[str, Tensor] = {}
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()
            with sync:
                with self.precision.autocast():
                    losses = self.forward(mb)
                self._backward(torch.stack(list(losses.values())).sum() / len(micro))
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro)
        return totals

    def _feature_cache(self, micro: list[Batch]) -> dict[str, Tensor]:
        states, cache = [], []
        with torch.no_grad():
            for mb in micro:
                states.append(_rng_capture(self.device))
                with self.precision.autocast():
                    cache.append(self.forward(mb))
        leaves = {k: torch.cat([c[k] for c in cache]).detach() for k in cache[0]}
        for v in leaves.values():
            if v.is_floating_point():
                v.requires_grad_(True)
        with self.precision.autocast():
            losses = self.model.losses_from_features(leaves)
        self._backward(torch.stack(list(losses.values())).sum())
        grads = {k: v.grad.split([c[k].shape[0] for c in cache])
                 for k, v in leaves.items() if v.grad is not None}
        for i, mb in enumerate(micro):
            _rng_restore(states[i], self.device)  # same dropout masks as the cached pass
            with self.precision.autocast():
                feats = self.forward(mb)
            pairs = [(feats[k], g[i]) for k, g in grads.items() if feats[k].requires_grad]
            if pairs:
                torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs])
        all_reduce_gradients(self.model)
        return {k: v.detach().float() for k, v in losses.items()}

    def step(self, batch: Batch, step: int, stop_requested: Callable[[], bool]) -> StepResult:
        """Run step ``step`` (1-based in messages); raises :class:`NonFiniteLossError`.

        ``stop_requested`` is read after the backward pass, so a signal that arrives during
        this step stops the run right after it.
        """
        self.optimizer.zero_grad(set_to_none=True)
        micro = _split(batch, self.accum)
        losses = self._feature_cache(micro) if self.cached else self._plain(micro)
        # One collective (and one host sync) a step: ranks agree on non-finite terms and on
        # stopping, so they all stop at the same step boundary and none waits forever.
        values = torch.stack(list(losses.values()))
        flags = torch.cat([(~torch.isfinite(values)).float(),
                           torch.tensor([float(stop_requested())], device=values.device)])
        flags = all_reduce_max(flags).tolist()
        for name, bad in zip(losses, flags):
            if bad:
                raise NonFiniteLossError(
                    f"step {step}: loss term {name!r} is {float(losses[name])} (non-finite on at "
                    f"least one rank); training stopped before this step's update")
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.grad_clip > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if hasattr(self.model, "clamp_logit_scale"):
            self.model.clamp_logit_scale()
        return StepResult(losses, grad_norm, bool(flags[-1]))
