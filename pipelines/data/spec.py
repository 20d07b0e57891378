"""What a dataset is (``DataSpec``), what loading one gives (``Splits``), and the limits on one input file.

Audio files are checked once when a dataset is loaded (``screen``); images are checked where they are read
(``SkipLog``: in ``__getitem__``, in whichever DataLoader worker reads them), never in a pass over the data. A
file that cannot be read, or whose header says it is over one of the limits below, is a counted skip: one warning
per dataset names each file with its reason (for images, when the command that read them reports, e.g. at the end
of ``vqgen tokenize``). Under ``spec.strict`` (``--strict``) the first such file is a ``ValueError`` instead. The
limits are read from the header, before anything is decoded, so an oversized file costs nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tokenizers_vq.config import (
    DEFAULT_CHANNELS,
    DEFAULT_CLIP_SAMPLES,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SAMPLE_RATE,
)
from vqgen_io.components import Registry

log = logging.getLogger("vqgen.data")

DATASETS = Registry("dataset", "pipelines.data.builtins")  # the built-ins: one module each in data/builtins/
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}

# ---------------------------------------------------------------------------- limits on one input file
# An image larger than this (or one whose shorter-side resize would be) is skipped: 8192 x 8192 is above
# any camera's usual output, and below PIL's own decompression-bomb warning (89.5 MP).
MAX_IMAGE_PIXELS = 8192 * 8192
# Sample rates outside this range are a corrupt header, not audio: telephony is 8 kHz, studio gear 768 kHz.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# A file is decoded whole once when loaded (then cached while there is room, else read by window); an hour is
# 230 MB at 16 kHz.
MAX_AUDIO_SECONDS = 3600
# frames x channels decoded at once (float32: 4 GiB); fits an hour of 96 kHz stereo or 48 kHz 5.1.
MAX_AUDIO_SAMPLES = 2**30
# torchaudio's resampling filter has (target / g) x (rate / g) taps for g = gcd(rate, target): 44101 Hz to
# 16 kHz would need 706 M taps (12 GB, 90 s). 2**24 taps is about 1 GB and 2 s to build.
MAX_RESAMPLE_KERNEL = 2**24
SKIPS_LISTED = 10  # the skip warning names this many files with their reasons, and counts the rest


@dataclass
class DataSpec:
    """Where the data comes from and how to shape it. ``name`` is a built-in name, a local folder
    (subfolder names become labels) or a Hugging Face Hub dataset id."""

    name: str
    modality: str | None = None  # "image" | "audio"; inferred for built-ins and local folders
    image_size: int = DEFAULT_IMAGE_SIZE  # images are resized (shorter side) and centre-cropped to this square
    channels: int = DEFAULT_CHANNELS  # images are converted to 1 (L) or 3 (RGB) channels
    sample_rate: int = DEFAULT_SAMPLE_RATE  # audio is resampled to this rate
    rate_from_data: bool = False  # audio, local and Hub map-style data: 8 kHz instead when no training file is above 8 kHz (``audio_io.follow_data_rate``; train-tokenizer without --sample-rate)
    clip_samples: int = DEFAULT_CLIP_SAMPLES  # audio is cut or padded to clips of this many samples
    image_column: str = "image"  # Hub datasets: column names
    audio_column: str = "audio"
    label_column: str | None = "label"
    train_split: str = "train"
    test_split: str | None = "test"  # None or missing: hold out `test_fraction` of train
    test_fraction: float = 0.1
    limit: int | None = None  # keep at most this many training examples (quick runs)
    seed: int = 0  # procedural data and held-out splits are deterministic given this
    strict: bool = False  # a bad file is an error instead of a counted skip
    cache_dir: str | None = None  # where generated data (spoken-digits) is cached
    revision: str | None = None  # Hub datasets: the revision to load
    augment: str | None = None  # images, training split only: "crop", "flip" or "crop,flip" (random crops and mirrors)
    folds: int = 0  # > 1: pool train and test and cut them into this many stratified folds (``folds.py``)
    fold: int = 0  # with ``folds``: the fold that is the test split
    validation: bool = False  # with ``folds``: leave the test fold out; a stratified 10% of the rest is the test split
    streaming: bool = False  # Hugging Face image or audio datasets: read the splits as ``datasets`` streams (``streaming.py``)
    shuffle_buffer: int = 1000  # with ``streaming``: training examples drawn from a buffer of this many (0 or 1: none)


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


class BuiltinDataset:
    """A built-in dataset (``pipelines/data/builtins/NAME.py``, registered with ``@DATASETS.register(NAME)``):
    ``load(spec) -> Splits`` makes both splits as ``spec`` asks (sizes, seed, limit)."""

    name: ClassVar[str] = ""  # set by the registry
    modality: ClassVar[str] = ""  # "image" | "audio"
    channels: ClassVar[int | None] = None  # images: the channels it comes in, the default of --channels
    description: ClassVar[str] = ""  # one line for --help and docs/DATA.md

    @staticmethod
    def load(spec: DataSpec) -> Splits:  # pragma: no cover - interface
        raise NotImplementedError


def infer_modality(spec: DataSpec) -> str:
    """"image" or "audio" for a spec, from the built-in name, the folder's files, or ``spec.modality``."""
    if spec.modality:
        return spec.modality
    if spec.name in DATASETS:
        return DATASETS.get(spec.name).modality
    p = Path(spec.name)
    if p.is_dir():
        exts = {f.suffix.lower() for f in p.rglob("*") if f.is_file()}
        if exts & AUDIO_EXTS and not exts & IMAGE_EXTS:
            return "audio"
        return "image"
    return "image"


