"""``RawCodec``: the raw data as its own token grid (binarised or 8-bit pixels, 8-bit mu-law samples).

A prior over raw pixels (PixelCNN on binarised MNIST) or raw mu-law samples (WaveNet) models the data
itself; ``RawCodec`` gives that grid the same ``Codec`` interface a learned tokenizer has, so every pipeline
stage treats the two alike. Encoding is exact at the codec's quantization: ``encode(decode(t)) == t``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqgen_io import atomic_write_text

from .codec import MODALITIES, Codec
from .config import MU_LAW_CHANNELS
from .mulaw import check_range, mu_law_decode, mu_law_encode

IMAGE_LEVELS = (2, 256)  # binarised (x >= 0.5) or 8-bit (round(255 x))


def quantize_raw(x: Tensor, levels: int = 256, modality: str | None = None) -> Tensor:
    """The raw-data grid a prior models directly: the single place for this logic.

    Images: x float [C, H, W] or [B, C, H, W] in [0, 1] -> int64 [H, W*C] or [B, H, W*C]. ``levels=2``
    binarises (1 where x >= 0.5); ``levels=256`` is round(x * 255) (round half to even). Channels are
    interleaved per pixel (R, G, B of one pixel are consecutive), so raster order over the grid is the
    PixelCNN order: pixel by pixel, channel by channel within a pixel (van den Oord et al. 2016, §2).
    Audio: x float [T] or [B, T] in [-1, 1] -> int64 mu-law codes [T] or [B, T] in [0, 256) (``levels``
    must be 256). ``modality`` defaults to "image" for 3-/4-D inputs and "audio" for 1-/2-D inputs.
    """
    modality = modality or ("image" if x.dim() in (3, 4) else "audio")
    if not torch.is_floating_point(x):
        raise ValueError(f"raw quantization expects a float tensor, got {x.dtype}; images must be scaled to [0, 1]")
    if modality == "audio":
        if levels != MU_LAW_CHANNELS:
            raise ValueError(f"raw audio is quantized with {MU_LAW_CHANNELS}-level mu-law; got levels={levels} "
                             f"(use --levels {MU_LAW_CHANNELS})")
        if x.dim() not in (1, 2):
            raise ValueError(f"raw audio must be [T] or [B, T], got shape {tuple(x.shape)}")
        return mu_law_encode(x, MU_LAW_CHANNELS)
    if modality != "image":
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if levels not in IMAGE_LEVELS:
        raise ValueError(f"raw images use levels 2 (binarised) or 256 (8-bit), got {levels}")
    if x.dim() not in (3, 4):
        raise ValueError(f"raw images must be [C, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
    check_range(x, 0.0, 1.0, "raw images", "scale 8-bit images by 1/255")
    q = (x >= 0.5).long() if levels == 2 else torch.round(x * 255).long()
    q = q.movedim(-3, -1)  # [..., H, W, C]: channels of a pixel adjacent in raster order
    return q.reshape(*q.shape[:-2], q.shape[-2] * q.shape[-1])


def dequantize_raw(grid: Tensor, levels: int, input_shape: tuple[int, ...]) -> Tensor:
    """Inverse of ``quantize_raw``: int grid [B, *grid_shape] -> float32 [B, *input_shape].

    Images (input_shape (C, H, W)): values in [0, 1] (levels 2: {0, 1}; 256: q / 255), and
    ``quantize_raw(dequantize_raw(q)) == q`` exactly. Audio (input_shape (T,)): mu-law decoded in [-1, 1].
    """
    if len(input_shape) == 1:
        return mu_law_decode(grid.reshape(grid.shape[0], -1), MU_LAW_CHANNELS).reshape(grid.shape[0], -1)
    c, h, w = input_shape
    x = grid.reshape(grid.shape[0], h, -1, c).movedim(-1, 1).float()
    return x if levels == 2 else x / 255.0


class RawCodec(Codec):
    """Raw pixels or mu-law samples as tokens. Images: float32 [B, C, H, W] in [0, 1] <-> int64 [B, H, W*C]
    with ``levels`` 2 or 256; audio: float32 [B, T] in [-1, 1] <-> int64 mu-law codes [B, T] in [0, 256)."""

    kind = "raw"

    def __init__(self, modality: str, levels: int, input_shape: tuple[int, ...], sample_rate: int | None = None):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        input_shape = tuple(int(s) for s in input_shape)
        if modality == "audio":
            if levels != MU_LAW_CHANNELS:
                raise ValueError(f"raw audio is {MU_LAW_CHANNELS}-level mu-law; got levels={levels}")
            if len(input_shape) != 1 or not sample_rate or sample_rate <= 0:
                raise ValueError(f"raw audio needs input_shape (T,) and a positive sample_rate, got {input_shape}, "
                                 f"{sample_rate}")
        else:
            if levels not in IMAGE_LEVELS:
                raise ValueError(f"raw images use levels 2 (binarised) or 256 (8-bit), got {levels}")
            if len(input_shape) != 3 or input_shape[0] not in (1, 3):
                raise ValueError(f"raw images need input_shape (C, H, W) with C = 1 or 3, got {input_shape}")
            sample_rate = None
        if any(s < 1 for s in input_shape):
            raise ValueError(f"input_shape must be positive, got {input_shape}")
        self._modality, self.levels, self._input_shape, self._sample_rate = modality, int(levels), input_shape, sample_rate

    # ------------------------------------------------------------------ Codec
    @property
    def modality(self) -> str:
        return self._modality

    @property
    def vocab_size(self) -> int:
        return self.levels

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def sample_rate(self) -> int | None:
        return self._sample_rate

    def token_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """(C, H, W) -> (H, W*C); (T,) -> (T,)."""
        shape = tuple(input_shape or self.input_shape)
        if self.modality == "audio":
            return (shape[-1],)
        c, h, w = shape[-3:]
        return (h, w * c)

    def encode(self, x: Tensor) -> Tensor:
        """float32 [B, C, H, W] in [0, 1] -> int64 [B, H, W*C]; audio float32 [B, T] in [-1, 1] -> int64 [B, T]."""
        expected = 4 if self.modality == "image" else 2
        if x.dim() != expected:
            raise ValueError(f"raw {self.modality} codec expects a batch of {expected - 1}-D inputs "
                             f"{'[B, C, H, W]' if expected == 4 else '[B, T]'}, got shape {tuple(x.shape)}")
        if self.modality == "image" and x.shape[1] != self.input_shape[0]:
            raise ValueError(f"this raw codec is for {self.input_shape[0]}-channel images, got {x.shape[1]} channels")
        return quantize_raw(x, self.levels, self.modality)

    def decode(self, tokens: Tensor) -> Tensor:
        """int64 [B, *token_shape] -> float32 [B, C, H, W] in [0, 1] (levels 2: {0, 1}) or [B, T] in [-1, 1]."""
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"tokens must lie in [0, {self.vocab_size}), got range [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        if self.modality == "image":
            c, h, _ = self.input_shape
            if tokens.dim() != 3 or tokens.shape[1] != h or tokens.shape[2] % c:
                raise ValueError(f"raw image tokens must be [B, {h}, W*{c}], got {tuple(tokens.shape)}")
            return dequantize_raw(tokens, self.levels, (c, h, tokens.shape[2] // c))
        if tokens.dim() != 2:
            raise ValueError(f"raw audio tokens must be [B, T], got {tuple(tokens.shape)}")
        return dequantize_raw(tokens, self.levels, (tokens.shape[1],))

    def codec_config(self) -> dict[str, Any]:
        return {"class_name": "RawCodec", "modality": self.modality, "levels": self.levels,
                "input_shape": list(self.input_shape), "sample_rate": self.sample_rate}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.codec_config(), sort_keys=True).encode()).hexdigest()[:32]

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> RawCodec:
        """Rebuild from ``codec_config()`` (a ``config.json`` with ``class_name`` "RawCodec")."""
        known = {"class_name", "modality", "levels", "input_shape", "sample_rate"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RawCodec fields {sorted(unknown)}")
        return cls(d["modality"], int(d["levels"]), tuple(d["input_shape"]), d.get("sample_rate"))

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """``config.json`` (all a raw codec is) and a short ``README.md``."""
        path = Path(save_directory)
        atomic_write_text(path / "config.json", json.dumps(self.codec_config(), indent=2))
        what = (f"{'binarised' if self.levels == 2 else '8-bit'} pixels of {self.input_shape} images"
                if self.modality == "image" else f"8-bit mu-law samples at {self.sample_rate} Hz")
        atomic_write_text(path / "README.md", f"# vqgen raw codec\n\nTokens are the {what} themselves "
                                              f"(vocabulary {self.vocab_size}, grid {self.token_shape()}).\n")

    def __repr__(self) -> str:
        return (f"RawCodec(modality={self.modality!r}, levels={self.levels}, input_shape={self.input_shape}"
                + (f", sample_rate={self.sample_rate})" if self.sample_rate else ")"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawCodec) and other.codec_config() == self.codec_config()

    def __hash__(self) -> int:
        return hash(self.fingerprint)
