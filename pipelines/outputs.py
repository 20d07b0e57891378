"""Writing what the pipeline makes: PNG grids, WAV clips, spectrogram pictures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from PIL import Image


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """float [C, H, W] in [0, 1] -> uint8 [H, W] (C=1) or [H, W, 3]."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def save_image(x: torch.Tensor, path: str | Path) -> None:
    """One image float [C, H, W] in [0, 1] to a PNG."""
    Image.fromarray(to_uint8_image(x)).save(path)


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """images float [N, C, H, W] in [0, 1] -> one PIL image with ``nrow`` images per row, ``pad`` px gaps."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i].cpu()
    img = Image.fromarray(to_uint8_image(canvas))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_wav(wave: torch.Tensor, path: str | Path, sample_rate: int) -> None:
    """float [T] in [-1, 1] -> 16-bit PCM WAV at ``sample_rate``."""
    sf.write(str(path), wave.detach().float().clamp(-1, 1).cpu().numpy(), sample_rate, subtype="PCM_16")


def _viridis_like(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 [H, W, 3]: a simple dark-blue -> yellow colour ramp."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = v * (len(stops) - 1)
    i = np.clip(pos.astype(int), 0, len(stops) - 2)
    f = (pos - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def spectrogram_image(waves: list[torch.Tensor], sample_rate: int, titles_height: int = 0, scale: int = 2) -> Image.Image:
    """Log-mel spectrograms of several waveforms float [T], side by side (shared colour scale), as a PIL
    image: time left to right, low frequencies at the bottom."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80)
    specs = [torch.log10(mel(w.float().cpu()) + 1e-5) for w in waves]
    lo = min(s.min().item() for s in specs)
    hi = max(s.max().item() for s in specs)
    lo = max(lo, hi - 5.0)  # show a 50 dB range
    tiles = []
    for s in specs:
        v = ((s.clamp(min=lo) - lo) / max(hi - lo, 1e-6)).numpy()[::-1]
        tiles.append(_viridis_like(v))
        tiles.append(np.full((v.shape[0], 4, 3), 255, dtype=np.uint8))
    img = Image.fromarray(np.concatenate(tiles[:-1], axis=1))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
