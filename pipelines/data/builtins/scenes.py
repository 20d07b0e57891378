"""The ``scenes`` built-in: procedural colour landscapes, photograph-like statistics with no download.

Each image is a sky (a vertical gradient with soft cloud noise), a sun or moon, two to four mountain ridges whose
outlines are 1-D fractal noise (octaves of random sines, each layer nearer, darker and less hazy than the one
behind), and, in half the images, water that mirrors the scene with ripples. The label is the time of day, which
sets the palette: ``day``, ``sunset`` or ``night``. Smooth gradients, sharp ridge edges, textures at several scales
and saturated colours are what the 32x32 digits lack and what a photo tokenizer must get right (checkerboard
artefacts, colour casts), so this is the built-in to try an image tokenizer on before real photographs.

Rendered at 64x64 from ``(seed, split, index)`` alone (any image can be made on its own, in any order, in any worker)
and resized to ``spec.image_size``. Yields ``(x float32 [spec.channels, S, S] in [0, 1], label int64 0..2)``.
"""

from __future__ import annotations

import numpy as np

from ..image_io import rendered_splits
from ..spec import DATASETS, BuiltinDataset, DataSpec, Splits

TIMES = ["day", "sunset", "night"]
SIZES = {"train": 5000, "test": 500}
RENDER = 64  # pixels per side before resizing to the spec's image_size
# (sky top, sky horizon, sun or moon, the nearest ridge) colours of each time of day, RGB in [0, 1]
PALETTES = {
    "day": ((0.25, 0.5, 0.9), (0.7, 0.85, 1.0), (1.0, 0.98, 0.85), (0.15, 0.35, 0.15)),
    "sunset": ((0.3, 0.2, 0.5), (1.0, 0.55, 0.25), (1.0, 0.8, 0.4), (0.2, 0.1, 0.15)),
    "night": ((0.02, 0.03, 0.12), (0.1, 0.12, 0.3), (0.9, 0.9, 0.85), (0.03, 0.04, 0.08)),
}


def _fractal(rng: np.random.Generator, n: int, octaves: int = 5) -> np.ndarray:
    """1-D fractal noise over n points: a sum of sines with random phases, each octave twice the frequency and
    about half the amplitude of the one before; float [n] with zero mean, peak near 1."""
    t = np.linspace(0, 1, n)
    out = np.zeros(n)
    for k in range(octaves):
        freq = 2.0 ** k * rng.uniform(0.8, 1.6)
        out += rng.uniform(0.35, 0.65) ** k * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    out -= out.mean()
    return out / (np.abs(out).max() + 1e-9)


def render_scene(rng: np.random.Generator, time: str, size: int = RENDER) -> np.ndarray:
    """One landscape at ``time`` of day: float32 [size, size, 3] in [0, 1]."""
    top, horizon, light, near = (np.array(c) for c in PALETTES[time])
    y = np.linspace(0, 1, size)[:, None, None]
    x = np.linspace(0, 1, size)[None, :, None]
    img = top + (horizon - top) * y ** rng.uniform(0.7, 1.5)  # [size, 1, 3]: the sky's gradient
    img = np.repeat(img, size, axis=1)
    clouds = np.outer(_fractal(rng, size, 3), _fractal(rng, size, 4))[..., None]
    img = img + (0.08 if time != "night" else 0.02) * clouds
    cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.45), rng.uniform(0.04, 0.09)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    glow = np.exp(-((d / r) ** 2) * 0.5)  # the disc and its halo
    img = img * (1 - glow) + light * glow
    if time == "night":  # stars
        stars = rng.random((size, size)) > 0.985
        img[stars] = np.maximum(img[stars], rng.uniform(0.6, 1.0, (int(stars.sum()), 1)))
    horizon_row = rng.uniform(0.55, 0.75) if rng.random() < 0.5 else 1.0  # water below it, or none
    layers = int(rng.integers(2, 5))
    for i in range(layers):
        depth = (i + 1) / layers  # 1: the nearest ridge
        base = 0.3 + 0.35 * depth * min(horizon_row, 0.95)
        ridge = base + rng.uniform(0.05, 0.15) * _fractal(rng, size)  # [size] rows of the outline per column
        color = near * depth + horizon * (1 - depth) * 0.8  # far ridges fade into the haze
        shade = color * (0.85 + 0.15 * _fractal(rng, size, 3)[None, :, None])  # texture along the ridge
        mask = (y[..., 0] >= ridge[None, :])[..., None]  # [size, size, 1]
        img = np.where(mask, shade, img)
    if horizon_row < 1.0:  # water: the scene above mirrored, darker, with horizontal ripples
        h = int(horizon_row * size)
        below = size - h
        mirror = img[max(0, h - below):h][::-1]
        ripple = np.round(2 * np.sin(np.arange(len(mirror))[:, None] * rng.uniform(0.8, 1.6) +
                                     np.arange(size)[None, :] * 0.05)).astype(int)
        cols = (np.arange(size)[None, :] + ripple) % size
        water = mirror[np.arange(len(mirror))[:, None], cols] * 0.7 + np.array([0.0, 0.05, 0.1])
        img[h:h + len(water)] = water
    noise = rng.normal(0, 0.01, img.shape)  # sensor grain
    return np.clip(img + noise, 0, 1).astype(np.float32)


def _render(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    label = int(rng.integers(0, len(TIMES)))
    return render_scene(rng, TIMES[label]), label


def load_scenes(spec: DataSpec) -> Splits:
    """5,000 train / 500 test scenes (train capped by ``spec.limit``), 3 classes (time of day)."""
    return rendered_splits(spec, _render, SIZES, TIMES, salt=(7,))


@DATASETS.register("scenes")
class Scenes(BuiltinDataset):
    modality = "image"
    channels = 3
    description = ("procedural 64x64 colour landscapes (sky, sun or moon, mountain ridges, water) resized to "
                   "--image-size; labels: day, sunset, night; deterministic per --seed")
    load = staticmethod(load_scenes)
