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

from .codec import Codec
from .modality import Modality, get_modality, modality_for_ndim


def quantize_raw(x: Tensor, levels: int = 256, modality: str | Modality | None = None) -> Tensor:
    """The raw-data grid a prior models directly: the single place for this logic (the modality's
    ``quantize_raw``).

    Images: x float [C, H, W] or [B, C, H, W] in [0, 1] -> int64 [H, W*C] or [B, H, W*C]. ``levels=2``
    binarises (1 where x >= 0.5); ``levels=256`` is round(x * 255) (round half to even). Channels are
    interleaved per pixel (R, G, B of one pixel are consecutive), so raster order over the grid is the
    PixelCNN order: pixel by pixel, channel by channel within a pixel (van den Oord et al. 2016, §2).
    Audio: x float [T] or [B, T] in [-1, 1] -> int64 mu-law codes [T] or [B, T] in [0, 256) (``levels``
    must be 256). ``modality`` defaults to "image" for 3-/4-D inputs and "audio" for 1-/2-D inputs.
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"raw quantization expects a float tensor, got {x.dtype}; images must be scaled to [0, 1]")
    m = get_modality(modality) if modality is not None else modality_for_ndim(x.dim())
    return m.quantize_raw(x, levels)


def dequantize_raw(grid: Tensor, levels: int, input_shape: tuple[int, ...]) -> Tensor:
    """Inverse of ``quantize_raw``: int grid [B, *grid_shape] -> float32 [B, *input_shape].

    Images (input_shape (C, H, W)): values in [0, 1] (levels 2: {0, 1}; 256: q / 255), and
    ``quantize_raw(dequantize_raw(q)) == q`` exactly. Audio (input_shape (T,)): mu-law decoded in [-1, 1].
    """
    return modality_for_ndim(len(input_shape)).dequantize_raw(grid, levels, tuple(input_shape))


class RawCodec(Codec):
    """Raw pixels or mu-law samples as tokens. Images: float32 [B, C, H, W] in [0, 1] <-> int64 [B, H, W*C]
    with ``levels`` 2 or 256; audio: float32 [B, T] in [-1, 1] <-> int64 mu-law codes [B, T] in [0, 256)."""

    kind = "raw"

    def __init__(self, modality: str | Modality, levels: int, input_shape: tuple[int, ...],
                 sample_rate: int | None = None):
        m = get_modality(modality)  # ValueError naming the known modalities
        input_shape = tuple(int(s) for s in input_shape)
        sample_rate = m.check_raw(levels, input_shape, sample_rate)  # None for modalities without time
        if any(s < 1 for s in input_shape):
            raise ValueError(f"input_shape must be positive, got {input_shape}")
        self._modality, self.levels, self._input_shape, self._sample_rate = m, int(levels), input_shape, sample_rate

    # ------------------------------------------------------------------ Codec
    @property
    def modality(self) -> Modality:
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
        return self.modality.raw_token_shape(tuple(input_shape or self.input_shape))

    def encode(self, x: Tensor) -> Tensor:
        """float32 [B, C, H, W] in [0, 1] -> int64 [B, H, W*C]; audio float32 [B, T] in [-1, 1] -> int64 [B, T]."""
        # the layout here; the range where the values are quantized (one check, one host sync)
        self.modality.check_input(x, self.input_shape, who="raw codec", values=False)
        return quantize_raw(x, self.levels, self.modality)

    def decode(self, tokens: Tensor) -> Tensor:
        """int64 [B, *token_shape] -> float32 [B, C, H, W] in [0, 1] (levels 2: {0, 1}) or [B, T] in [-1, 1]."""
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"tokens must lie in [0, {self.vocab_size}), got range [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        shape = self.modality.raw_input_shape(tokens, self.input_shape)  # ValueError for another layout
        return self.modality.dequantize_raw(tokens, self.levels, shape)

    def codec_config(self) -> dict[str, Any]:
        # "modality" the plain name: the fingerprint hashes this dict, and folders saved before it was an object
        # must keep theirs
        return {"class_name": "RawCodec", "modality": str(self.modality), "levels": self.levels,
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
        what = self.modality.raw_description(self.levels, self.input_shape, self.sample_rate)
        atomic_write_text(path / "README.md", f"# vqgen raw codec\n\nTokens are the {what} themselves "
                                              f"(vocabulary {self.vocab_size}, grid {self.token_shape()}).\n")

    def __repr__(self) -> str:
        return (f"RawCodec(modality={str(self.modality)!r}, levels={self.levels}, input_shape={self.input_shape}"
                + (f", sample_rate={self.sample_rate})" if self.sample_rate else ")"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawCodec) and other.codec_config() == self.codec_config()

    def __hash__(self) -> int:
        return hash(self.fingerprint)
