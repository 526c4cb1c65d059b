"""Encode an evaluation split once: image and text embeddings of a DualEncoder."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from harness.data.karpathy import CaptionCorpus
from harness.data.loaders import ImageFiles
from harness.data.transforms import ImageTransform
from harness.interfaces import DualEncoder


def _autocast(device: torch.device) -> object:
    # bf16 on GPU halves the encode time; CPU stays fp32 so smoke numbers are exact.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def encode_images(model: DualEncoder, corpus: CaptionCorpus, transform: ImageTransform, *,
                  batch_size: int, device: torch.device, num_workers: int = 0) -> Tensor:
    """Embeddings of every image of ``corpus`` in corpus order, fp32 on CPU."""
    loader = DataLoader(ImageFiles(corpus.image_paths, transform), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    out = []
    with _autocast(device):
        for images in loader:
            out.append(model.encode_image(images.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def encode_texts(model: DualEncoder, captions: Sequence[str],
                 tokenize: Callable[[Sequence[str]], dict[str, Tensor]], *, batch_size: int,
                 device: torch.device) -> Tensor:
    """Embeddings of every caption in order, fp32 on CPU."""
    out = []
    with _autocast(device):
        for start in range(0, len(captions), batch_size):
            tokens = tokenize(captions[start:start + batch_size])
            tokens = {k: v.to(device) for k, v in tokens.items()}
            out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out)
