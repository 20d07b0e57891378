"""bench/speech_phase_oracle.py: the recombinations are exact (a codec that returns its input scores 1 on every row),
and the bench runs end to end on two synthetic 8 kHz recordings with an untrained 8 kHz tokenizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from bench import speech_phase_oracle as po


def _voiced(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A harmonic tone (pitch f0, 12 harmonics) under a syllable-rate envelope, plus a little noise, at 8 kHz."""
    t = np.arange(int(seconds * 8000)) / 8000
    x = sum(np.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 13)) * (0.5 + 0.5 * np.sin(2 * math.pi * 3 * t))
    return (0.2 * x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def test_a_codec_that_returns_its_input_keeps_every_recombination():
    x = torch.from_numpy(_voiced(1.0, 120.0, 0))
    out = po.recombinations(x, x.clone(), 256, 64, gl_iters=0, seed=0)
    for name in ("original through the STFT and back", "codec magnitudes, original phase",
                 "original magnitudes, codec phase"):
        assert torch.allclose(out[name], x, atol=1e-5), name
    assert not torch.allclose(out["original magnitudes, random phase"], x, atol=1e-2)  # the phase matters


def test_the_bench_scores_every_row_on_held_out_recordings(tmp_path):
    pytest.importorskip("pystoi")
    from tokenizers_vq import build_tokenizer

    (tmp_path / "heldout").mkdir()
    for i, f0 in enumerate((110.0, 210.0)):
        sf.write(tmp_path / "heldout" / f"r{i}.wav", _voiced(1.5, f0, i), 8000, subtype="PCM_16")
    torch.manual_seed(0)
    build_tokenizer(modality="audio", sample_rate=8000, clip_samples=8000, istft_dim=16, istft_layers=1,
                    num_quantizers=2, codebook_size=16).save_pretrained(tmp_path / "tok")
    res = po.main(["--tokenizer", str(tmp_path / "tok"), "--work", str(tmp_path), "--gl-iters", "2", "--no-write"])
    rows = {r["signal"]: r["stoi_mean"] for r in res["rows"]}
    assert len(rows) == 6 and res["recordings"] == ["r0", "r1"]
    assert rows["original through the STFT and back"] > 0.99
    assert all(0 <= v <= 1 for v in rows.values())
    assert res["tokenizer"]["sample_rate"] == 8000
