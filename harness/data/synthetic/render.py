"""Rendering of synthetic scenes to JPEG bytes: textured background, jittered shapes.

Each object stays strictly inside its layout cell whatever the jitter, so every relation and
position a caption derives from the cells holds in every render.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from harness.data.synthetic.scenes import COLOURS, GRID, SceneObject

JPEG_QUALITY = 90
# Shapes are drawn at this multiple of the output size and box-filtered down: anti-aliased
# edges look like photographs of shapes rather than pixel art, at little cost.
SUPERSAMPLE = 2
SIZE_FRACTION = {"small": 0.45, "large": 0.8}  # of a cell's side
SIZE_JITTER = 0.07
COLOUR_JITTER = 12
LUMA_GRAIN = np.float32(16.0)  # peak-to-peak grey levels

Box = tuple[float, float, float, float]


@functools.lru_cache(maxsize=8)
def _ramp(size: int) -> np.ndarray:
    """Read-only coordinates -0.5..0.5 across the image, for the background gradient."""
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp.flags.writeable = False
    return ramp


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A mildly textured grey: tinted base, soft gradient, fine grain."""
    base = (rng.uniform(75.0, 135.0) + rng.uniform(-10.0, 10.0, size=3)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    strength = rng.uniform(10.0, 30.0)
    ramp = _ramp(size)
    # Grain is uniform, luminance only and drawn once per image: after JPEG it looks like
    # Gaussian colour grain, and the background dominates the render time of small images.
    light = (rng.random((size, size), dtype=np.float32) - np.float32(0.5)) * LUMA_GRAIN
    light += np.float32(math.cos(angle) * strength) * ramp[None, :]
    light += np.float32(math.sin(angle) * strength) * ramp[:, None]
    # Values stay within about 40..190, so the cast needs no clipping.
    return Image.fromarray((light[:, :, None] + base).astype(np.uint8), "RGB")


def _place(obj: SceneObject, rng: np.random.Generator, size: int) -> Box:
    """Bounding box of ``obj`` in output pixels, jittered but inside its cell."""
    cell = size / GRID
    side = cell * SIZE_FRACTION[obj.size] * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    slack = max(0.0, (cell - side) / 2.0 - 0.5)  # half a pixel of margin to the cell edge
    row, col = obj.cell
    cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
    cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
    half = side / 2.0
    return (cx - half, cy - half, cx + half, cy + half)


def _colour(name: str, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The named colour with a little per-render variation, opaque."""
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3).tolist()
    r, g, b = (min(255, max(0, c + d)) for c, d in zip(COLOURS[name], jitter))
    return (r, g, b, 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: tuple) -> None:
    """Draw one filled shape inside ``box`` (supersampled pixel coordinates)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        arm = (x1 - x0) * 0.17
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
    else:
        raise ValueError(f"synthetic: unknown shape {shape!r}")


def render(
    objects: tuple[SceneObject, ...], rng: np.random.Generator, size: int
) -> tuple[bytes, list[Box]]:
    """JPEG bytes of one render of ``objects`` and each object's box in output pixels."""
    big = size * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = []
    for obj in objects:
        box = _place(obj, rng, size)
        _draw_shape(draw, obj.shape, tuple(v * SUPERSAMPLE for v in box), _colour(obj.colour, rng))
        boxes.append(box)
    image = _background(rng, size)
    shapes = layer.reduce(SUPERSAMPLE)  # box filter: anti-aliased edges
    image.paste(shapes, (0, 0), shapes)  # alpha-blends with the shapes' own coverage
    buffer = io.BytesIO()
    # 4:4:4 keeps the colour of small shapes; no optimize/progressive: fixed, plain output.
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue(), boxes
