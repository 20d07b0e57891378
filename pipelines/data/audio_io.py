"""Reading audio files: decoding, limits, resampling, validation, and clips of fixed length.

Files are decoded with soundfile (libsndfile), not ``datasets``' own audio decoding: ``datasets`` 5 decodes
through torchcodec, which needs FFmpeg. Every file is decoded once when a dataset is loaded: unreadable,
empty, truncated, NaN or over-the-limit files (see ``spec.py``) are counted and skipped with one warning
(or raise under ``spec.strict``), so a bad file can never crash a training run hours in. Decoded clips are
kept in memory up to ``CACHE_BYTES``; beyond that they are re-read on access.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

from .spec import (
    MAX_AUDIO_SAMPLES,
    MAX_AUDIO_SECONDS,
    MAX_RESAMPLE_KERNEL,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    DataSpec,
    Screened,
    Splits,
    UnreadableFileError,
    describe_source,
    screen,
    warn_skipped,
)

log = logging.getLogger("vqgen.data")

CACHE_BYTES = 512 * 2**20  # decoded waveforms kept in memory up to this size; the rest are re-read lazily
DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, EOFError, ValueError)  # what libsndfile raises


class AudioReadError(UnreadableFileError):
    """A file (or Hub row) that cannot be turned into a waveform; the message names it and the fix."""


# ---------------------------------------------------------------------------- limits
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


def resample_kernel_size(rate: int, target_rate: int) -> int:
    """Number of filter taps ``torchaudio.functional.resample`` (default sinc/Hann, width 6, rolloff 0.99)
    builds to go from ``rate`` to ``target_rate`` Hz: (target/g) x (2 * width + rate/g), g = gcd."""
    g = math.gcd(rate, target_rate)
    orig, new = rate // g, target_rate // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    return new * (2 * width + orig)


def check_audio_limits(name: str, rate: int, frames: int, channels: int, target_rate: int | None) -> None:
    """Raise ``AudioReadError`` naming the file, the limit and the fix when a header's sample rate, duration,
    decoded size or resampling filter is over the limits in ``spec.py``; costs nothing but arithmetic."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioReadError(f"{name}: the header's sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}.."
                             f"{MAX_SAMPLE_RATE} Hz (MIN_SAMPLE_RATE..MAX_SAMPLE_RATE), where a header is almost "
                             "certainly corrupt; re-export the file at its true rate (resampled into that range) or "
                             "remove it")
    if frames > MAX_AUDIO_SECONDS * rate:
        raise AudioReadError(f"{name}: {math.ceil(frames / rate):,} s of audio is over the {MAX_AUDIO_SECONDS} s limit per "
                             "file (MAX_AUDIO_SECONDS); split it into shorter files (e.g. `ffmpeg -i IN -f segment "
                             "-segment_time 600 OUT%03d.wav`) or remove it")
    if frames * channels > MAX_AUDIO_SAMPLES:
        raise AudioReadError(f"{name}: {frames:,} frames x {channels} channels is over the {MAX_AUDIO_SAMPLES:,}-sample "
                             "decoding limit (MAX_AUDIO_SAMPLES); mix it down or split it into shorter files")
    taps = resample_kernel_size(rate, target_rate) if target_rate is not None and rate != target_rate else 0
    if taps > MAX_RESAMPLE_KERNEL:
        raise AudioReadError(f"{name}: resampling {rate} Hz to {target_rate} Hz needs a "
                             f"{taps:,}-tap filter, over the {MAX_RESAMPLE_KERNEL:,} "
                             "limit (MAX_RESAMPLE_KERNEL) because the two rates share no large factor; resample it "
                             f"to a standard rate first (e.g. `sox IN -r {target_rate} OUT`)")


