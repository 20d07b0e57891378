"""The data layer: a dataset spec in, train and test splits of ``(x, label)`` out.

Images: x float32 [C, H, W] in [0, 1]. Audio: x float32 [T] in [-1, 1] at ``spec.sample_rate``.
Labels are int64 class indices (-1 when a source has none). See docs/DATA.md.

Modules: ``spec`` (DataSpec, Splits, limits, the skip policy), ``audio_io`` / ``image_io`` (reading and
checking files), ``builtins/`` (one module per built-in dataset, registered in ``DATASETS``),
``folders`` (local folders), ``hub`` (Hugging Face datasets), ``streaming`` (Hugging Face image and audio datasets
read as streams, ``--streaming``), ``tokens`` (the token folder format).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from tokenizers_vq.modality import IMAGE, Modality, get_modality

from .audio_io import AudioClipDataset, AudioReadError, fit_clip, read_audio
from .folders import load_audio_folder, load_image_folder
from .folds import fold_splits
from .hub import is_dataset_folder, load_hub_audio, load_hub_images
from .image_io import EncodedImageDataset, ImageReadError, augment_train, parse_augment, pil_to_tensor
from .spec import (
    AUDIO_EXTS,
    DATASETS,
    IMAGE_EXTS,
    MAX_AUDIO_SAMPLES,
    MAX_AUDIO_SECONDS,
    MAX_IMAGE_PIXELS,
    MAX_RESAMPLE_KERNEL,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    DataSpec,
    SkipLog,
    Splits,
    UnreadableFileError,
    infer_modality,
    report_skips,
    unknown_dataset_error,
)

__all__ = [
    "DataSpec", "Splits", "load_data", "infer_modality", "unknown_dataset_error", "DATASETS", "IMAGE_EXTS",
    "AUDIO_EXTS", "UnreadableFileError", "AudioReadError", "ImageReadError", "read_audio", "fit_clip",
    "pil_to_tensor", "AudioClipDataset", "EncodedImageDataset", "MAX_IMAGE_PIXELS", "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE", "MAX_AUDIO_SECONDS", "MAX_AUDIO_SAMPLES", "MAX_RESAMPLE_KERNEL", "read_file", "SkipLog",
    "report_skips",
]

def _read_audio_file(path: str | Path, input_shape: tuple[int, ...], sample_rate: int | None) -> torch.Tensor:
    return read_audio(path, target_rate=sample_rate)[0]


# Reading one file for a codec (``vqgen compress``), by modality name: the modality's own reader, with this layer's
# limits where it has them (audio: ``read_audio``, the decoder behind ``AUDIO.read`` plus the header limits).
FILE_READERS: dict[str, Callable[[str | Path, tuple[int, ...], int | None], torch.Tensor]] = {
    "image": IMAGE.read,
    "audio": _read_audio_file,
}


def read_file(modality: Modality | str, path: str | Path, input_shape: tuple[int, ...],
              sample_rate: int | None = None) -> torch.Tensor:
    """One file as an input of a codec for ``input_shape`` (at ``sample_rate``): images float32 [C, H, W] in
    [0, 1] of exactly the codec's size (``IMAGE.read``: no resizing), audio the whole mono waveform float32 [T] in
    [-1, 1] resampled to ``sample_rate`` (``read_audio``: limits of ``spec.py`` apply). ``ValueError`` (or
    ``AudioReadError``) naming the file when it cannot be read so."""
    return FILE_READERS[str(modality)](path, tuple(input_shape), sample_rate)


def _has_files(folder: Path, exts: set[str]) -> bool:
    return any(f.suffix.lower() in exts for f in folder.rglob("*") if f.is_file())


def load_data(spec: DataSpec) -> Splits:
    """Train and test splits for ``spec`` (see ``DataSpec``): a built-in, a local folder of image or audio
    files, a local ``datasets`` folder, or a Hugging Face Hub id (``spec.streaming``: read as a stream,
    ``streaming.load_streamed``); ``spec.augment`` adds random crops and flips
    to an image training split (``augment_train``; never to test); ``spec.folds`` re-cuts the splits into
    cross-validation folds (``folds.fold_splits``). Raises ``ValueError`` naming the built-ins
    when ``spec.name`` is none of these."""
    modality = infer_modality(spec)
    audio = get_modality(modality).timed
    if audio and spec.sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {spec.sample_rate}")
    if not audio and spec.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {spec.channels}")
    if audio and parse_augment(spec.augment):
        raise ValueError(f"--augment {spec.augment} crops and mirrors images: {spec.name} holds audio")
    if spec.streaming:  # a datasets stream: no folds, no augmentation (refused there), the test split in memory
        from .streaming import check_streamable, load_streamed

        check_streamable(spec, modality)
        return load_streamed(spec, modality)
    splits = _load(spec, modality)
    if spec.folds:
        splits = fold_splits(splits, spec.folds, spec.fold, spec.validation)
    elif spec.fold or spec.validation:
        raise ValueError("--fold and --validation choose among cross-validation folds: give --folds K too")
    if parse_augment(spec.augment):
        splits = dataclasses.replace(splits, train=augment_train(splits.train, spec.augment, spec.seed))
    return splits


def _load(spec: DataSpec, modality: str) -> Splits:
    audio = modality == "audio"
    if spec.name in DATASETS:
        builtin = DATASETS.get(spec.name)
        if builtin.modality != modality:
            raise ValueError(f"{spec.name} holds {builtin.modality} data, not {modality}: drop --modality {modality}")
        return builtin.load(spec)
    p = Path(spec.name)
    if p.is_dir():
        if not audio:
            return load_image_folder(spec) if _has_files(p, IMAGE_EXTS) else load_hub_images(spec)
        if _has_files(p, AUDIO_EXTS):
            return load_audio_folder(spec)
        if is_dataset_folder(p):
            return load_hub_audio(spec)
        raise ValueError(f"{p}: no audio files ({', '.join(sorted(AUDIO_EXTS))}) and no dataset files "
                         "(parquet, arrow, save_to_disk output) found")
    if "/" in spec.name and not p.exists() and not spec.name.startswith((".", "/")):
        return load_hub_audio(spec) if audio else load_hub_images(spec)
    raise unknown_dataset_error(spec.name)
