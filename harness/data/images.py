"""Image files: decode to RGB, and check a whole gallery before training starts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from harness.data.report import DataError

# Decoding at reduced size is enough to prove a JPEG is whole (the entropy stream is read to
# the end) and is several times faster than a full decode on large photos.
_CHECK_DRAFT_SIZE = (64, 64)


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` to an RGB image, or raise :class:`DataError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or unreadable ({exc})") from None


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes."""
    if not path.is_file():
        return "missing image file"
    try:
        with Image.open(path) as image:
            image.draft("RGB", _CHECK_DRAFT_SIZE)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"corrupt image file: {exc}"
    return None


def find_bad_images(paths: list[Path], workers: int = 4) -> dict[int, str]:
    """Index -> problem for every path that does not decode (PIL releases the GIL, so threads)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(image_problem, paths, chunksize=64))
    return {i: p for i, p in enumerate(problems) if p is not None}
