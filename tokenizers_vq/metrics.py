"""Reconstruction and codebook metrics.

SSIM is written here (a Gaussian-window SSIM, Wang et al. 2004) rather than pulled from torchmetrics or
scikit-image: it is a dozen lines and not worth a heavy dependency for one number.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, averaged over the batch. x, y: float [B, ...] in [0, data_range]."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(data_range**2 / mse)).mean()


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity over the batch. x, y: float [B, C, H, W] in [0, data_range]; result in [-1, 1].

    Gaussian window (7x7, sigma 1.5: small images need a window smaller than the usual 11), valid padding,
    constants K1=0.01, K2=0.03 as in Wang et al. 2004.
    """
    x, y = x.float(), y.float()
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


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
