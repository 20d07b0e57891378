"""Reconstruction and codebook metrics.

SSIM is written here (a Gaussian-window SSIM, Wang et al. 2004) rather than pulled from torchmetrics or
scikit-image: it is a dozen lines and not worth a heavy dependency for one number.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, averaged over the batch. x, y: float [B, ...] in [0, data_range]."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(data_range**2 / mse)).mean()


def _gaussian_blur(x: Tensor, size: int, sigma: float) -> Tensor:
    """Valid-padded separable Gaussian blur of every channel of x [B, C, H, W] (two 1-D passes: 2k taps instead
    of k^2, and one grouped convolution each for all channels)."""
    coords = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def _ssim_parts(x: Tensor, y: Tensor, data_range: float, window: int, sigma: float) -> tuple[Tensor, Tensor]:
    """Per-image SSIM and its contrast-structure term, float [B] each (Gaussian window, valid padding)."""
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # the five local moments in one blur: x, y, x^2, y^2, xy
    mu_x, mu_y, exx, eyy, exy = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], 1), window, sigma).split(c, 1)
    sxx, syy, sxy = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity over the batch. x, y: float [B, C, H, W] in [0, data_range]; result in [-1, 1].

    Gaussian window (7x7, sigma 1.5: small images need a window smaller than the usual 11), valid padding,
    constants K1=0.01, K2=0.03 as in Wang et al. 2004.
    """
    return _ssim_parts(x.float(), y.float(), data_range, window, sigma)[0].mean()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first


def ms_ssim_scales(height: int, width: int, window: int = 7) -> int:
    """How many of MS-SSIM's 5 scales an image of this size has room for: each scale halves the image, and the
    coarsest must be at least the window (64x64 with a 7x7 window: 4 scales; 32x32: 3; 256x256: 5)."""
    side, scales = min(height, width), 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= window:
        scales += 1
    return scales


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5,
            reduce: bool = True) -> Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), differentiable (a loss can use ``1 - ms_ssim``).
    x, y: float [B, C, H, W] in [0, data_range]; result in [0, 1]: the batch mean, or float [B] with
    ``reduce=False``. Images too small for the standard 5 scales use the scales that fit (``ms_ssim_scales``)
    with their weights renormalised. Written here rather than taken from ``pytorch_msssim``, which asserts room
    for all 5 scales (161 px with an 11x11 window, 97 px with 7x7): 64x64 crops would need a 3x3 window.
    Negative contrast terms are clamped at 0 before the weighted product, as in that library's practice."""
    x, y = x.float(), y.float()
    n = ms_ssim_scales(x.shape[-2], x.shape[-1], window)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:n], device=x.device)
    weights = weights / weights.sum()
    terms = []
    for i in range(n):
        full, cs = _ssim_parts(x, y, data_range, window, sigma)
        terms.append((full if i == n - 1 else cs).clamp_min(0))
        if i < n - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    out = torch.stack(terms, 0).pow(weights[:, None]).prod(0)
    return out.mean() if reduce else out


def code_histogram(codes: Tensor, vocab_size: int) -> Tensor:
    """Counts of each code. codes: int64 any shape in [0, vocab_size) -> int64 [vocab_size]."""
    return torch.bincount(codes.reshape(-1).cpu(), minlength=vocab_size)


def codebook_usage(counts: Tensor) -> float:
    """Fraction of codes used at least once, in [0, 1]."""
    return (counts > 0).float().mean().item()


def code_perplexity(counts: Tensor) -> float:
    """exp(entropy) of the empirical code distribution, in [1, vocab_size]."""
    p = counts.double() / counts.sum().clamp_min(1)
    ent = -(p[p > 0] * p[p > 0].log()).sum().item()
    return math.exp(ent)


# ---------------------------------------------------------------------------------------------- audio
# The audio metrics follow the speech-codec literature: SI-SNR (Le Roux et al. 2019, "SDR - half-baked or
# well done?") is blind to a global gain, log-mel L1 tracks what the ear hears better than waveform error
# (the spectral term of Kumar et al. 2019 / Défossez et al. 2022 §3.4), STOI (Taal et al. 2011) predicts
# intelligibility, and bitrate is what a codec paper reports next to them.


