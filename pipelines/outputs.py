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


def spectrogram_image(waves: list[torch.Tensor], sample_rate: int, labels: list[str] | None = None, ncol: int | None = None,
                      scale: int = 2, max_frames: int = 600) -> Image.Image:
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


def histogram_image(groups: dict[str, np.ndarray], title: str, bins: int = 40, size: tuple[int, int] = (480, 220)
                    ) -> Image.Image:
    """Overlaid histograms of score arrays (one colour per group, shared bins, each normalised to its own count)
    as a PIL image with a legend and the score range: what ``vqgen score --ood`` saves per score."""
    from PIL import ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    values = [np.asarray(v, dtype=np.float64) for v in groups.values()]
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    hists = [np.histogram(v, edges)[0] / max(1, len(v)) for v in values]
    top = max(float(h.max()) for h in hists) or 1.0
    w, h = size
    left, bottom, plot_top = 10, h - 30, 30
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    bar_w = (w - 2 * left) / bins
    for k, hist in enumerate(hists):
        c = colours[k % len(colours)]
        for i, v in enumerate(hist):
            if v <= 0:
                continue
            y = bottom - (bottom - plot_top) * v / top
            x0 = left + i * bar_w
            d.rectangle([x0 + k, y, x0 + bar_w - 1, bottom], outline=c)  # outlines so overlaps stay visible
    d.line([left, bottom, w - left, bottom], fill="black")
    d.text((left, 5), title, fill="black")
    d.text((left, bottom + 5), f"{lo:.4g}", fill="black")
    d.text((w - left - 60, bottom + 5), f"{hi:.4g}", fill="black")
    for k, name in enumerate(groups):
        d.text((w - 200, 5 + 12 * k), f"-- {name} (n={len(values[k])})", fill=colours[k % len(colours)])
    return img
