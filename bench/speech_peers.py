"""Classic speech codecs as peers for the vqgen audio tokenizers: Codec2 (8 kHz vocoder, 0.7-3.2 kbit/s) and
Opus (here at 6 kbit/s), through their command-line tools.

Each ``*_roundtrip`` takes a float waveform at any sample rate and returns the decoded waveform at the same
rate and length, time-aligned to the input, so that sample-by-sample and frame-by-frame metrics (STOI, a
classifier) compare like with like:

- Codec2 runs at 8 kHz: the clip is resampled to 8 kHz (a zero-phase sinc resampler, no delay), padded with
  silence to whole frames plus slack, coded with ``c2enc``/``c2dec``, and resampled back.
- Opus codes 16 kHz input natively; ``opusdec`` already drops the encoder's pre-skip, so its output starts
  at the input's first sample.
- What delay remains (Codec2's analysis/synthesis delay, 19.5-28 ms measured here; Opus ~0.5 ms) is removed as one
  constant per codec: ``best_delay`` picks, over many clips decoded with ``delay=0``, the lag in
  0-``MAX_DELAY_S`` that maximises a score (STOI in the bench), i.e. the alignment most in the codec's
  favour. Waveform cross-correlation is no use on a parametric vocoder (Codec2 does not keep the phase), and
  even amplitude-envelope cross-correlation (``estimate_delay``, used for a single clip with ``delay=None``)
  lands 5-10 ms away from STOI's peak on Codec2.

The tools come from Debian/Ubuntu packages: ``sudo apt-get install codec2 opus-tools``. A missing tool raises
``MissingTool`` with that command, and callers turn it into a skipped row.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

INSTALL = "sudo apt-get install codec2 opus-tools"
CODEC2_MODES = ("3200", "2400", "1300", "700C")
CODEC2_RATE = 8000  # Codec2 codes narrowband speech only
CODEC2_FRAME = 320  # samples at 8 kHz: the longest Codec2 frame (700C: 40 ms); padding to it suits every mode
MAX_DELAY_S = 0.06  # the largest codec delay searched for (measured: Codec2 19.5-28 ms, Opus ~0 after pre-skip)


class MissingTool(RuntimeError):
    """A codec's command-line tool is not installed (the message says how to install it)."""


def require(tool: str) -> str:
    """The path of ``tool`` on PATH, or ``MissingTool`` naming the Debian/Ubuntu install command."""
    exe = shutil.which(tool)
    if exe is None:
        raise MissingTool(f"{tool} is not installed: install it with `{INSTALL}` (Debian/Ubuntu)")
    return exe


def codec2_kbps(mode: str) -> float:
    """The fixed bitrate of a Codec2 mode name ('3200', '1300', '700C', ...) in kbit/s."""
    return int(re.match(r"\d+", mode).group()) / 1000.0