def si_snr(est: Tensor, ref: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant signal-to-noise ratio in dB, averaged over the batch.

    est, ref: float [B, T] (or [T]) waveforms. Both are made zero-mean, then ``ref`` is scaled by the
    least-squares gain onto ``est`` (Le Roux et al. 2019, eq. 2), so a louder or quieter copy scores the
    same. A silent reference gives a very negative number rather than NaN.
    """
    if est.shape != ref.shape:
        raise ValueError(f"si_snr: est and ref must have the same shape, got {tuple(est.shape)} and {tuple(ref.shape)}")
    est, ref = est.double().reshape(-1, est.shape[-1]), ref.double().reshape(-1, ref.shape[-1])
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    gain = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = gain * ref
    noise = est - target
    ratio = (target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio)).mean().float()


@functools.lru_cache(maxsize=32)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int, device: torch.device):
    import torchaudio

    # Built once per (resolution, device) and kept out of any state dict: the filterbank is derivable.
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=1.0,
        center=True, f_min=0.0, norm="slaney", mel_scale="slaney",
    ).to(device)


def log_mel_spectrogram(x: Tensor, sample_rate: int, n_fft: int = 1024, hop_length: int | None = None,
                        n_mels: int = 80, eps: float = 1e-5) -> Tensor:
    """Natural-log magnitude mel spectrogram, differentiable in ``x``.

    x: float [B, T] waveform -> float32 [B, n_mels, frames]. ``hop_length`` defaults to n_fft // 4;
    ``eps`` floors the magnitude so silence does not dominate the log.
    """
    hop = hop_length or n_fft // 4
    mel = _mel_transform(int(sample_rate), int(n_fft), int(hop), int(n_mels), x.device)
    return torch.log(mel(x.float()).clamp_min(eps))


def log_mel_l1(est: Tensor, ref: Tensor, sample_rate: int, n_fft: int = 1024, n_mels: int = 80) -> Tensor:
    """Mean absolute difference of log-mel spectrograms (nats), averaged over batch, bins and frames.

    est, ref: float [B, T] waveforms at ``sample_rate``. 0 for identical signals; a few nats for noise.
    """
    if est.shape != ref.shape:
        raise ValueError(f"log_mel_l1: est and ref must have the same shape, got {tuple(est.shape)} and {tuple(ref.shape)}")
    return (log_mel_spectrogram(est, sample_rate, n_fft, n_mels=n_mels)
            - log_mel_spectrogram(ref, sample_rate, n_fft, n_mels=n_mels)).abs().mean()


def mu_law_accuracy(logits_or_codes: Tensor, target: Tensor) -> Tensor:
    """Fraction of samples whose predicted mu-law class equals the target class, in [0, 1].

    logits_or_codes: float logits [B, Q, T] (class on dim 1, as for cross-entropy) or int codes [B, T];
    target: int64 codes [B, T] in [0, Q).
    """
    pred = logits_or_codes.argmax(1) if torch.is_floating_point(logits_or_codes) else logits_or_codes
    if pred.shape != target.shape:
        raise ValueError(f"mu_law_accuracy: predictions {tuple(pred.shape)} do not match targets {tuple(target.shape)}")
    return (pred == target).float().mean()


def bitrate_kbps(tokens_per_second: float, vocab_size: int) -> float:
    """Bitrate of a token stream in kbit/s when each token is coded with log2(vocab_size) bits.

    E.g. 250 tokens/s (16 kHz, downsample 64) x log2(1000) bits = 2.49 kbit/s. An entropy coder under a
    good prior does better; this is the fixed-length upper bound codec papers quote.
    """
    if vocab_size < 1 or tokens_per_second < 0:
        raise ValueError(f"bitrate_kbps: need vocab_size >= 1 and tokens_per_second >= 0, got {vocab_size}, {tokens_per_second}")
    return tokens_per_second * math.log2(vocab_size) / 1000.0


STOI_MIN_FRAMES = 30  # pystoi needs this many non-silent 25.6 ms frames (hop 12.8 ms: ~0.4 s of speech)


def stoi(est: Tensor, ref: Tensor, sample_rate: int, extended: bool = False) -> float | None:
    """Short-time objective intelligibility (Taal et al. 2011) via pystoi, of a batch of clips.

    est, ref: float [B, T] or [T] waveforms at ``sample_rate`` (ref is the clean original) -> a float in
    about [0, 1] (higher is more intelligible; 1 for identical signals), ``nan`` when the reference has fewer
    than ``STOI_MIN_FRAMES`` non-silent frames in all, or ``None`` when pystoi is not installed
    (``pip install pystoi``). The clips are joined end to end and scored as one signal: STOI is already a
    mean over 384 ms segments, so this is the segment-weighted mean over clips, and it lets short clips count
    (a single spoken digit is often under 0.4 s, for which pystoi alone returns a meaningless 1e-5).
    """
    try:
        from pystoi import stoi as _stoi
    except ImportError:
        return None
    if est.shape != ref.shape:
        raise ValueError(f"stoi: est and ref must have the same shape, got {tuple(est.shape)} and {tuple(ref.shape)}")
    e = est.detach().double().reshape(-1).cpu().numpy()
    r = ref.detach().double().reshape(-1).cpu().numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = float(_stoi(r, e, sample_rate, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return float("nan")  # pystoi's 1e-5 here would read as "unintelligible"; it means "too short to tell"
    return score
