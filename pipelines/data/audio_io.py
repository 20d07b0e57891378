"""Reading audio files: decoding, limits, resampling, validation, and clips of fixed length.

Files are decoded with soundfile (libsndfile) by the audio modality (``tokenizers_vq.modality.audio.decode_audio``:
the one audio decoder; this layer adds its limits and error type), not ``datasets``' own audio decoding:
``datasets`` 5 decodes through torchcodec, which needs FFmpeg. Every file is decoded once when a dataset is loaded: unreadable,
empty, truncated, NaN or over-the-limit files (see ``spec.py``) are counted and skipped with one warning
(or raise under ``spec.strict``), so a bad file can never crash a training run hours in. Decoded files are
kept in memory up to ``CACHE_BYTES``; beyond that each access reads just its window (``read_audio_range``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

from tokenizers_vq.modality.audio import DECODE_ERRORS, decode_audio, decode_error

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


class AudioReadError(UnreadableFileError):
    """A file (or Hub row) that cannot be turned into a waveform; the message names it and the fix."""


# ---------------------------------------------------------------------------- limits
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
def _file_object(source: str | os.PathLike | bytes | bytearray | dict) -> tuple[str, Any]:
    """(printable name, what ``sf.SoundFile`` opens: a path string or a seekable ``BytesIO``) for a path, encoded
    bytes or a ``datasets`` audio cell (bytes used when present, else the path)."""
    if hasattr(source, "read_cell"):  # a row of an Arrow table (hub.ArrowCell): read the cell now
        source = source.read_cell()
    name = describe_source(source)
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise AudioReadError(f"{name}: audio cell has neither bytes nor a path")
    if isinstance(source, (bytes, bytearray)):
        return name, io.BytesIO(bytes(source))
    return name, str(Path(source))


def _decode(source: str | os.PathLike | bytes | bytearray | dict, target_rate: int | None
            ) -> tuple[torch.Tensor, int, float]:
    """(mono waveform float32 [T] at ``target_rate`` scaled to peak <= 1, original rate, the scale applied): the
    audio modality's decoder, with this layer's limits checked on the header and its error type."""
    name, fileobj = _file_object(source)

    def limits(rate: int, frames: int, channels: int) -> None:
        check_audio_limits(name, rate, frames, channels, target_rate)

    return decode_audio(fileobj, target_rate, name=name, check_header=limits, error=AudioReadError)


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
    wave, rate, _ = _decode(source, target_rate)
    return wave, rate


def _resample_width(rate: int, target_rate: int) -> tuple[int, int, int]:
    """(orig, new, width) of torchaudio's default resampler: blocks of ``orig`` source frames become ``new``
    target samples, and each block reads ``width`` source frames beyond it on either side."""
    g = math.gcd(rate, target_rate)
    orig, new = rate // g, target_rate // g
    return orig, new, math.ceil(6 * orig / (min(orig, new) * 0.99))


def read_audio_range(source: str | os.PathLike | bytes | bytearray | dict, start: int, stop: int,
                     target_rate: int, rate: int, scale: float = 1.0) -> torch.Tensor:
    """Samples ``[start, stop)`` (at ``target_rate``) of a file that ``read_audio`` accepted, read without
    decoding the rest: float32 [stop - start] in [-1, 1], equal to ``read_audio(source, target_rate)[0][start:stop]``
    (exactly at the file's own rate; to float rounding when resampled).

    ``rate``: the file's own rate; ``scale``: the peak normalisation ``read_audio`` applied (1 / peak, or 1).
    A resampled range is read from whole resampling blocks with the filter's reach as margin either side, so
    its samples are computed from the same inputs as in a whole-file resample.
    """
    name, fileobj = _file_object(source)
    try:
        with sf.SoundFile(fileobj) as f:
            if rate == target_rate:
                f.seek(start)
                arr = f.read(stop - start, dtype="float32", always_2d=True)
                wave, first = torch.from_numpy(arr).mean(dim=1), start
            else:
                orig, new, width = _resample_width(rate, target_rate)
                margin = -(-width // orig) + 1  # blocks either side that the filter reaches into
                b0 = max(0, start // new - margin)
                b1 = -(-stop // new) + margin
                f.seek(b0 * orig)
                arr = f.read(max(0, min(f.frames, b1 * orig) - b0 * orig), dtype="float32", always_2d=True)
                wave = AF.resample(torch.from_numpy(arr).mean(dim=1), rate, target_rate)
                first = b0 * new
    except DECODE_ERRORS as e:
        raise AudioReadError(f"{_decode_error(name, e)} (it was readable when the dataset was loaded: was it changed "
                             "since?)") from e
    out = wave[start - first:stop - first]
    if out.shape[0] != stop - start:
        raise AudioReadError(f"{name}: samples {start}..{stop} asked for, {out.shape[0]} read (was the file changed "
                             "since the dataset was loaded?)")
    return out * scale if scale != 1.0 else out


def _header(source: str | os.PathLike | bytes | bytearray | dict) -> Any:
    """A file's header (``sf.info``: nothing decoded), or None when it cannot be read or is over the limits
    (``check_audio_limits``: a corrupt header says nothing)."""
    try:
        name, fileobj = _file_object(source)
        info = sf.info(fileobj)
        check_audio_limits(name, int(info.samplerate), info.frames, info.channels, None)
        return info
    except (*DECODE_ERRORS, UnreadableFileError, TypeError):
        return None


def header_seconds(source: str | os.PathLike | bytes | bytearray | dict) -> float | None:
    """Duration in seconds from a file's header, or None (``_header``)."""
    info = _header(source)
    return None if info is None else info.frames / info.samplerate


def header_rate(source: str | os.PathLike | bytes | bytearray | dict) -> int | None:
    """A file's sample rate in Hz from its header, or None (``_header``)."""
    info = _header(source)
    return None if info is None else int(info.samplerate)


NARROWBAND_RATE = 8000  # Hz: telephone band; data recorded at or below it is modelled at this rate


def follow_data_rate(spec: DataSpec, sources: list[Any], where: str) -> DataSpec:
    """``spec`` at the rate its training ``sources`` were recorded at (``spec.rate_from_data``): 8 kHz when no readable
    file is above 8 kHz and ``spec.sample_rate`` is higher (the band above 4 kHz is empty in such data: a 16 kHz
    codec would spend half its band, and its compute, on silence), else ``spec`` unchanged. The clip keeps its
    length in seconds."""
    if spec.sample_rate <= NARROWBAND_RATE:
        return spec
    known = False
    for source in sources:  # stops at the first wideband file
        rate = header_rate(source)
        if rate and rate > NARROWBAND_RATE:
            return spec
        known = known or bool(rate)
    if not known:
        return spec
    clip = max(1, round(spec.clip_samples * NARROWBAND_RATE / spec.sample_rate))
    log.info("%s: every training file is recorded at %d Hz or less: audio at %d Hz (the band the data holds); "
             "--sample-rate %d resamples it up instead", where, NARROWBAND_RATE, NARROWBAND_RATE, spec.sample_rate)
    return dataclasses.replace(spec, sample_rate=NARROWBAND_RATE, clip_samples=clip, rate_from_data=False)


def _decode_error(name: str, e: Exception) -> AudioReadError:
    return decode_error(name, e, AudioReadError)


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


def stratified_offset(key: list[int], k: int, n: int, slack: int) -> int:
    """Where training window k of a file's n starts, in [0, slack] (slack = length - clip): in the k-th n-th of
    the possible offsets, drawn by a generator seeded by ``key`` (seed, epoch, item: ``AudioClipDataset`` and
    ``streaming.StreamedAudio`` draw the same windows for the same item numbers)."""
    lo, hi = k * (slack + 1) // n, max((k + 1) * (slack + 1) // n, k * (slack + 1) // n + 1)
    return lo + int(np.random.default_rng(key).integers(0, hi - lo))


def random_placement(key: list[int], slack: int) -> int:
    """Where a training clip shorter than a clip by ``slack`` samples sits in its padded clip, in [0, slack],
    drawn by a generator seeded by ``key`` (seed, epoch, item)."""
    return int(np.random.default_rng(key).integers(0, slack + 1))


# ---------------------------------------------------------------------------- datasets of decoded files
@dataclass
class AudioInfo:
    """One validated file: its decoded waveform while the cache had room (else None: read by range on
    access), its length in samples at the dataset's rate, its own rate, and the peak scale ``read_audio``
    applied."""

    wave: torch.Tensor | None
    length: int
    rate: int
    scale: float = 1.0


def validate_sources(sources: list[Any], labels: list[int], sample_rate: int, where: str, strict: bool,
                     cached: int = 0, warn: bool = True) -> Screened:
    """Decode every source once at ``sample_rate``; drop the ones ``read_audio`` rejects (see ``screen``).
    ``results`` holds an ``AudioInfo`` per file, with the decoded waveform (float32 [T]) kept while the total
    (``cached`` bytes already held elsewhere, plus these) fits in ``CACHE_BYTES``."""
    held = [cached]

    def read(src: Any) -> AudioInfo:
        wave, rate, scale = _decode(src, sample_rate)
        length = int(wave.shape[0])
        # First come, first kept: a fixed set stays resident (no LRU thrash when windows hop between files), and
        # the files beyond it cost one ranged read per window (``read_audio_range``), never a whole decode.
        if held[0] + length * 4 > CACHE_BYTES:
            return AudioInfo(None, length, rate, scale)
        held[0] += length * 4
        return AudioInfo(wave, length, rate, scale)

    return screen(sources, labels, read, where, "audio", strict, warn)


class AudioClipDataset(Dataset):
    """Decoded audio as fixed-length clips: ``(x float32 [clip_samples] in [-1, 1], label int64)``.

    The data is a list of segments ``(file, start, stop)`` (default: every whole file; a held-out tail split
    uses a head and a tail of each file). A segment no longer than a clip is one item, zero-padded: placed at
    a random offset in silence (train) or centred (test). A longer segment is several items:

    - training (``train=True``): ``max(1, round(length / clip))`` random windows per epoch, so windows are
      drawn in proportion to duration (audiocraft's segment sampling) and an epoch is about total duration /
      clip windows. Stratified rather than drawn file by file: window k of a file's n starts in the k-th n-th
      of its possible offsets, so each epoch sweeps every file end to end, and a one-window file draws its
      offset exactly as the one-window-per-file datasets always did. Item j of epoch e is drawn from a
      generator seeded by (seed, e, j): the same ``seed`` gives the same windows; call ``set_epoch`` each
      epoch as with ``DistributedSampler``.
    - covering (``cover=True``; the default for test): the consecutive windows ``[k clip, (k + 1) clip)``,
      the last one ending at the segment's end (overlapping its neighbour rather than padding silence).
      ``score_span(j)`` says which samples of item j are new, so that evaluation scores each sample once.
    """

    def __init__(self, data: Screened, sample_rate: int, clip_samples: int, train: bool, seed: int = 0,
                 segments: list[tuple[int, int, int]] | None = None, cover: bool | None = None):
        self.data = data
        self.sources, self.labels, self.infos = data.sources, data.labels, data.results
        self.sample_rate, self.clip_samples, self.train, self.seed = sample_rate, clip_samples, train, seed
        self.segments = segments if segments is not None else [(i, 0, info.length) for i, info in enumerate(self.infos)]
        self.cover = (not train) if cover is None else cover
        self.epoch = 0
        clip, seg, a, b = clip_samples, [], [], []
        # Per item: the segment, and (covering) the window offset and first new sample, or (random) slot k of n.
        for s, (_, start, stop) in enumerate(self.segments):
            length = stop - start
            if length <= clip:
                seg += [s]
                a += [0]
                b += [1]
            elif self.cover:
                n = -(-length // clip)
                offsets = [min(k * clip, length - clip) for k in range(n)]
                seg += [s] * n
                a += offsets
                b += [k * clip - off for k, off in enumerate(offsets)]
            else:
                n = max(1, round(length / clip))
                seg += [s] * n
                a += list(range(n))
                b += [n] * n
        self._seg, self._a, self._b = (np.asarray(v, dtype=np.int64) for v in (seg, a, b))

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's train windows (reproducibly per epoch); no effect on covering windows."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._seg)

    @property
    def num_files(self) -> int:
        """Number of distinct files the segments come from."""
        return len({f for f, _, _ in self.segments})

    @property
    def total_samples(self) -> int:
        """Samples in all segments together (what a covering pass scores, for segments longer than a clip)."""
        return sum(stop - start for _, start, stop in self.segments)

    def covering(self) -> AudioClipDataset:
        """The same files as consecutive windows covering every segment (short segments placed as here)."""
        return AudioClipDataset(self.data, self.sample_rate, self.clip_samples, self.train, self.seed,
                                self.segments, cover=True)

    def waveform(self, i: int) -> torch.Tensor:
        """The whole decoded file i, float32 [T] in [-1, 1] at ``sample_rate``."""
        info = self.infos[i]
        return info.wave if info.wave is not None else self.read(i, 0, info.length)

    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) of file i, float32 [stop - start]: from the cache, or a ranged read."""
        info = self.infos[i]
        if info.wave is not None:
            return info.wave[start:stop]
        return read_audio_range(self.sources[i], start, stop, self.sample_rate, info.rate, info.scale)

    def window(self, j: int) -> tuple[int, int, int]:
        """(file, start, stop) of item j's samples in its file; stop - start < clip for a padded short segment."""
        s = int(self._seg[j])
        f, start, stop = self.segments[s]
        length, clip = stop - start, self.clip_samples
        if length <= clip:
            return f, start, stop
        if self.cover:
            off = int(self._a[j])
        else:
            off = stratified_offset([self.seed, self.epoch, j], int(self._a[j]), int(self._b[j]), length - clip)
        return f, start + off, start + off + clip

    def score_span(self, j: int) -> tuple[int, int, int]:
        """(group, lo, hi): item j's ``x[lo:hi]`` are the next samples of group ``group`` (a segment when
        covering, else the item itself), so concatenating the spans of consecutive items rebuilds each segment
        once. A whole file shorter than a clip scores its padded clip (as clip datasets always have); a short
        part of a file (a held-out tail) scores just its samples."""
        s = int(self._seg[j])
        f, start, stop = self.segments[s]
        length = stop - start
        if not self.cover:
            return j, 0, self.clip_samples
        if length > self.clip_samples:
            return s, int(self._b[j]), self.clip_samples
        if start == 0 and stop == self.infos[f].length:
            return s, 0, self.clip_samples
        offset = self._placement(j, self.clip_samples - length)
        return s, offset, offset + length

    def _placement(self, j: int, slack: int) -> int:
        """Where item j's short segment sits in its padded clip: seeded by (seed, epoch, j) for train, centred
        for test."""
        return random_placement([self.seed, self.epoch, j], slack) if self.train else slack // 2

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= j < len(self):
            raise IndexError(j)
        f, start, stop = self.window(j)
        wave = self.read(f, start, stop)
        slack = self.clip_samples - wave.shape[0]
        if slack > 0:  # a short segment, padded: random placement (train) or centred (test)
            wave = fit_clip(wave, self.clip_samples, self._placement(j, slack))
        return wave, torch.tensor(self.labels[f], dtype=torch.int64)


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train indices, test indices), at least one test item when n > 1."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def holds_out_tails(sources: list[Any], fraction: float, clip_samples: int, sample_rate: int) -> bool:
    """True when a folder without a test split should hold out the last ``fraction`` of every file rather
    than whole files: too few files for ``fraction`` of them to be one whole file (n x fraction < 1), and
    long enough that the median file's tail is at least one clip. Reads headers only (the median ignores one
    odd header among a few files)."""
    if not sources or len(sources) * fraction >= 1:
        return False
    secs = [t for t in (header_seconds(s) for s in sources) if t]
    return bool(secs) and fraction * float(np.median(secs)) * sample_rate >= clip_samples


