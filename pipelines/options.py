"""Option groups several commands share, as dataclasses: each field is a flag, its comment the flag's help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class CommonOptions:
    """Every command."""

    seed: int = 0  # random seed: same seed, same machine, same result
    quiet: bool = False  # no progress bars
    debug: bool = False  # show full tracebacks on errors


@dataclass
class DeviceOptions:
    """Commands that run a model outside training."""

    device: str | None = None  # where models run: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)


@dataclass
class DataOptions:
    """Commands that read a dataset. Sizes left unset come from the codec, else the defaults named here."""

    dataset: str  # a built-in name (mnist5k, shapes, scenes, photos, tones, spoken-digits), a local folder of images or audio files (subfolder names become labels), or a Hugging Face Hub dataset id
    image_size: int | None = None  # images: square side (default: the tokenizer's, else 32)
    channels: Literal[1, 3] | None = None  # images: 1 (grayscale) or 3 (RGB) (default: the tokenizer's, else 1 for mnist5k, 3 otherwise)
    sample_rate: int | None = None  # audio: sample rate in Hz (default: the tokenizer's, else 16000; train-tokenizer: 8000 when no training file is above 8 kHz, except with --streaming and when --resume continues a run at another rate)
    clip_seconds: float | None = None  # audio: clip length in seconds (default: the tokenizer's, else 1)
    image_column: str = "image"  # Hub datasets: the image column
    audio_column: str = "audio"  # Hub datasets: the audio column
    label_column: str = "label"  # Hub datasets: the label column (none = no labels)
    limit: int | None = None  # use at most this many training examples
    strict: bool = False  # an unreadable file is an error instead of a counted skip
    cache_dir: str | None = None  # where generated data (spoken-digits) is cached
    folds: int = 0  # cross-validation: pool the dataset's train and test splits and cut them into this many folds, stratified by label (fixed, whatever --seed); 0 = the dataset's own splits
    fold: int = 0  # with --folds: which fold (0..folds-1) is the test split; the others are the training split
    validation: bool = False  # with --folds: leave the test fold out entirely and hold out a stratified 10 percent of the training folds as the test split (to choose a recipe without seeing the test fold)


def data_args(a: Any) -> dict[str, Any]:
    """The data options as ``make_spec`` takes them (sizes left None are filled from the codec or defaults)."""
    label_column = None if (a.label_column or "").lower() == "none" else a.label_column
    return dict(name=a.dataset, image_size=a.image_size, channels=a.channels, sample_rate=a.sample_rate,
                clip_seconds=a.clip_seconds, image_column=a.image_column, audio_column=a.audio_column,
                label_column=label_column, limit=a.limit, seed=a.seed, strict=a.strict, cache_dir=a.cache_dir,
                folds=a.folds, fold=a.fold, validation=a.validation)
