"""The data layer: a dataset spec in, train and test splits of ``(x, label)`` out.

Images: x float32 [C, H, W] in [0, 1]. Audio: x float32 [T] in [-1, 1] at ``spec.sample_rate``.
Labels are int64 class indices (-1 when a source has none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

log = logging.getLogger("vqgen.data")

IMAGE_BUILTINS = ("mnist5k", "shapes")
AUDIO_BUILTINS = ("tones", "spoken-digits")
BUILTINS = IMAGE_BUILTINS + AUDIO_BUILTINS
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}


@dataclass
class DataSpec:
    """Where the data comes from and how to shape it. ``name`` is a built-in name, a local folder
    (subfolder names become labels) or a Hugging Face Hub dataset id."""

    name: str
    modality: str | None = None  # "image" | "audio"; inferred for built-ins and local folders
    image_size: int = 32  # images are resized (shorter side) and centre-cropped to this square
    channels: int = 1  # images are converted to 1 (L) or 3 (RGB) channels
    sample_rate: int = 16000  # audio is resampled to this rate
    clip_samples: int = 16000  # audio is cut or padded to clips of this many samples
    image_column: str = "image"  # Hub datasets: column names
    audio_column: str = "audio"
    label_column: str | None = "label"
    train_split: str = "train"
    test_split: str | None = "test"  # None or missing: hold out `test_fraction` of train
    test_fraction: float = 0.1
    limit: int | None = None  # keep at most this many training examples (quick runs)
    seed: int = 0  # procedural data and held-out splits are deterministic given this
    strict: bool = False  # a corrupt file is an error instead of a counted skip
    cache_dir: str | None = None  # where generated data (spoken-digits) is cached
    revision: str | None = None  # Hub datasets: the revision to load


@dataclass
class Splits:
    """Train and test datasets yielding ``(x, label)``, plus what a model needs to know about them."""

    train: Dataset
    test: Dataset
    modality: str
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()  # shape of one x
    sample_rate: int | None = None


def infer_modality(spec: DataSpec) -> str:
    """"image" or "audio" for a spec, from the built-in name, the folder's files, or ``spec.modality``."""
    if spec.modality:
        return spec.modality
    if spec.name in IMAGE_BUILTINS:
        return "image"
    if spec.name in AUDIO_BUILTINS:
        return "audio"
    p = Path(spec.name)
    if p.is_dir():
        exts = {f.suffix.lower() for f in p.rglob("*") if f.is_file()}
        if exts & AUDIO_EXTS and not exts & IMAGE_EXTS:
            return "audio"
        return "image"
    return "image"


def load_data(spec: DataSpec) -> Splits:
    """Train and test splits for ``spec`` (see ``DataSpec``); raises ``ValueError`` naming the built-ins
    when ``spec.name`` is neither a built-in, a folder, nor something that looks like a Hub id."""
    modality = infer_modality(spec)
    if modality == "audio":
        from .audio import load_audio_splits

        return load_audio_splits(spec)
    from .images import load_image_splits

    return load_image_splits(spec)


def unknown_dataset_error(name: str) -> ValueError:
    return ValueError(
        f"unknown dataset {name!r}: not a built-in ({', '.join(BUILTINS)}), not an existing local folder, "
        "and not a Hugging Face Hub id of the form 'owner/name'"
    )
