"""Audio sources: built-in ``tones`` and ``spoken-digits``, local audio folders, and Hugging Face datasets.

Every source ends as a dataset of ``(x float32 [clip_samples] in [-1, 1] at spec.sample_rate, label int64)``.
Files are decoded with soundfile (libsndfile), not ``datasets``' own audio decoding: ``datasets`` 5 decodes
through torchcodec, which needs FFmpeg. Hub columns are therefore cast to ``Audio(decode=False)`` and their
bytes (or paths) handed to soundfile, the same reader the local folders use.

Every file is decoded once up front: unreadable, empty, truncated or NaN files are counted and skipped with
one warning (or raise under ``spec.strict``), so a bad file can never crash a training run hours in.
Decoded clips are kept in memory up to ``CACHE_BYTES``; beyond that they are re-read on access.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import AUDIO_EXTS, DataSpec, Splits, unknown_dataset_error

log = logging.getLogger("vqgen.data")

CACHE_BYTES = 512 * 2**20  # decoded waveforms kept in memory up to this size; the rest are re-read lazily
TONES_SIZES = {"train": 2000, "test": 200}
TONE_TIMBRES = ["flute", "clarinet", "brass", "bell"]  # the tones labels: timbre is audible in every note
ESPEAK_INSTALL = ("the spoken-digits dataset is synthesised with espeak-ng, which is not installed. Install it "
                  "with `sudo apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS) or "
                  "`sudo dnf install espeak-ng` (Fedora), then run again")


class AudioReadError(ValueError):
    """A file (or Hub row) that cannot be turned into a waveform; the message names it and the fix."""


# ---------------------------------------------------------------------------- reading
def _describe(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or "<bytes>")
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _wav_truncated(head: bytes, total_size: int) -> bool:
    """True when a RIFF/WAVE header declares more sample data than the file holds.

    libsndfile silently shortens such files to what is there, so a copy cut off mid-transfer would pass
    as a valid, shorter clip; the header is the only witness.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    offset = 12
    while offset + 8 <= len(head):
        chunk_id, size = head[offset:offset + 4], struct.unpack("<I", head[offset + 4:offset + 8])[0]
        if chunk_id == b"data":
            # 0xFFFFFFFF / 0 mark streamed WAVs of unknown length; nothing to compare then.
            return size not in (0, 0xFFFFFFFF) and size > total_size - (offset + 8)
        offset += 8 + size + (size & 1)
    return False


