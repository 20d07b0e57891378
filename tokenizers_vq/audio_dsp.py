"""Signal helpers both audio autoencoder families share: chunked processing of long inputs and the
multi-resolution spectral losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import _mel_transform


def chunked(fn: Callable[[int, int], Tensor], t: int, chunk: int, context: int, out_per_token: int) -> Tensor:
    """Run ``fn(lo, hi)`` (tokens [lo, hi) with context) on overlapping windows of a t-token sequence and stitch
    the centres: how both audio backbones bound memory on long inputs. fn returns [B, (hi - lo) * out_per_token(, q)];
    the context is cut off again."""
    pieces = []
    for a in range(0, t, chunk):
        b = min(a + chunk, t)
        lo, hi = max(0, a - context), min(t, b + context)
        pieces.append(fn(lo, hi)[:, (a - lo) * out_per_token:(b - lo) * out_per_token])
    return torch.cat(pieces, dim=1)


def multires_log_mel_l1(est: Tensor, ref: Tensor, sample_rate: int, ffts: list[int]) -> Tensor:
    """Log-mel L1 (nats) averaged over the FFT sizes ``ffts`` that fit in T (reflect padding needs T > n_fft / 2).
    est, ref: float [B, T]. 0 when none fits. The mel half of ``multires_spectral_l1``."""
    return multires_spectral_l1(est, ref, sample_rate, ffts)[0]


def _log_spectra(x: Tensor, window: Tensor, fb: Tensor) -> tuple[Tensor, Tensor]:
    """x float [B, T] -> (log(|STFT| + 1e-5) [B, frames, bins], log(max(mel, 1e-5)) [B, frames, n_mels]); Hann
    ``window`` of n_fft samples, hop n_fft / 4, centred reflect padding (torch.stft's and torchaudio's framing)."""
    n_fft = window.shape[0]
    # torch.stft frames by an as_strided view whose backward is slow on CPU; unfold's is not.
    xp = F.pad(x.float()[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    s = torch.fft.rfft(xp.unfold(-1, n_fft, n_fft // 4) * window)
    mag = (s.real.square() + s.imag.square()).clamp_min(1e-20).sqrt()  # the floor keeps d/dx finite at 0
    return torch.log(mag + 1e-5), torch.log((mag @ fb).clamp_min(1e-5))


def multires_spectral_l1(est: Tensor, ref: Tensor, sample_rate: int, ffts: list[int]) -> tuple[Tensor, Tensor]:
    """(multi-resolution log-mel L1, multi-resolution log-STFT-magnitude L1) in nats, each a mean over the FFT
    sizes ``ffts`` that fit in T. est, ref: float [B, T].

    The values of torchaudio's ``MelSpectrogram`` (``metrics.log_mel_spectrogram``, ``n_mels = min(80, n_fft // 8)``,
    few enough that no mel band falls between two FFT bins) and of a ``torch.stft`` log-magnitude (Hann window,
    hop n_fft / 4, centred reflect padding), from one STFT per resolution instead of two, framed by ``unfold``,
    and without gradients through the reference: the spectral codec's losses were half of its training step.
    """
    mels, mags = [], []
    for n_fft in ffts:
        if n_fft // 2 >= est.shape[-1]:  # reflect padding needs T > n_fft / 2
            continue
        melt = _mel_transform(int(sample_rate), int(n_fft), n_fft // 4, min(80, n_fft // 8), est.device)
        win, fb = melt.spectrogram.window, melt.mel_scale.fb  # [n_fft], [bins, n_mels]
        log_mag, log_mel = _log_spectra(est, win, fb)
        with torch.no_grad():
            ref_mag, ref_mel = _log_spectra(ref, win, fb)
        mels.append((log_mel - ref_mel).abs().mean())
        mags.append((log_mag - ref_mag).abs().mean())
    if not mels:
        return est.new_zeros(()), est.new_zeros(())
    return torch.stack(mels).mean(), torch.stack(mags).mean()