# ---------------------------------------------------------------------------- reading
def read_audio(source: str | os.PathLike | bytes | bytearray | dict, target_rate: int | None = None,
               ) -> tuple[torch.Tensor, int]:
    """Decode one audio file to a mono waveform at ``target_rate``.

    source: a path, the encoded bytes, or a ``datasets`` audio cell ``{"bytes": ..., "path": ...}`` (bytes
    used when present, else the path). Returns ``(waveform float32 [T] in [-1, 1], original sample rate)``.
    Channels are averaged; other rates are resampled with ``torchaudio.functional.resample`` (logged at
    INFO); a waveform whose peak exceeds 1 (float files, resampling overshoot) is scaled to peak 1.
    Raises ``AudioReadError`` naming the file for unreadable, truncated, empty or non-finite audio, and,
    before decoding, for headers over the limits (``check_audio_limits``).
    """
    name = describe_source(source)
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
        sound = sf.SoundFile(fileobj)  # reads the header only
    except DECODE_ERRORS as e:
        raise _decode_error(name, e) from e
    with sound:
        rate = int(sound.samplerate)
        check_audio_limits(name, rate, sound.frames, sound.channels, target_rate)
        try:
            arr = sound.read(dtype="float32", always_2d=True)
        except DECODE_ERRORS as e:
            raise _decode_error(name, e) from e
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
    return wave.contiguous(), rate


def _decode_error(name: str, e: Exception) -> AudioReadError:
    return AudioReadError(f"{name}: cannot decode audio ({e}); supported formats are those of libsndfile "
                          "(WAV, FLAC, OGG/Vorbis, MP3, AIFF): convert the file or remove it")


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
def validate_sources(sources: list[Any], labels: list[int], sample_rate: int, where: str, strict: bool,
                     cached: int = 0, warn: bool = True) -> Screened:
    """Decode every source once at ``sample_rate``; drop the ones ``read_audio`` rejects (see ``screen``).
    ``results`` holds each decoded waveform (float32 [T]) while the total (``cached`` bytes already held
    elsewhere, plus these) fits in ``CACHE_BYTES``, else None (re-read on access)."""
    held = [cached]

    def read(src: Any) -> torch.Tensor | None:  # the wave (float32 [T]) while the cache has room, else None
        wave, _ = read_audio(src, sample_rate)
        if held[0] + wave.numel() * 4 > CACHE_BYTES:
            return None
        held[0] += wave.numel() * 4
        return wave

    return screen(sources, labels, read, where, "audio", strict, warn)


class AudioClipDataset(Dataset):
    """Decoded audio cut to fixed-length clips: ``(x float32 [clip_samples] in [-1, 1], label int64)``.

    ``train=True``: a random window (or, for short files, a random placement in silence), drawn from a
    generator seeded by (seed, epoch, index), so a given epoch is reproducible and epochs differ; call
    ``set_epoch`` each epoch as with ``DistributedSampler``. ``train=False``: the centre window, always.
    """

    def __init__(self, data: Screened, sample_rate: int, clip_samples: int, train: bool, seed: int = 0):
        self.sources, self.labels, self.waves = data.sources, data.labels, data.results
        self.sample_rate, self.clip_samples, self.train, self.seed = sample_rate, clip_samples, train, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's train windows (reproducibly per epoch); no effect on test crops."""
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


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train indices, test indices), at least one test item when n > 1."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def make_audio_splits(train: tuple[list[Any], list[int]], test: tuple[list[Any], list[int]],
                      class_names: list[str], spec: DataSpec, where: str) -> Splits:
    """(sources, labels) of each split -> ``Splits`` of ``AudioClipDataset``s: ``spec.limit`` keeps a seeded
    subset of train, every file is validated once, and one warning covers both splits' skips."""
    if spec.clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
    tr_src, tr_lab = train
    if spec.limit:
        # A seeded subset, not the first N (sorted folders would give one class).
        keep = np.sort(np.random.default_rng(spec.seed).permutation(len(tr_src))[:spec.limit])
        tr_src, tr_lab = [tr_src[i] for i in keep], [tr_lab[i] for i in keep]
    tr = validate_sources(tr_src, tr_lab, spec.sample_rate, f"{where} [train]", spec.strict, warn=False)
    held = sum(w.numel() * 4 for w in tr.results if w is not None)
    te = validate_sources(test[0], test[1], spec.sample_rate, f"{where} [test]", spec.strict, held, warn=False)
    warn_skipped(tr.bad + te.bad, where, "audio")  # one warning per dataset, not per split
    return Splits(
        train=AudioClipDataset(tr, spec.sample_rate, spec.clip_samples, train=True, seed=spec.seed),
        test=AudioClipDataset(te, spec.sample_rate, spec.clip_samples, train=False, seed=spec.seed),
        modality="audio", num_classes=len(class_names), class_names=class_names,
        input_shape=(spec.clip_samples,), sample_rate=spec.sample_rate,
    )