def read_audio(source: str | os.PathLike | bytes | bytearray | dict, target_rate: int | None = None,
               ) -> tuple[torch.Tensor, int]:
    """Decode one audio file to a mono waveform at ``target_rate``.

    source: a path, the encoded bytes, or a ``datasets`` audio cell ``{"bytes": ..., "path": ...}`` (bytes
    used when present, else the path). Returns ``(waveform float32 [T] in [-1, 1], original sample rate)``.
    Channels are averaged; other rates are resampled with ``torchaudio.functional.resample`` (logged at
    INFO); a waveform whose peak exceeds 1 (float files, resampling overshoot) is scaled to peak 1.
    Raises ``AudioReadError`` naming the file for unreadable, truncated, empty or non-finite audio.
    """
    name = _describe(source)
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise AudioReadError(f"{name}: audio cell has neither bytes nor a path")
    if isinstance(source, (bytes, bytearray)):
        data, total = bytes(source), len(source)
        head = data[:65536]
        fileobj: Any = io.BytesIO(data)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioReadError(f"{name}: no such file")
        total = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(65536)
        fileobj = str(path)
    if total == 0:
        raise AudioReadError(f"{name}: the file is empty (0 bytes); delete it or replace it with a good copy")
    if _wav_truncated(head, total):
        raise AudioReadError(f"{name}: WAV file is truncated (its header declares more samples than it holds); "
                             "re-copy or re-export it")
    try:
        arr, rate = sf.read(fileobj, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise AudioReadError(f"{name}: cannot decode audio ({e}); supported formats are those of libsndfile "
                             "(WAV, FLAC, OGG/Vorbis, MP3, AIFF): convert the file or remove it") from e
    if arr.shape[0] == 0:
        raise AudioReadError(f"{name}: the audio has 0 samples; remove it")
    if not np.isfinite(arr).all():
        raise AudioReadError(f"{name}: the audio contains NaN or infinite samples; re-export it or remove it")
    wave = torch.from_numpy(arr).mean(dim=1)  # (T,) mono mix-down
    if target_rate is not None and rate != target_rate:
        log.info("resampled %s from %d Hz to %d Hz", name, rate, target_rate)
        wave = AF.resample(wave, rate, target_rate)
        if wave.numel() == 0:
            raise AudioReadError(f"{name}: too short to resample from {rate} Hz to {target_rate} Hz")
    peak = wave.abs().max().item()
    if peak > 1.0:
        log.info("%s: peak %.3f exceeds 1, scaled to peak 1", name, peak)
        wave = wave / peak
    return wave.contiguous(), int(rate)


def fit_clip(wave: torch.Tensor, clip_samples: int, offset: int) -> torch.Tensor:
    """Cut or zero-pad a waveform [T] to exactly ``clip_samples``.

    T >= clip: the window starting at ``offset`` (in [0, T - clip]). T < clip: the clip placed at ``offset``
    (in [0, clip - T]) inside silence.
    """
    t = wave.shape[0]
    if t >= clip_samples:
        return wave[offset:offset + clip_samples]
    out = wave.new_zeros(clip_samples)
    out[offset:offset + t] = wave
    return out


# ---------------------------------------------------------------------------- datasets of decoded files
@dataclass
class _Validated:
    sources: list[Any]
    labels: list[int]
    waves: list[torch.Tensor | None]  # decoded at the target rate, or None when over the cache budget
    bad: list[str]  # the rejected sources, described


def warn_skipped(bad: list[str], where: str) -> None:
    """The one warning for a dataset's rejected files: how many, and the first few."""
    if bad:
        log.warning("%s: skipped %d unreadable audio file(s) (first: %s); use --strict to make this an error",
                    where, len(bad), ", ".join(bad[:3]))


def validate_sources(sources: list[Any], labels: list[int], sample_rate: int, where: str, strict: bool,
                     cached: int = 0, warn: bool = True) -> _Validated:
    """Decode every source once; drop the ones ``read_audio`` rejects with one warning naming the count and
    the first few (or raise under ``strict``). Keeps decoded waveforms while the total (``cached`` bytes
    already held elsewhere, plus these) fits in ``CACHE_BYTES``."""
    good, good_labels, waves, bad = [], [], [], []
    for src, label in zip(tqdm(sources, desc=f"checking audio in {where}", unit="file", leave=False,
                               disable=len(sources) < 200), labels):
        try:
            wave, _ = read_audio(src, sample_rate)
        except AudioReadError as e:
            if strict:
                raise AudioReadError(f"{where}: {e} (or drop --strict to skip unreadable files)") from e
            bad.append(_describe(src))
            continue
        good.append(src)
        good_labels.append(label)
        keep = cached + wave.numel() * 4 <= CACHE_BYTES
        cached += wave.numel() * 4 if keep else 0
        waves.append(wave if keep else None)
    if warn:
        warn_skipped(bad, where)
    if not good:
        raise ValueError(f"{where}: no readable audio found ({len(bad)} file(s) rejected: {', '.join(bad[:3])})")
    return _Validated(good, good_labels, waves, bad)


class AudioClipDataset(Dataset):
    """Decoded audio cut to fixed-length clips: ``(x float32 [clip_samples] in [-1, 1], label int64)``.

    ``train=True``: a random window (or, for short files, a random placement in silence), drawn from a
    generator seeded by (seed, epoch, index), so a given epoch is reproducible and epochs differ; call
    ``set_epoch`` each epoch as with ``DistributedSampler``. ``train=False``: the centre window, always.
    """

    def __init__(self, data: _Validated, sample_rate: int, clip_samples: int, train: bool, seed: int = 0):
        self.sources, self.labels, self.waves = data.sources, data.labels, data.waves
        self.sample_rate, self.clip_samples, self.train, self.seed = sample_rate, clip_samples, train, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sources)

    def waveform(self, i: int) -> torch.Tensor:
        """The whole decoded file i, float32 [T] in [-1, 1] at ``sample_rate``."""
        wave = self.waves[i]
        if wave is None:
            try:
                wave, _ = read_audio(self.sources[i], self.sample_rate)
            except AudioReadError as e:
                raise AudioReadError(f"{e} (it was readable when the dataset was loaded: was it changed since?)") from e
        return wave

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        wave = self.waveform(i)
        slack = abs(wave.shape[0] - self.clip_samples)
        if self.train:
            offset = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, slack + 1))
        else:
            offset = slack // 2
        return fit_clip(wave, self.clip_samples, offset), torch.tensor(self.labels[i], dtype=torch.int64)


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train indices, test indices), at least one test item when n > 1."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _make_splits(train: tuple[list[Any], list[int]], test: tuple[list[Any], list[int]], class_names: list[str],
                 spec: DataSpec, where: str) -> Splits:
    if spec.clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
    tr_src, tr_lab = train
    if spec.limit:
        # A seeded subset, not the first N (sorted folders would give one class).
        keep = np.sort(np.random.default_rng(spec.seed).permutation(len(tr_src))[:spec.limit])
        tr_src, tr_lab = [tr_src[i] for i in keep], [tr_lab[i] for i in keep]
    tr = validate_sources(tr_src, tr_lab, spec.sample_rate, f"{where} [train]", spec.strict, warn=False)
    held = sum(w.numel() * 4 for w in tr.waves if w is not None)
    te = validate_sources(test[0], test[1], spec.sample_rate, f"{where} [test]", spec.strict, held, warn=False)
    warn_skipped(tr.bad + te.bad, where)  # one warning per dataset, not per split
    return Splits(
        train=AudioClipDataset(tr, spec.sample_rate, spec.clip_samples, train=True, seed=spec.seed),
        test=AudioClipDataset(te, spec.sample_rate, spec.clip_samples, train=False, seed=spec.seed),
        modality="audio", num_classes=len(class_names), class_names=class_names,
        input_shape=(spec.clip_samples,), sample_rate=spec.sample_rate,
    )