def tail_segments(infos: list[AudioInfo], fraction: float) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(train segments, test segments): file i's first ``1 - fraction`` and its last ``fraction`` (each at
    least one sample; a one-sample file stays in train)."""
    train, test = [], []
    for i, info in enumerate(infos):
        n = info.length
        cut = n if n < 2 else min(n - 1, max(1, round(n * (1 - fraction))))
        train.append((i, 0, cut))
        if cut < n:
            test.append((i, cut, n))
    return train, test


def make_audio_splits(train: tuple[list[Any], list[int]], test: tuple[list[Any], list[int]],
                      class_names: list[str], spec: DataSpec, where: str, tails: bool = False) -> Splits:
    """(sources, labels) of each split -> ``Splits`` of ``AudioClipDataset``s: ``spec.limit`` keeps a seeded
    subset of train, every file is validated once, and one warning covers both splits' skips. ``tails``:
    ``test`` is ignored and the last ``spec.test_fraction`` of every training file is held out instead."""
    if spec.clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
    tr_src, tr_lab = train
    if spec.limit:
        # A seeded subset, not the first N (sorted folders would give one class).
        keep = np.sort(np.random.default_rng(spec.seed).permutation(len(tr_src))[:spec.limit])
        tr_src, tr_lab = [tr_src[i] for i in keep], [tr_lab[i] for i in keep]
    if spec.rate_from_data:
        spec = follow_data_rate(spec, tr_src, where)
    tr = validate_sources(tr_src, tr_lab, spec.sample_rate, f"{where} [train]", spec.strict, warn=False)
    kw = {"sample_rate": spec.sample_rate, "clip_samples": spec.clip_samples, "seed": spec.seed}
    if tails:
        warn_skipped(tr.bad, where, "audio")
        tr_segs, te_segs = tail_segments(tr.results, spec.test_fraction)
        log.info("%s: %d file(s), too few to hold out whole ones: the last %.0f%% of each is the test split",
                 where, len(tr.sources), 100 * spec.test_fraction)
        train_set = AudioClipDataset(tr, train=True, segments=tr_segs, **kw)
        test_set = AudioClipDataset(tr, train=False, segments=te_segs, **kw)
    else:
        held = sum(r.length * 4 for r in tr.results if r.wave is not None)
        te = validate_sources(test[0], test[1], spec.sample_rate, f"{where} [test]", spec.strict, held, warn=False)
        warn_skipped(tr.bad + te.bad, where, "audio")  # one warning per dataset, not per split
        train_set, test_set = AudioClipDataset(tr, train=True, **kw), AudioClipDataset(te, train=False, **kw)
    return Splits(
        train=train_set, test=test_set,
        modality="audio", num_classes=len(class_names), class_names=class_names,
        input_shape=(spec.clip_samples,), sample_rate=spec.sample_rate,
    )