def unknown_dataset_error(name: str) -> ValueError:
    """The error for a name that is no built-in, no local folder and no Hub id; it lists the built-ins."""
    return ValueError(
        f"unknown dataset {name!r}: not a built-in ({', '.join(DATASETS.names())}), not an existing local folder, "
        "and not a Hugging Face Hub id of the form 'owner/name'"
    )


# ---------------------------------------------------------------------------- bad files: skip or error
class UnreadableFileError(ValueError):
    """One file (or Hub row) that cannot be read within the limits; the message names it, the reason and
    the fix."""


def describe_source(source: Any) -> str:
    """A printable name for a path, encoded bytes, or a ``datasets`` cell ``{"bytes": ..., "path": ...}`` (or a
    reference to one, with ``read_cell``)."""
    if hasattr(source, "read_cell"):
        source = source.read_cell()
    if isinstance(source, dict):
        return str(source.get("path") or "<bytes>")
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


@dataclass
class Screened:
    """The sources that passed ``screen``, their labels, what ``read`` returned for each, and the rejected
    ones as ``"name: reason"`` messages."""

    sources: list[Any]
    labels: list[int]
    results: list[Any]
    bad: list[str]


def warn_skipped(bad: list[str], where: str, kind: str) -> None:
    """The one warning for a dataset's rejected files: how many, and the first ``SKIPS_LISTED`` with their
    reasons. kind: "audio" or "image"."""
    if not bad:
        return
    listed = "\n  ".join(bad[:SKIPS_LISTED])
    more = f"\n  ... and {len(bad) - SKIPS_LISTED} more" if len(bad) > SKIPS_LISTED else ""
    log.warning("%s: skipped %d unreadable %s file(s); use --strict to make this an error:\n  %s%s",
                where, len(bad), kind, listed, more)


def screen(sources: list[Any], labels: list[int], read: Callable[[Any], Any], where: str, kind: str,
           strict: bool, warn: bool = True) -> Screened:
    """Call ``read`` once on every source and drop those it rejects with ``UnreadableFileError``: one
    warning counts them (``warn=False`` leaves it to the caller, to warn once for several splits), or
    under ``strict`` the first one is raised. Raises ``ValueError`` when nothing is left."""
    good, good_labels, results, bad = [], [], [], []
    for src, label in zip(tqdm(sources, desc=f"checking {kind} in {where}", unit="file", leave=False,
                               disable=len(sources) < 200), labels):
        try:
            results.append(read(src))
        except UnreadableFileError as e:
            if strict:
                raise type(e)(f"{where}: {e} (or drop --strict to skip unreadable files)") from e
            bad.append(str(e))
            continue
        good.append(src)
        good_labels.append(label)
    if warn:
        warn_skipped(bad, where, kind)
    if not good:
        raise ValueError(f"{where}: no readable {kind} files found ({len(bad)} rejected; first: "
                         f"{bad[0] if bad else 'none listed'})")
    return Screened(good, good_labels, results, bad)


# ---------------------------------------------------------------------------- bad files met while reading
def _remove_folder(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked DataLoader worker must not remove its parent's folder
        shutil.rmtree(folder, ignore_errors=True)


class SkipLog:
    """The unreadable files a lazily read dataset met, in any process that read it (DataLoader workers are other
    processes): each process appends the first sighting of a file to its own file in a temporary folder (nothing
    to drain, no lock; the folder goes when the log is collected), and ``report`` gives the one ``warn_skipped``
    warning for all of them. Under ``strict``, ``record`` raises instead. One log serves both splits of a dataset."""

    def __init__(self, where: str, kind: str, strict: bool = False):
        self.where, self.kind, self.strict = where, kind, strict
        self.folder = tempfile.mkdtemp(prefix="vqgen-skips-")
        self._seen: set[str] = set()
        self._reported = 0
        weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def record(self, error: UnreadableFileError) -> None:
        """Count one unreadable file (its message names it, the reason and the fix); under ``strict`` raise it,
        naming the dataset and how to skip such files instead."""
        if self.strict:
            raise type(error)(f"{self.where}: {error} (or drop --strict to skip unreadable files)") from error
        msg = " ".join(str(error).split())  # one line per file in the log
        if msg in self._seen:
            return
        self._seen.add(msg)
        with open(os.path.join(self.folder, f"{os.getpid()}.txt"), "a", encoding="utf-8") as f:
            f.write(msg + "\n")

    def skipped(self) -> list[str]:
        """Every file skipped so far by any process, once each, sorted (the order does not depend on which worker
        met it first)."""
        found: set[str] = set()
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else ():
            with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                found.update(line.rstrip("\n") for line in f if line.strip())
        return sorted(found)

    def report(self) -> int:
        """Warn once about the files skipped since the last report (``warn_skipped``); returns how many."""
        bad = self.skipped()
        if len(bad) > self._reported:
            warn_skipped(bad, self.where, self.kind)
        new, self._reported = len(bad) - self._reported, len(bad)
        return new


def skip_logs(datasets: Iterable[Any]) -> list[SkipLog]:
    """The ``SkipLog``s behind datasets and their wrappers (``Subset``, ``ConcatDataset``, augmentation, covering
    views), each once."""
    logs: dict[int, SkipLog] = {}
    todo = list(datasets)
    while todo:
        ds = todo.pop()
        if isinstance(ds, Splits):
            todo += [ds.train, ds.test]
            continue
        log_ = getattr(ds, "skips", None)
        if isinstance(log_, SkipLog):
            logs.setdefault(id(log_), log_)
        todo += [getattr(ds, a) for a in ("dataset", "base") if getattr(ds, a, None) is not None]
        todo += list(getattr(ds, "datasets", None) or [])
    return list(logs.values())


def report_skips(*datasets: Any) -> int:
    """The end-of-run warning for every file the datasets (or ``Splits``) skipped while read; returns how many."""
    return sum(s.report() for s in skip_logs(datasets))