# ---------------------------------------------------------------------------- local folders
def _list_audio(root: Path) -> tuple[list[Path], list[str]]:
    """Audio files under root (sorted) and the label of each: its first folder below root ('' at root)."""
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTS
                   and not f.name.startswith("."))
    return files, [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "" for f in files]


def load_audio_folder(spec: DataSpec) -> Splits:
    """A local folder in audiofolder layout: ``root/<label>/<file>``, or ``root/<split>/<label>/<file>`` with
    ``spec.train_split`` (and ``spec.test_split``) folders. Labels are the sorted label-folder names; files
    directly in the label root are unlabelled (-1). Without a test folder, ``test_fraction`` is held out."""
    root = Path(spec.name)
    split_layout = (root / spec.train_split).is_dir()
    train_root = root / spec.train_split if split_layout else root
    files, names = _list_audio(train_root)
    if not files:
        raise ValueError(f"{train_root}: no audio files ({', '.join(sorted(AUDIO_EXTS))}) found")
    test_root = root / spec.test_split if split_layout and spec.test_split else None
    test_files, test_names = _list_audio(test_root) if test_root and test_root.is_dir() else ([], [])
    class_names = sorted({n for n in names + test_names if n})
    index = {n: i for i, n in enumerate(class_names)}
    labels = [index.get(n, -1) for n in names]
    if test_files:
        train = ([str(f) for f in files], labels)
        test = ([str(f) for f in test_files], [index.get(n, -1) for n in test_names])
    else:
        tr, te = _holdout(len(files), spec.test_fraction, spec.seed)
        train = ([str(files[i]) for i in tr], [labels[i] for i in tr])
        test = ([str(files[i]) for i in te], [labels[i] for i in te])
    return _make_splits(train, test, class_names, spec, str(root))


# ---------------------------------------------------------------------------- Hugging Face datasets
def _hf_columns(ds: Any, spec: DataSpec, where: str, index: dict[str, int] | None) -> tuple[list[Any], list[int]]:
    from datasets import Audio

    if spec.audio_column not in ds.column_names:
        raise ValueError(f"{where}: no column {spec.audio_column!r}; columns are {ds.column_names}. "
                         "Pass --audio-column NAME")
    ds = ds.cast_column(spec.audio_column, Audio(decode=False))
    sources = list(ds[spec.audio_column])
    if spec.label_column and spec.label_column in ds.column_names:
        raw = ds[spec.label_column]
        labels = [index[str(v)] for v in raw] if index is not None else [int(v) for v in raw]
    else:
        labels = [-1] * len(sources)
    return sources, labels


