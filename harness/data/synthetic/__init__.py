"""The embedded synthetic dataset: an offline, deterministic stand-in for COCO / Flickr30K.

``scenes`` plans compositional scenes, ``render`` draws them, ``captions`` describes them and
``build`` writes the dataset tree (``python -m harness.data.synthetic --help``).
"""

from __future__ import annotations

from harness.data.synthetic.build import (
    ANNOTATION,
    FORMAT_VERSION,
    MARKER,
    SyntheticParams,
    ensure_synthetic,
    generate,
    main,
    summary_line,
)

__all__ = ["ANNOTATION", "FORMAT_VERSION", "MARKER", "SyntheticParams", "ensure_synthetic",
           "generate", "main", "summary_line"]
