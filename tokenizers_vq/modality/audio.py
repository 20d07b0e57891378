"""Audio: mono waveforms float32 [T] in [-1, 1] at a sample rate, batches [B, T]; token grids (t,).

The one place audio files are decoded (``decode_audio``: the data layer's ``read_audio`` adds its limits and
error type; ``AUDIO.read`` uses it as it is) and written (``save_wav``), and the spectrogram pictures that
preview them.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF
from PIL import Image
from torch import Tensor

from ..config import DEFAULT_CLIP_SAMPLES, DEFAULT_SAMPLE_RATE, MU_LAW_CHANNELS
from ..metrics import log_mel_l1, si_snr, stoi
from ..mulaw import mu_law_decode, mu_law_encode
from .base import Modality

log = logging.getLogger("vqgen.data")  # the data layer's logger: its reads log here too (resampling, peaks)

DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, EOFError, ValueError)  # what libsndfile raises


class AudioFileError(ValueError):
    """An audio file that cannot be turned into a waveform; the message names it and the fix."""


# ---------------------------------------------------------------------------- reading
def wav_truncated(head: bytes, total_size: int) -> bool:
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


def decode_error(name: str, e: Exception, error: type[Exception] = AudioFileError) -> Exception:
    """The error for a file libsndfile cannot decode, naming it and the formats it can."""
    return error(f"{name}: cannot decode audio ({e}); supported formats are those of libsndfile "
                 "(WAV, FLAC, OGG/Vorbis, MP3, AIFF): convert the file or remove it")


def decode_audio(source: str | os.PathLike | bytes | bytearray | io.BytesIO, target_rate: int | None = None, *,
                 name: str | None = None, check_header: Callable[[int, int, int], None] | None = None,
                 error: type[Exception] = AudioFileError) -> tuple[Tensor, int, float]:
    """Decode one audio file (a path, its encoded bytes, or a seekable ``BytesIO``) to
    ``(mono waveform float32 [T] at target_rate in [-1, 1], the file's own rate, the peak scale applied)``.

    Channels are averaged; another rate is resampled with ``torchaudio.functional.resample`` (logged at INFO); a
    waveform whose peak exceeds 1 (float files, resampling overshoot) is scaled to peak 1 (the scale returned is
    1 / peak, else 1). ``check_header(rate, frames, channels)`` runs on the header before anything is decoded (the
    data layer's limits). Raises ``error`` (default ``AudioFileError``) naming the file (``name``, default the
    path) for a missing, empty, truncated, undecodable, 0-sample or non-finite file.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, io.BytesIO):
        name = name or "<bytes>"
        data = source.getvalue()
        total, head, fileobj = len(data), data[:65536], source
    else:
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise error(f"{name}: no such file")
        total = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(65536)
        fileobj = str(path)
    if total == 0:
        raise error(f"{name}: the file is empty (0 bytes); delete it or replace it with a good copy")
    if wav_truncated(head, total):
        raise error(f"{name}: WAV file is truncated (its header declares more samples than it holds); "
                    "re-copy or re-export it")
    try:
        sound = sf.SoundFile(fileobj)  # reads the header only
    except DECODE_ERRORS as e:
        raise decode_error(name, e, error) from e
    with sound:
        rate = int(sound.samplerate)
        if check_header is not None:
            check_header(rate, sound.frames, sound.channels)
        try:
            arr = sound.read(dtype="float32", always_2d=True)
        except DECODE_ERRORS as e:
            raise decode_error(name, e, error) from e
    if arr.shape[0] == 0:
        raise error(f"{name}: the audio has 0 samples; remove it")
    if not np.isfinite(arr).all():
        raise error(f"{name}: the audio contains NaN or infinite samples; re-export it or remove it")
    wave = torch.from_numpy(arr).mean(dim=1)  # (T,) mono mix-down
    if target_rate is not None and rate != target_rate:
        log.info("resampled %s from %d Hz to %d Hz", name, rate, target_rate)
        wave = AF.resample(wave, rate, target_rate)
        if wave.numel() == 0:
            raise error(f"{name}: too short to resample from {rate} Hz to {target_rate} Hz")
    peak = wave.abs().max().item()
    scale = 1.0
    if peak > 1.0:
        log.info("%s: peak %.3f exceeds 1, scaled to peak 1", name, peak)
        scale = 1.0 / peak
        wave = wave / peak
    return wave.contiguous(), rate, scale


