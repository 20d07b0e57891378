"""The ``tones`` built-in: procedural melodies in four timbres, generated on access.

Yields ``(x float32 [clip_samples] with peak in [0.3, 0.9] at spec.sample_rate, label int64 in 0..3)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from ..audio_io import CACHE_BYTES
from ..spec import DATASETS, BuiltinDataset, DataSpec, Splits

TONES_SIZES = {"train": 2000, "test": 200}
TONE_TIMBRES = ["flute", "clarinet", "brass", "bell"]  # the tones labels: timbre is audible in every note


def _partials(timbre: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequency ratios, amplitudes, decay-rate multipliers) of one timbre, slightly jittered per note."""
    n = np.arange(1, 9, dtype=np.float64)
    if timbre == "flute":  # nearly pure: strong fundamental, a little 2nd and 3rd
        ratios, amps = n[:3], np.array([1.0, 0.25, 0.08])
    elif timbre == "clarinet":  # odd harmonics only, 1/n (a closed cylindrical bore)
        ratios = n[::2]
        amps = 1.0 / ratios
    elif timbre == "brass":  # all harmonics, 1/n (sawtooth-like)
        ratios, amps = n, 1.0 / n
    else:  # bell: inharmonic partials (ideal free bar modes 1, 2.76, 5.40, 8.93), higher ones die faster
        ratios, amps = np.array([1.0, 2.76, 5.40, 8.93]), np.array([1.0, 0.6, 0.3, 0.15])
    decay = ratios**0.5 if timbre == "bell" else np.ones_like(ratios)
    return ratios, amps * rng.uniform(0.8, 1.2, size=len(amps)), decay


SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10], "pentatonic": [0, 2, 4, 7, 9]}


def synth_melody(rng: np.random.Generator, timbre: str, sample_rate: int, n_samples: int) -> np.ndarray:
    """A random melody: notes of a random scale (major, natural minor or major pentatonic) from a random
    root, at a random tempo, each note with the timbre's partials, a linear attack and exponential decay,
    plus light white noise (-50 dB). Returns float32 [n_samples] with peak in [0.3, 0.9]."""
    out = np.zeros(n_samples, dtype=np.float64)
    scale = SCALES[list(SCALES)[rng.integers(len(SCALES))]]
    root = 48 + int(rng.integers(0, 13))  # MIDI C3..C4
    beat = 60.0 / rng.uniform(90, 180)  # seconds per beat
    t0 = 0
    nyquist = sample_rate / 2
    while t0 < n_samples:
        dur = int(beat * rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]) * sample_rate)
        if rng.random() < 0.1:  # a rest
            t0 += dur
            continue
        degree = int(rng.integers(0, len(scale) * 2))
        midi = root + scale[degree % len(scale)] + 12 * (degree // len(scale))
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        ring = min(n_samples - t0, dur + int(0.05 * sample_rate))  # let the note ring 50 ms past its slot
        t = np.arange(ring) / sample_rate
        attack = rng.uniform(0.003, 0.03)
        tau = rng.uniform(0.1, 0.6)
        ratios, amps, decay = _partials(timbre, rng)
        keep = f0 * ratios < 0.9 * nyquist  # no partial above Nyquist: no aliasing
        env_a = np.minimum(t / attack, 1.0)
        phases = rng.uniform(0, 2 * math.pi, size=len(ratios))
        note = np.zeros(ring)
        for r, a, d, p in zip(ratios[keep], amps[keep], decay[keep], phases[keep]):
            note += a * np.sin(2 * math.pi * f0 * r * t + p) * np.exp(-t * d / tau)
        out[t0:t0 + ring] += rng.uniform(0.5, 1.0) * env_a * note
        t0 += dur
    out += rng.normal(0.0, 10 ** (-50 / 20), size=n_samples)
    peak = np.abs(out).max()
    return (out * (rng.uniform(0.3, 0.9) / max(peak, 1e-8))).astype(np.float32)


class TonesDataset(Dataset):
    """Procedural melodies, generated on access: item i of a split comes from a generator seeded by
    (seed, split, i), so the data is identical across runs and machines. Labels are timbres
    (``TONE_TIMBRES``), balanced: item i has timbre i mod 4."""

    def __init__(self, n: int, split: str, seed: int, sample_rate: int, clip_samples: int):
        self.n, self.split_id, self.seed = n, {"train": 0, "test": 1}[split], seed
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        # Synthesis costs ~6 ms per 1 s clip, ~30% of a CPU training step at batch 16, so clips are kept once
        # made (2,000 x 1 s = 128 MB) unless the split would not fit in CACHE_BYTES.
        self._cache: dict[int, torch.Tensor] | None = {} if n * clip_samples * 4 <= CACHE_BYTES else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        label = i % len(TONE_TIMBRES)
        x = self._cache.get(i) if self._cache is not None else None
        if x is None:
            rng = np.random.default_rng([self.seed, self.split_id, i])
            x = torch.from_numpy(synth_melody(rng, TONE_TIMBRES[label], self.sample_rate, self.clip_samples))
            if self._cache is not None:
                self._cache[i] = x
        return x.clone(), torch.tensor(label, dtype=torch.int64)


def load_tones(spec: DataSpec) -> Splits:
    """The ``tones`` built-in: 2,000 train / 200 test melodies, 4 timbre classes."""
    if spec.clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
    n_train = min(spec.limit, TONES_SIZES["train"]) if spec.limit else TONES_SIZES["train"]
    return Splits(
        train=TonesDataset(n_train, "train", spec.seed, spec.sample_rate, spec.clip_samples),
        test=TonesDataset(TONES_SIZES["test"], "test", spec.seed, spec.sample_rate, spec.clip_samples),
        modality="audio", num_classes=len(TONE_TIMBRES), class_names=list(TONE_TIMBRES),
        input_shape=(spec.clip_samples,), sample_rate=spec.sample_rate,
    )


@DATASETS.register("tones")
class Tones(BuiltinDataset):
    modality = "audio"
    description = "procedural 16 kHz melodies; labels: the timbre; deterministic per --seed"
    load = staticmethod(load_tones)