def load_hf_audio(spec: DataSpec, dataset_dict: Any, where: str) -> Splits:
    """A ``datasets.DatasetDict`` (from the Hub or a local dataset folder) -> ``Splits``. Labels: a
    ``ClassLabel`` column keeps its names; string labels are mapped to their sorted order; integers are
    kept. Without ``spec.test_split``, ``test_fraction`` of train is held out (seeded)."""
    if spec.train_split not in dataset_dict:
        raise ValueError(f"{where}: no split {spec.train_split!r}; splits are {list(dataset_dict)}")
    train = dataset_dict[spec.train_split]
    test = dataset_dict[spec.test_split] if spec.test_split and spec.test_split in dataset_dict else None
    if spec.label_column and spec.label_column not in train.column_names and spec.label_column != "label":
        raise ValueError(f"{where}: no label column {spec.label_column!r}; columns are {train.column_names}. "
                         "Pass --label-column NAME (or none)")
    class_names: list[str] = []
    index: dict[str, int] | None = None
    if spec.label_column and spec.label_column in train.column_names:
        feat = train.features[spec.label_column]
        class_names = list(getattr(feat, "names", None) or [])
        if not class_names:
            values = list(train[spec.label_column]) + (list(test[spec.label_column]) if test is not None else [])
            if values and isinstance(values[0], str):
                class_names = sorted(set(values))
                index = {n: i for i, n in enumerate(class_names)}
            elif values:
                class_names = [str(i) for i in range(max(int(v) for v in values) + 1)]
    tr_src, tr_lab = _hf_columns(train, spec, where, index)
    if test is not None:
        te_src, te_lab = _hf_columns(test, spec, where, index)
    else:
        tr, te = _holdout(len(tr_src), spec.test_fraction, spec.seed)
        te_src, te_lab = [tr_src[i] for i in te], [tr_lab[i] for i in te]
        tr_src, tr_lab = [tr_src[i] for i in tr], [tr_lab[i] for i in tr]
    return _make_splits((tr_src, tr_lab), (te_src, te_lab), class_names, spec, where)


def is_dataset_folder(path: Path) -> bool:
    """True for a folder ``datasets`` can load itself (save_to_disk output, or parquet/arrow/csv/json files)."""
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return True
    return any(f.suffix in {".parquet", ".arrow", ".csv", ".jsonl"} for f in path.rglob("*") if f.is_file())