# ---------------------------------------------------------------------------- writing and pictures
def save_wav(wave: Tensor, path: str | Path, sample_rate: int) -> None:
    """float [T] in [-1, 1] -> 16-bit PCM WAV at ``sample_rate``."""
    sf.write(str(path), wave.detach().float().clamp(-1, 1).cpu().numpy(), sample_rate, subtype="PCM_16")


def _viridis_like(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 [H, W, 3]: a simple dark-blue -> yellow colour ramp."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = v * (len(stops) - 1)
    i = np.clip(pos.astype(int), 0, len(stops) - 2)
    f = (pos - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def spectrogram_image(waves: list[Tensor], sample_rate: int, labels: list[str] | None = None,
                      ncol: int | None = None, scale: int = 2, max_frames: int = 600) -> Image.Image:
    """Log-mel spectrograms of waveforms float [T] in [-1, 1] as one PIL image: ``ncol`` tiles per row (default
    all in one row), a shared colour scale (50 dB range), time left to right, low frequencies at the bottom, and
    ``labels`` (one per wave) written above the tiles. The hop is 4 ms (64 samples at 16 kHz) for clips of up to
    ``max_frames`` frames and grows for longer ones, so a 60 s file still gives a tile ~``max_frames`` wide."""
    from PIL import ImageDraw

    longest = max(int(w.shape[-1]) for w in waves)
    hop = max(sample_rate // 250, math.ceil(longest / max_frames))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=max(512, 2 * hop), hop_length=hop, n_mels=80)
    specs = [torch.log10(mel(w.float().cpu()) + 1e-5) for w in waves]
    hi = max(s.max().item() for s in specs)
    lo = max(min(s.min().item() for s in specs), hi - 5.0)  # log10 power: 5 decades = 50 dB
    tiles = [Image.fromarray(_viridis_like(((s.clamp(min=lo) - lo) / max(hi - lo, 1e-6)).numpy()[::-1].copy()))
             for s in specs]
    tiles = [t.resize((t.width * scale, t.height * scale), Image.Resampling.NEAREST) for t in tiles]
    ncol = ncol or len(tiles)
    label_h, gap = (14 if labels else 0), 6
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = math.ceil(len(tiles) / ncol)
    canvas = Image.new("RGB", (ncol * (tw + gap) - gap, rows * (th + label_h + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        x, y = c * (tw + gap), r * (th + label_h + gap)
        if labels:
            draw.text((x + 2, y + 1), labels[i], fill=(0, 0, 0))
        canvas.paste(t, (x, y + label_h))
    return canvas


PREVIEW_CLIPS = 8  # spectrogram pictures show at most this many clips (pairs), so they stay readable


# ---------------------------------------------------------------------------- the modality
class AudioModality(Modality):
    """Mono audio: float32 [T] in [-1, 1] at a sample rate; tokens (t,) = (T/d,) (plus a codebook axis)."""

    name = "audio"
    timed = True
    input_ndim = 1
    grid_ndim = 1
    value_range = (-1.0, 1.0)
    range_hint = "peak-normalise the audio"
    batch_layout = "a waveform [B, T]"
    noun = "a waveform"
    file_suffix = ".wav"
    size_fields = ("sample_rate", "clip_samples")
    default_sizes = {"sample_rate": DEFAULT_SAMPLE_RATE, "clip_samples": DEFAULT_CLIP_SAMPLES}
    raw_levels = (MU_LAW_CHANNELS,)
    eval_batch_size = 16  # clips are long: a smaller batch keeps evaluation's memory in check
    downsample_axes = "in time"
    # One piece: chunking is a Python loop over a data-dependent number of windows, which a graph cannot hold.
    trace_kwargs = {"chunk_tokens": 0}

    # ------------------------------------------------------------------ shapes
    default_autoencoder = "spectral"  # the codec that works for speech (the mu-law heads by --audio-head)

    def autoencoder_for(self, given: Mapping[str, Any]) -> str:
        """The mu-law family when a mu-law head is named (``audio_head="logistic"`` / ``"categorical"``), else the
        spectral codec (``audio_head="istft"`` is its format-1 name)."""
        return "mulaw" if given.get("audio_head", "istft") != "istft" else self.default_autoencoder

    def check_config(self, config: Any) -> None:
        if config.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {config.sample_rate}")
    def input_shape(self, sizes: Any = None) -> tuple[int, ...]:
        return (self._size(sizes, "clip_samples"),)

    def sizes(self, input_shape: Sequence[int], sample_rate: int | None = None) -> dict[str, int]:
        return {"sample_rate": sample_rate, "clip_samples": int(input_shape[0])}

    # ------------------------------------------------------------------ checks
    def _check_layout(self, x: Tensor, input_shape: Sequence[int], who: str, downsample: int | None) -> None:
        if x.dim() != 2:
            raise ValueError(f"{self.name} {who} expects {self.batch_layout}, got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{self.name} {who} got a 0-length clip")

    # ------------------------------------------------------------------ raw mu-law samples
    def _check_levels(self, levels: int) -> None:
        if levels != MU_LAW_CHANNELS:
            raise ValueError(f"raw audio is quantized with {MU_LAW_CHANNELS}-level (8-bit) mu-law; got "
                             f"levels={levels} (use --levels {MU_LAW_CHANNELS}, or drop --levels)")

    def check_raw(self, levels: int, input_shape: tuple[int, ...], sample_rate: int | None) -> int | None:
        self._check_levels(levels)
        if len(input_shape) != 1 or not sample_rate or sample_rate <= 0:
            raise ValueError(f"raw audio needs input_shape (T,) and a positive sample_rate, got {input_shape}, "
                             f"{sample_rate}")
        return sample_rate

    def raw_token_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(T,) -> (T,): one mu-law code per sample."""
        return (tuple(input_shape)[-1],)

    def quantize_raw(self, x: Tensor, levels: int) -> Tensor:
        """x float [T] or [B, T] in [-1, 1] -> int64 mu-law codes [T] or [B, T] in [0, 256) (``levels`` 256)."""
        self._check_levels(levels)
        if x.dim() not in (1, 2):
            raise ValueError(f"raw audio must be [T] or [B, T], got shape {tuple(x.shape)}")
        return mu_law_encode(x, MU_LAW_CHANNELS)

    def dequantize_raw(self, grid: Tensor, levels: int, input_shape: tuple[int, ...]) -> Tensor:
        """int mu-law codes [B, T] -> float32 [B, T] in [-1, 1]."""
        return mu_law_decode(grid.reshape(grid.shape[0], -1), MU_LAW_CHANNELS).reshape(grid.shape[0], -1)

    def raw_input_shape(self, tokens: Tensor, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tokens.dim() != 2:
            raise ValueError(f"raw audio tokens must be [B, T], got {tuple(tokens.shape)}")
        return (tokens.shape[1],)

    def raw_description(self, levels: int, input_shape: tuple[int, ...], sample_rate: int | None) -> str:
        return f"8-bit mu-law samples at {sample_rate} Hz"

    # ------------------------------------------------------------------ metrics
    def recon_metrics(self, recon: Tensor, x: Tensor, sample_rate: int | None = None) -> dict[str, float]:
        """SI-SNR (dB) and log-mel L1 (nats) of waveforms [B, T] at ``sample_rate``."""
        return {"si_snr": si_snr(recon, x).mean().item(), "log_mel_l1": log_mel_l1(recon, x, sample_rate).item()}

    def split_metrics(self, reconstructions: Callable[[], tuple[Tensor, Tensor]],
                      sample_rate: int | None = None) -> dict[str, float]:
        """``stoi`` of the split's clips joined end to end (``metrics.stoi``); nothing without pystoi."""
        try:
            import pystoi  # noqa: F401
        except ImportError:  # it is in the dev and bench extras: no need to reconstruct the split without it
            return {}
        est, ref = reconstructions()
        score = stoi(est, ref, sample_rate)
        return {} if score is None else {"stoi": score}

    def rate(self, codec: Any, n_quantizers: int) -> tuple[str, float]:
        """``kbps``: kbit/s of a fixed-length code."""
        return "kbps", codec.bitrate_at(n_quantizers) / 1000

    # ------------------------------------------------------------------ files and previews
    def read(self, source: Any, input_shape: Sequence[int], sample_rate: int | None = None) -> Tensor:
        """An audio file -> its whole mono waveform float32 [T] in [-1, 1] at ``sample_rate`` (``decode_audio``;
        any length: ``pack`` cuts it into clips)."""
        return decode_audio(source, sample_rate)[0]

    def write(self, x: Tensor, path: str | Path, sample_rate: int | None = None) -> None:
        """float [T] in [-1, 1] -> a 16-bit PCM WAV at ``sample_rate``."""
        save_wav(x, path, int(sample_rate))

    def pack(self, items: Sequence[Tensor], input_shape: tuple[int, ...], sample_rate: int | None = None
             ) -> tuple[Tensor, dict[str, Any]]:
        """Each waveform cut into clips of ``input_shape`` = (T,) samples, the last one zero-padded:
        float32 [N, T], and each file's sample count and clip count (and the rate) to trim and join them."""
        clip = input_shape[0]
        clips, samples, counts = [], [], []
        for wave in items:
            k = max(1, math.ceil(len(wave) / clip))
            clips.append(torch.nn.functional.pad(wave, (0, k * clip - len(wave))).reshape(k, clip))
            samples.append(len(wave))
            counts.append(k)
        return torch.cat(clips), {"samples": samples, "clips": counts, "sample_rate": sample_rate}

    def unpack(self, x: Tensor, record: Mapping[str, Any]) -> list[Tensor]:
        """Each file's clips joined and trimmed to its sample count."""
        waves, start = [], 0
        for k, n in zip(record["clips"], record["samples"]):
            waves.append(x[start: start + k].reshape(-1)[:n])
            start += k
        return waves

    def duration(self, record: Mapping[str, Any]) -> float | None:
        return sum(record["samples"]) / record["sample_rate"]

    def preview_path(self, folder: str | Path, stem: str) -> Path:
        return Path(folder) / stem

    def write_reconstructions(self, x: Tensor, recon: Tensor, out: str | Path, sample_rate: int | None = None
                              ) -> Path:
        """The folder ``out``: ``NN_original.wav`` / ``NN_reconstruction.wav`` pairs and ``spectrograms.png``
        (each pair side by side, one pair per row, the first ``PREVIEW_CLIPS`` pairs)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for k in range(len(x)):
            save_wav(x[k], out / f"{k:02d}_original.wav", sample_rate)
            save_wav(recon[k], out / f"{k:02d}_reconstruction.wav", sample_rate)
        # Pairs side by side, one clip per row; a few rows so the picture stays readable (all WAVs are written).
        shown = min(len(x), PREVIEW_CLIPS)
        waves = [w for k in range(shown) for w in (x[k], recon[k])]
        labels = [f"{k:02d} {kind}" for k in range(shown) for kind in ("original", "reconstruction")]
        spectrogram_image(waves, sample_rate, labels=labels, ncol=2).save(out / "spectrograms.png")
        return out

    def write_preview(self, x: Tensor, folder: str | Path, sample_rate: int | None = None,
                      labels: Sequence[str] | None = None) -> Path:
        """``spectrograms.png``: the first ``PREVIEW_CLIPS`` clips, two per row, under their ``labels``."""
        path = Path(folder) / "spectrograms.png"
        shown = min(len(x), PREVIEW_CLIPS)
        spectrogram_image([x[i] for i in range(shown)], sample_rate,
                          labels=list(labels[:shown]) if labels is not None else None, ncol=2).save(path)
        return path

    # ------------------------------------------------------------------ model card
    def card_io(self, config: Any, token_shape: tuple[int, ...], input_shape: tuple[int, ...],
                vocab_size: int) -> dict[str, str]:
        d = config.downsample
        q = "".join(f", {n}" for n in token_shape[self.grid_ndim:])  # trailing codebook axes
        return {
            "x": f"float32 [B, T] in [-1, 1] at {config.sample_rate} Hz, T any multiple of {d} (the hop)",
            "x_torch": f"float32 [B, T] in [-1, 1] at {config.sample_rate} Hz, T a multiple of {d}",
            "tokens": f"int64 [B, T / {d}{q}] in [0, {vocab_size})",
            "recon": "float32 [B, T] in [-1, 1]",
        }

    def card_example(self, config: Any, input_shape: tuple[int, ...], numpy: bool) -> list[str]:
        sr, hop = config.sample_rate, config.downsample
        lib = "np" if numpy else "torch"
        return [
            f"sr, hop = {sr}, {hop}  # the sample rate (Hz) and the samples per token",
            f"t = {lib}.arange(sr) / sr  # 1 s; use your own mono waveform, resampled to {sr} Hz",
            f"wave = (0.5 * {lib}.sin(2 * {lib}.pi * 440 * t)).astype(np.float32)" if numpy
            else f"wave = 0.5 * {lib}.sin(2 * {lib}.pi * 440 * t)",
            # -len % hop zeros make T a multiple of the hop, as both encoders require.
            "x = np.pad(wave, (0, -len(wave) % hop))[None]  # [1, T]; pad to a multiple of the hop" if numpy
            else "x = torch.nn.functional.pad(wave, (0, -len(wave) % hop))[None]  # [1, T]; pad to a multiple of the hop",
        ]

    def card_rows(self, config: Any) -> list[str]:
        return [
            f"| sample rate | {config.sample_rate} Hz |",
            f"| hop | {config.downsample} samples per token "
            f"({config.sample_rate / config.downsample:g} tokens per second) |",
        ]

    card_torch_note = ("; long clips are encoded in overlapping chunks with bounded memory (the tokens equal a "
                       "one-piece encode).")
    card_onnx_notes = (
        "Mu-law companding happens inside `encoder.onnx`: feed the plain waveform. `decoder.onnx` returns the "
        "expected waveform under the decoder's predicted distribution, as `Tokenizer.decode` does. Long clips "
        "go through in one piece (memory grows with T), with the same tokens as the chunked PyTorch encoder.",
    )
    card_onnx_limits = " and T a multiple of the hop."

    # ------------------------------------------------------------------ ONNX export
    def example_input(self, input_shape: tuple[int, ...], downsample: int, generator: torch.Generator) -> Tensor:
        """float32 [2, T] uniform in [-1, 1] with T the training clip, and at least 2 tokens long (an axis of size
        1 would be specialised to a constant by torch.export)."""
        x = torch.rand((2, max(input_shape[0], 2 * downsample)), generator=generator)
        return x * 2 - 1

    def dynamic_axes(self, tokens: Tensor, downsample: int) -> tuple[dict[int, Any], dict[int, Any]]:
        """The batch and time (T = d * t, so only multiples of the hop trace); a codebook axis stays static."""
        batch = torch.export.Dim("batch")
        t = torch.export.Dim("t")
        if tokens.dim() < 2:
            raise ValueError(f"audio tokens must be [B, t, ...], the encoder gave shape {tuple(tokens.shape)}")
        return {0: batch, 1: downsample * t}, {0: batch, 1: t}


AUDIO = AudioModality()  # registered by the package, images first

__all__ = ["AUDIO", "DECODE_ERRORS", "AudioFileError", "AudioModality", "decode_audio", "decode_error",
           "save_wav", "spectrogram_image", "wav_truncated"]
