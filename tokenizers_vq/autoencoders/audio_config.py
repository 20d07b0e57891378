"""Settings both audio families share (they read the mu-law companded waveform and train on spectral losses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vqgen_io.components import ComponentConfig


@dataclass
class AudioFamilyConfig(ComponentConfig):
    """Fields of every audio autoencoder family; ``downsample`` is each family's own."""

    mu_law_channels: int = 256  # mu-law classes the waveform is companded to (8-bit, as WaveNet and the VQ-VAE paper)
    mel_loss_weight: float = 1.0  # weight of the multi-resolution log-mel L1 on the decoded waveform
    waveform_loss_weight: float = 30.0  # weight of the L1 between the decoded and the input waveform
    chunk_tokens: int = 256  # encode / decode long inputs in chunks of this many tokens (bounded memory)
    chunk_overlap_tokens: int = 24  # context tokens either side of a chunk, discarded after

    def check_downsample(self, parent: Any, downsample: int) -> None:
        if parent.clip_samples % downsample:
            raise ValueError(f"clip_samples {parent.clip_samples} is not divisible by downsample {downsample}")


def check_power_of_two(downsample: int) -> int:
    ds = int(downsample)
    if ds < 1 or ds & (ds - 1):
        raise ValueError(f"downsample must be a power of two >= 1, got {ds}")
    return ds