def load_hub_audio(spec: DataSpec) -> Splits:
    """A Hub dataset id, or a local folder ``datasets`` can read (parquet files, or ``save_to_disk``
    output): one code path for both, so the tests exercise the Hub path offline."""
    import datasets

    path = Path(spec.name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        dd = datasets.load_from_disk(str(path))
        if isinstance(dd, datasets.Dataset):
            dd = datasets.DatasetDict({spec.train_split: dd})
    else:
        try:
            dd = datasets.load_dataset(spec.name, revision=spec.revision)
        except FileNotFoundError as e:
            raise unknown_dataset_error(spec.name) from e
    return load_hf_audio(spec, dd, spec.name)


# ---------------------------------------------------------------------------- tones
def _partials(timbre: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequency ratios, amplitudes, decay-rate multipliers) of one timbre, slightly jittered per note."""
    n = np.arange(1, 9, dtype=np.float64)
    if timbre == "flute":  # nearly pure: strong fundamental, a little 2nd and 3rd
        ratios, amps = n[:3], np.array([1.0, 0.25, 0.08])
    elif timbre == "clarinet":  # odd harmonics only, 1/n (a closed cylindrical bore)
        ratios = n[::2]
        amps = 1.0 / ratios
    elif timbre == "brass":  # all harmonics, 1/n (sawtooth-like)
        ratios, amps = n, 1.0 / n
    else:  # bell: inharmonic partials (ideal free bar modes 1, 2.76, 5.40, 8.93), higher ones die faster
        ratios, amps = np.array([1.0, 2.76, 5.40, 8.93]), np.array([1.0, 0.6, 0.3, 0.15])
    decay = ratios**0.5 if timbre == "bell" else np.ones_like(ratios)
    return ratios, amps * rng.uniform(0.8, 1.2, size=len(amps)), decay


SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10], "pentatonic": [0, 2, 4, 7, 9]}


def synth_melody(rng: np.random.Generator, timbre: str, sample_rate: int, n_samples: int) -> np.ndarray:
    """A random melody: notes of a random scale (major, natural minor or major pentatonic) from a random
    root, at a random tempo, each note with the timbre's partials, a linear attack and exponential decay,
    plus light white noise (-50 dB). Returns float32 [n_samples] with peak in [0.3, 0.9]."""
    out = np.zeros(n_samples, dtype=np.float64)
    scale = SCALES[list(SCALES)[rng.integers(len(SCALES))]]
    root = 48 + int(rng.integers(0, 13))  # MIDI C3..C4
    beat = 60.0 / rng.uniform(90, 180)  # seconds per beat
    t0 = 0
    nyquist = sample_rate / 2
    while t0 < n_samples:
        dur = int(beat * rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]) * sample_rate)
        if rng.random() < 0.1:  # a rest
            t0 += dur
            continue
        degree = int(rng.integers(0, len(scale) * 2))
        midi = root + scale[degree % len(scale)] + 12 * (degree // len(scale))
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        ring = min(n_samples - t0, dur + int(0.05 * sample_rate))  # let the note ring 50 ms past its slot
        t = np.arange(ring) / sample_rate
        attack = rng.uniform(0.003, 0.03)
        tau = rng.uniform(0.1, 0.6)
        ratios, amps, decay = _partials(timbre, rng)
        keep = f0 * ratios < 0.9 * nyquist  # no partial above Nyquist: no aliasing
        env_a = np.minimum(t / attack, 1.0)
        phases = rng.uniform(0, 2 * math.pi, size=len(ratios))
        note = np.zeros(ring)
        for r, a, d, p in zip(ratios[keep], amps[keep], decay[keep], phases[keep]):
            note += a * np.sin(2 * math.pi * f0 * r * t + p) * np.exp(-t * d / tau)
        out[t0:t0 + ring] += rng.uniform(0.5, 1.0) * env_a * note
        t0 += dur
    out += rng.normal(0.0, 10 ** (-50 / 20), size=n_samples)
    peak = np.abs(out).max()
    return (out * (rng.uniform(0.3, 0.9) / max(peak, 1e-8))).astype(np.float32)


class TonesDataset(Dataset):
    """Procedural melodies, generated on access: item i of a split comes from a generator seeded by
    (seed, split, i), so the data is identical across runs and machines. Labels are timbres
    (``TONE_TIMBRES``), balanced: item i has timbre i mod 4."""

    def __init__(self, n: int, split: str, seed: int, sample_rate: int, clip_samples: int):
        self.n, self.split_id, self.seed = n, {"train": 0, "test": 1}[split], seed
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        # Synthesis costs ~6 ms per 1 s clip, ~30% of a CPU training step at batch 16, so clips are kept once
        # made (2,000 x 1 s = 128 MB) unless the split would not fit in CACHE_BYTES.
        self._cache: dict[int, torch.Tensor] | None = {} if n * clip_samples * 4 <= CACHE_BYTES else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        label = i % len(TONE_TIMBRES)
        x = self._cache.get(i) if self._cache is not None else None
        if x is None:
            rng = np.random.default_rng([self.seed, self.split_id, i])
            x = torch.from_numpy(synth_melody(rng, TONE_TIMBRES[label], self.sample_rate, self.clip_samples))
            if self._cache is not None:
                self._cache[i] = x
        return x.clone(), torch.tensor(label, dtype=torch.int64)


def load_tones(spec: DataSpec) -> Splits:
    """The ``tones`` built-in: 2,000 train / 200 test melodies, 4 timbre classes."""
    if spec.clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
    n_train = min(spec.limit, TONES_SIZES["train"]) if spec.limit else TONES_SIZES["train"]
    return Splits(
        train=TonesDataset(n_train, "train", spec.seed, spec.sample_rate, spec.clip_samples),
        test=TonesDataset(TONES_SIZES["test"], "test", spec.seed, spec.sample_rate, spec.clip_samples),
        modality="audio", num_classes=len(TONE_TIMBRES), class_names=list(TONE_TIMBRES),
        input_shape=(spec.clip_samples,), sample_rate=spec.sample_rate,
    )


# ---------------------------------------------------------------------------- spoken digits
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Accent + voice variant pairs; the last two are held out as the test speakers (SC09 also splits by speaker).
ESPEAK_VOICES = ["en-us", "en-gb+f2", "en-gb-scotland+m3", "en-029+f4", "en-gb-x-rp+m7", "en-us-nyc+f1",
                 "en-us+f3", "en-gb+m4"]
ESPEAK_TEST_VOICES = 2
ESPEAK_SPEEDS = [130, 165, 200]  # words per minute (espeak-ng default 175)
ESPEAK_PITCHES = [35, 50, 65]  # 0-99 (default 50)


def spoken_digits_dir(spec: DataSpec) -> Path:
    base = Path(spec.cache_dir) if spec.cache_dir else Path.home() / ".cache" / "vqgen" / "spoken-digits"
    return base / f"sr{spec.sample_rate}"


def _trim_silence(wave: np.ndarray, rate: int, threshold: float = 0.01, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``threshold``, keeping ``margin_s`` either side: espeak-ng
    pads each word with ~0.3 s of silence, which would push short digits off-centre in 1 s clips."""
    loud = np.flatnonzero(np.abs(wave) > threshold)
    if len(loud) == 0:
        return wave
    m = int(margin_s * rate)
    return wave[max(0, loud[0] - m):loud[-1] + m + 1]


def generate_spoken_digits(spec: DataSpec) -> Path:
    """Synthesise the ten digits in every voice x speed x pitch with espeak-ng into
    ``<cache>/sr<rate>/{train,test}/<digit>/<voice>_<speed>_<pitch>.wav`` (16-bit, ``spec.sample_rate``).
    Done once: the folder is built under a temporary name and renamed when complete."""
    out = spoken_digits_dir(spec)
    if (out / "train").is_dir() and (out / "test").is_dir():
        return out
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(ESPEAK_INSTALL)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(d, v, s, p) for d in range(10) for v in ESPEAK_VOICES for s in ESPEAK_SPEEDS for p in ESPEAK_PITCHES]
    test_voices = set(ESPEAK_VOICES[-ESPEAK_TEST_VOICES:])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".spoken-digits-") as tmp:
        tmp_root = Path(tmp) / "data"
        for d, voice, speed, pitch in tqdm(jobs, desc="synthesising spoken digits (espeak-ng)", unit="clip"):
            raw = Path(tmp) / "raw.wav"
            cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), DIGIT_WORDS[d]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0 or not raw.is_file():
                raise RuntimeError(f"espeak-ng failed on {' '.join(cmd)}: {res.stderr.strip()}")
            arr, rate = sf.read(str(raw), dtype="float32", always_2d=True)
            wave = torch.from_numpy(arr.mean(1))
            if rate != spec.sample_rate:
                wave = AF.resample(wave, rate, spec.sample_rate)
            clip = _trim_silence(wave.clamp(-1, 1).numpy(), spec.sample_rate)
            split = "test" if voice in test_voices else "train"
            dest = tmp_root / split / str(d) / f"{voice.replace('+', '_')}_{speed}_{pitch}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(dest), clip, spec.sample_rate, subtype="PCM_16")
        if not out.exists():  # another process may have finished first; theirs is as good as ours
            os.replace(tmp_root, out)
    return out


