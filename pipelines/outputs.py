"""Writing what the pipeline makes: PNG grids, WAV clips, spectrogram pictures (the modalities' own writers, in
``tokenizers_vq.modality``, re-exported here), and histograms of scores."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tokenizers_vq.modality.audio import save_wav, spectrogram_image
from tokenizers_vq.modality.image import image_grid, save_image, to_uint8_image

__all__ = ["histogram_image", "image_grid", "save_image", "save_wav", "spectrogram_image", "to_uint8_image"]


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
