"""Pictures the pipeline writes: spectrogram layout, labels, and that a tone lands at its frequency."""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio

from pipelines.outputs import spectrogram_image


def tone(freq: float, seconds: float = 1.0, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_spectrogram_layout_labels_and_tone_position():
    sr, scale = 16000, 2
    waves = [tone(500.0), tone(3000.0), tone(500.0), torch.zeros(16000)]
    img = spectrogram_image(waves, sr, labels=["a", "b", "c", "d"], ncol=2, scale=scale)
    # 1 s at a 4 ms hop = 251 frames; 80 mel bands; 14 px label strip; 6 px gaps; 2 x 2 tiles
    tw, th = 251 * scale, 80 * scale
    assert img.size == (2 * tw + 6, 2 * (th + 14) + 6)
    arr = np.asarray(img).astype(int)
    # the label strip is white with dark text in it
    strip = arr[:14, :tw]
    assert (strip == 255).all(axis=-1).mean() > 0.8 and (strip.sum(-1) < 200).any()
    # brightness (sum of RGB: the colour ramp rises in brightness) per row of the first two tiles
    mel_hz = torchaudio.functional.melscale_fbanks(257, 0.0, sr / 2, 80, sr).argmax(0) * (sr / 2) / 256
    for k, freq in enumerate([500.0, 3000.0]):
        tile = arr[14:14 + th, k * (tw + 6):k * (tw + 6) + tw].sum(-1)
        band = 79 - tile.mean(1).argmax() // scale  # image row 0 is the top (highest band)
        assert abs(float(mel_hz[band]) - freq) / freq < 0.15, (freq, float(mel_hz[band]))
    # silence is the bottom of the colour scale everywhere
    row1 = (th + 14 + 6) + 14  # second row of tiles, below its label strip
    silent = arr[row1:row1 + th, tw + 6:]
    assert (silent == np.array([68, 1, 84])).all(axis=-1).mean() > 0.99


def test_long_clips_get_a_bounded_width():
    img = spectrogram_image([torch.zeros(16000 * 60)], 16000, scale=1, max_frames=600)
    assert 550 <= img.width <= 620