def _as_tensor(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(wave, dtype=torch.float32).reshape(-1)


def _to_int16(w: torch.Tensor) -> np.ndarray:
    return (w.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res


def _envelope(w: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """|w| smoothed by a 1 ms moving average, mean removed: float [B, T] -> [B, T]."""
    k = max(1, sample_rate // 1000)
    env = torch.nn.functional.avg_pool1d(w.abs()[:, None], k, 1, padding=k // 2, count_include_pad=False)[:, 0, : w.shape[1]]
    return env - env.mean(1, keepdim=True)


def estimate_delay(out: torch.Tensor, ref: torch.Tensor, sample_rate: int, max_delay_s: float = MAX_DELAY_S) -> int:
    """Samples by which ``out`` lags ``ref``, in [0, max_delay_s * sample_rate].

    out, ref: float [T] or [B, T] (same shape) at ``sample_rate``. The lag maximising the cross-correlation of
    the amplitude envelopes (``_envelope``), summed over the batch: pass every clip a codec coded to get
    its one, constant delay (per clip the peak wanders by +-10 ms on a vocoder, which has no phase to lock to).
    """
    if out.shape != ref.shape:
        raise ValueError(f"estimate_delay: out {tuple(out.shape)} and ref {tuple(ref.shape)} differ")
    a, b = _envelope(out.reshape(-1, out.shape[-1]).float(), sample_rate), _envelope(ref.reshape(-1, ref.shape[-1]).float(), sample_rate)
    n = 2 * a.shape[1]
    corr = torch.fft.irfft(torch.fft.rfft(a, n) * torch.fft.rfft(b, n).conj(), n).sum(0)  # corr[lag] = sum a[t+lag] b[t]
    return int(corr[: int(max_delay_s * sample_rate) + 1].argmax())


def advance(out: torch.Tensor, delay: int) -> torch.Tensor:
    """``out`` (float [..., T]) moved ``delay`` samples earlier, zero-filled at the end: the same shape."""
    if delay == 0:
        return out
    return torch.cat([out[..., delay:], out.new_zeros(*out.shape[:-1], delay)], dim=-1)


def _align(out: torch.Tensor, ref: torch.Tensor, sample_rate: int, delay: int | None) -> tuple[torch.Tensor, int]:
    """``out`` cut or zero-padded to ``ref``'s length [T] after removing ``delay`` samples (None: estimated
    from this clip alone); and the delay removed."""
    t = ref.shape[0]
    if delay is None:
        padded = torch.cat([out, out.new_zeros(max(0, t - out.shape[0]))])[: max(t, out.shape[0])]
        delay = estimate_delay(padded[:t], ref, sample_rate)
    y = out[delay:delay + t]
    return torch.cat([y, y.new_zeros(t - y.shape[0])]), delay


def codec2_roundtrip(wave: np.ndarray | torch.Tensor, sr: int, mode: str = "1300", delay: int | None = None,
                     return_delay: bool = False) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Code a clip with Codec2 and decode it again.

    wave: float [T] in [-1, 1] at ``sr`` Hz; mode: one of ``CODEC2_MODES`` (bit/s, '700C' = 700 bit/s).
    delay: samples at ``sr`` to remove from the decoder's output (0: as decoded; None: estimated from this
    clip alone, see ``estimate_delay``: for many clips, decode with 0 and estimate once over all of them).
    Returns float32 [T] at ``sr`` (band-limited to 4 kHz); with ``return_delay`` also the delay removed.
    ``MissingTool`` when c2enc/c2dec are not installed.
    """
    enc, dec = require("c2enc"), require("c2dec")
    x = _as_tensor(wave)
    x8 = AF.resample(x, sr, CODEC2_RATE) if sr != CODEC2_RATE else x
    # Whole frames, plus slack after the clip so the codec's delay does not cut off its end.
    slack = int(MAX_DELAY_S * CODEC2_RATE) + CODEC2_FRAME
    n = -(-(x8.shape[0] + slack) // CODEC2_FRAME) * CODEC2_FRAME
    x8 = torch.cat([x8, x8.new_zeros(n - x8.shape[0])])
    with tempfile.TemporaryDirectory(prefix="codec2-") as tmp:
        raw, bits, back = Path(tmp) / "in.raw", Path(tmp) / "out.bit", Path(tmp) / "out.raw"
        _to_int16(x8).tofile(raw)
        _run([enc, mode, str(raw), str(bits)])
        _run([dec, mode, str(bits), str(back)])
        y8 = torch.from_numpy(np.fromfile(back, dtype=np.int16).astype(np.float32) / 32768.0)
    y = AF.resample(y8, CODEC2_RATE, sr) if sr != CODEC2_RATE else y8
    y, delay = _align(y, x, sr, delay)
    return (y, delay) if return_delay else y


def opus_roundtrip(wave: np.ndarray | torch.Tensor, sr: int, kbps: float = 6.0, delay: int | None = None,
                   return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
    """Code a clip with Opus (``opusenc --bitrate kbps``, its default VBR, speech auto-detected) and decode it.

    wave: float [T] in [-1, 1] at ``sr`` Hz (Opus takes 8, 12, 16, 24 or 48 kHz natively; other rates are
    resampled by opusenc); kbps: target bitrate (opusenc accepts 6-256); delay: as for ``codec2_roundtrip``.
    Returns float32 [T] at ``sr``; with ``return_stats`` also ``{"delay": samples, "kbps": the payload bitrate opusenc
    reports, without the Ogg container}``. ``MissingTool`` when opusenc/opusdec are not installed.
    """
    enc, dec = require("opusenc"), require("opusdec")
    x = _as_tensor(wave)
    with tempfile.TemporaryDirectory(prefix="opus-") as tmp:
        raw, coded, back = Path(tmp) / "in.raw", Path(tmp) / "out.opus", Path(tmp) / "out.raw"
        _to_int16(x).tofile(raw)
        res = _run([enc, "--bitrate", f"{kbps:g}", "--raw", "--raw-rate", str(sr), "--raw-chan", "1", "--raw-bits", "16",
                    str(raw), str(coded)])
        _run([dec, "--quiet", "--rate", str(sr), str(coded), str(back)])
        y = torch.from_numpy(np.fromfile(back, dtype=np.int16).astype(np.float32) / 32768.0)
    m = re.search(r"Bitrate:\s*([\d.]+)\s*kbit/s", res.stderr + res.stdout)
    y, delay = _align(y, x, sr, delay)
    stats = {"delay": float(delay), "kbps": float(m.group(1)) if m else float("nan")}
    return (y, stats) if return_stats else y


def best_delay(out: torch.Tensor, ref: torch.Tensor, score, sample_rate: int, max_delay_s: float = MAX_DELAY_S,
               step_s: float = 0.004) -> int:
    """The delay (samples, in [0, max_delay_s * sample_rate]) that maximises ``score(advance(out, d), ref)``.

    out, ref: float [B, T] (every clip a codec decoded with ``delay=0``, and the originals); score: e.g.
    STOI, higher is better. A grid of ``step_s`` over the range, then every 0.5 ms within one step of the
    best. One delay per codec (its algorithmic delay is a constant), chosen in the codec's favour: envelope
    cross-correlation (``estimate_delay``) lands 5-10 ms off STOI's peak on Codec2, whose output keeps the
    spectral envelope but not the waveform.
    """
    step, fine = max(1, int(step_s * sample_rate)), max(1, sample_rate // 2000)
    cache: dict[int, float] = {}

    def f(d: int) -> float:
        if d not in cache:
            cache[d] = float(score(advance(out, d), ref))
        return cache[d]

    top = int(max_delay_s * sample_rate)
    d0 = max(range(0, top + 1, step), key=f)
    return max(range(max(0, d0 - step), min(top, d0 + step) + 1, fine), key=f)