def load_spoken_digits(spec: DataSpec) -> Splits:
    """The ``spoken-digits`` built-in (SC09-like): 10 classes '0'..'9'; 6 train voices, 2 held-out test
    voices, 3 speeds x 3 pitches each (540 train, 180 test clips), read back as a local folder."""
    root = generate_spoken_digits(spec)
    folder_spec = DataSpec(**{**spec.__dict__, "name": str(root), "train_split": "train", "test_split": "test"})
    return load_audio_folder(folder_spec)


# ---------------------------------------------------------------------------- dispatch
def load_audio_splits(spec: DataSpec) -> Splits:
    """Dispatch an audio ``DataSpec``: built-in name, local audio folder, local ``datasets`` folder or Hub id."""
    if spec.sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {spec.sample_rate}")
    if spec.name == "tones":
        return load_tones(spec)
    if spec.name == "spoken-digits":
        return load_spoken_digits(spec)
    p = Path(spec.name)
    if p.is_dir():
        if any(f.suffix.lower() in AUDIO_EXTS for f in p.rglob("*") if f.is_file()):
            return load_audio_folder(spec)
        if is_dataset_folder(p):
            return load_hub_audio(spec)
        raise ValueError(f"{p}: no audio files ({', '.join(sorted(AUDIO_EXTS))}) and no dataset files "
                         "(parquet, arrow, save_to_disk output) found")
    if "/" in spec.name and not p.exists() and not spec.name.startswith((".", "/")):
        return load_hub_audio(spec)
    raise unknown_dataset_error(spec.name)
