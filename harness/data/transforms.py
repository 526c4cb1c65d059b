"""Image transforms from timm: train augmentation and eval resize + centre crop."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from PIL import Image
from torch import Tensor

ImageTransform = Callable[[Image.Image], Tensor]


def build_transform(image_size: int, augment: Mapping[str, Any] | None, *, train: bool,
                    mean: tuple[float, ...], std: tuple[float, ...]) -> ImageTransform:
    """timm transform for training (``augment`` options) or evaluation (resize + centre crop)."""
    from timm.data import create_transform  # timm import costs seconds; only when needed

    aug = dict(augment or {})
    if not train:
        return create_transform(image_size, is_training=False, interpolation="bicubic",
                                crop_pct=aug.get("eval_crop_pct", 1.0), mean=mean, std=std)
    return create_transform(
        image_size,
        is_training=True,
        scale=tuple(aug.get("scale", (0.8, 1.0))),
        ratio=tuple(aug.get("ratio", (0.9, 1.1))),
        # Captions say "left of" / "right of": a horizontal flip would make them false, so
        # flipping is off unless a dataset config turns it on knowingly.
        hflip=float(aug.get("hflip", 0.0)),
        # Colours are named in captions too; jitter off by default for the same reason.
        color_jitter=aug.get("color_jitter"),
        auto_augment=aug.get("auto_augment"),
        interpolation="bicubic",
        mean=mean,
        std=std,
    )
