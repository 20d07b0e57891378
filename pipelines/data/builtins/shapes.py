"""The ``shapes`` built-in: procedural circles, squares and triangles, drawn on access.

Yields ``(x float32 [spec.channels, spec.image_size, spec.image_size] in [0, 1], label int64 0..2)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..image_io import rendered_splits
from ..spec import DATASETS, BuiltinDataset, DataSpec, Splits

SHAPE_NAMES = ["circle", "square", "triangle"]
SHAPES_SIZES = {"train": 5000, "test": 500}


def render_shape(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, int]:
    """One procedural image: a filled circle, square or triangle of random colour, size and position on a
    random dark background. Returns (uint8 [size, size, 3], label in {0, 1, 2})."""
    label = int(rng.integers(3))
    bg = rng.integers(0, 64, size=3)
    fg = rng.integers(96, 256, size=3)
    r = rng.uniform(0.18, 0.4) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if label == 0:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    elif label == 1:
        half = r / math.sqrt(2) * 1.2
        mask = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
        mask = np.ones((size, size), dtype=bool)
        for k in range(3):  # inside = on the same side of every edge as the centre
            (x0, y0), (x1, y1) = pts[k], pts[(k + 1) % 3]
            side = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
            centre = (x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0)
            mask &= side * np.sign(centre) >= 0
    img = np.where(mask[..., None], fg, bg).astype(np.uint8)
    return img, label


def _render(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    img, label = render_shape(rng, 32)
    return img.astype(np.float32) / 255.0, label


def load_shapes(spec: DataSpec) -> Splits:
    """The ``shapes`` built-in: 5,000 train / 500 test images (train capped by ``spec.limit``), 3 classes."""
    return rendered_splits(spec, _render, SHAPES_SIZES, SHAPE_NAMES)


@DATASETS.register("shapes")
class Shapes(BuiltinDataset):
    modality = "image"
    channels = 3
    description = "procedural 32x32 RGB circles, squares and triangles; labels: the shape; deterministic per --seed"
    load = staticmethod(load_shapes)
