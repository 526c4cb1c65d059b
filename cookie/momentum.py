"""Optional MoCo-style momentum encoder with feature queues (off by default).

The momentum encoder is an exponential moving average of the online encoder and produces the
keys; queues keep the keys of recent batches (with their image ids) as extra negatives and
positives. Queues and the momentum weights are buffers and parameters of the model, so they
are checkpointed and a resumed run continues with the same queue.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from cookie.losses import Views


class MomentumQueue(nn.Module):
    """An EMA copy of ``encoder`` plus image and text key queues of ``size`` rows."""

    def __init__(self, encoder: nn.Module, dim: int, size: int, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"model.momentum.m must be in [0, 1), got {momentum}")
        if size < 0:
            raise ValueError(f"model.momentum.queue_size must be >= 0, got {size}")
        self.encoder = copy.deepcopy(encoder)
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self.m = momentum
        self.size = size
        self.register_buffer("queue_img", torch.zeros(size, dim))
        self.register_buffer("queue_txt", torch.zeros(size, dim))
        self.register_buffer("queue_ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """Move the momentum weights towards the online encoder's."""
        for p_m, p in zip(self.encoder.parameters(), online.parameters()):
            p_m.mul_(self.m).add_(p.detach(), alpha=1.0 - self.m)

    def with_queue(self, keys: Views, ids: Tensor) -> tuple[Views, Tensor]:
        """Batch keys followed by the filled part of the queues, and the matching ids."""
        n = int(self.filled)
        if n == 0:
            return keys, ids
        qi, qt = self.queue_img[:n], self.queue_txt[:n]

        def cat(batch: Tensor | None, queue: Tensor) -> Tensor | None:
            return None if batch is None else torch.cat([batch, queue.to(batch.dtype)])

        return (Views(img=cat(keys.img, qi), txt=cat(keys.txt, qt), img2=cat(keys.img2, qi),
                      txt2=cat(keys.txt2, qt)),
                torch.cat([ids, self.queue_ids[:n]]))

    @torch.no_grad()
    def enqueue(self, img: Tensor, txt: Tensor, ids: Tensor) -> None:
        """Write a batch of keys into the circular queues (the newest ``size`` if larger)."""
        if self.size == 0:
            return
        img, txt, ids = img[-self.size:], txt[-self.size:], ids[-self.size:]
        rows = (int(self.ptr) + torch.arange(img.shape[0], device=img.device)) % self.size
        self.queue_img[rows] = img.detach().to(self.queue_img.dtype)
        self.queue_txt[rows] = txt.detach().to(self.queue_txt.dtype)
        self.queue_ids[rows] = ids
        self.ptr.fill_((int(self.ptr) + img.shape[0]) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + img.shape[0]))
