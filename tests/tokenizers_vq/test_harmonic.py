"""The spectral codec's harmonic source (``harmonics`` > 0): YIN pitch targets, the sinusoidal synthesis, and the
codec that adds it (trains, decodes in chunks as in one piece, saves and loads, old fingerprints kept)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer
from tokenizers_vq.autoencoders.harmonic import _upsample, harmonic_source, track_f0

SR = 8000


def glide(n: int, f_start: float = 120.0, f_end: float = 168.0, partials: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """A harmonic tone gliding in pitch (1/k partials): (waveform [n], its pitch per sample [n])."""
    f = f_start + (f_end - f_start) * torch.arange(n) / n
    ph = 2 * math.pi * torch.cumsum(f / SR, 0)
    return sum(0.3 / k * torch.sin(k * ph) for k in range(1, partials + 1)), f


def test_yin_follows_a_gliding_pitch_and_finds_silence_and_noise_unvoiced():
    x, f = glide(6400)
    x[3200:3600] = 0  # 50 ms of silence
    noise = 0.3 * torch.randn(3200, generator=torch.Generator().manual_seed(0))
    f0, voiced = track_f0(torch.stack([x, torch.cat([noise, noise])]), SR, 40)
    assert f0.shape == voiced.shape == (2, 160)
    frames = [i for i in range(2, 158) if not 78 <= i <= 92]  # away from the clip's ends and the silence
    truth = f[torch.tensor(frames) * 40 + 20]
    assert voiced[0, frames].all()
    assert ((f0[0, frames] / truth).log2().abs() < 0.01).all()  # within 0.7% (an eighth of a semitone)
    assert not voiced[0, 82:88].any()
    assert voiced[1].mean() < 0.1


def test_harmonic_source_is_a_sum_of_partials_and_blocks_change_nothing():
    n = 200
    f0 = torch.full((1, n), 250.0)
    amps = torch.zeros(1, 20, n)
    amps[0, 1] = 0.5  # the second harmonic alone: a 500 Hz sinusoid
    amps[0, 19] = 1.0  # 20 x 250 Hz = 5 kHz is above Nyquist (4 kHz): silent
    y = harmonic_source(f0, amps, 40, SR)
    assert y.shape == (1, n * 40)
    t = torch.arange(n * 40) / SR
    torch.testing.assert_close(y[0], 0.5 * torch.sin(2 * math.pi * 500 * (t + 1 / SR)), atol=1e-3, rtol=0)
    f0 = torch.rand(2, 300) * 300 + 60
    amps = torch.rand(2, 8, 300)
    torch.testing.assert_close(harmonic_source(f0, amps, 40, SR, block=7), harmonic_source(f0, amps, 40, SR),
                               atol=1e-5, rtol=0)
    # linear interpolation of the frame track, as F.interpolate's (frame i at sample (i + 0.5) * hop)
    want = F.interpolate(f0[:, None], size=300 * 40, mode="linear", align_corners=False)[:, 0]
    torch.testing.assert_close(_upsample(F.pad(f0[:, None], (1, 1), mode="replicate")[:, 0], 0, 300, 40), want,
                               atol=1e-2, rtol=0)


def tiny(**kw):
    cfg = dict(modality="audio", sample_rate=SR, clip_samples=3200, istft_dim=16, istft_layers=1, num_quantizers=2,
               codebook_size=16, harmonics=16)
    return build_tokenizer(**(cfg | kw))


def test_codec_with_harmonics_learns_pitch_and_decodes_in_chunks_as_in_one_piece(tmp_path):
    torch.manual_seed(0)
    tok = tiny()
    x = torch.stack([glide(3200, 110, 130)[0], glide(3200, 200, 180)[0]])
    out = tok.train()(x)
    assert {"f0_l1_octaves", "voiced"} <= set(out.metrics) and out.metrics["voiced"] > 0.9
    out.loss.backward()
    head = tok.model.refine.out.weight.grad  # rows: 2 * bins log-magnitude and phase, then pitch, gain, harmonics
    bins = tok.model.bins
    assert head.shape[0] == 2 * bins + 2 + 16
    assert head[2 * bins].abs().sum() > 0 and head[2 * bins + 2:].abs().sum() > 0  # pitch and harmonic shape
    assert tok.model.encoder.inp.weight.grad.abs().sum() > 0
    # training moves the predicted pitch towards YIN's
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        opt.zero_grad()
        m = tok.train()(x)
        m.loss.backward()
        opt.step()
        first = float(m.metrics["f0_l1_octaves"]) if first is None else first
    assert float(m.metrics["f0_l1_octaves"]) < 0.75 * first
    tok.eval()
    with torch.no_grad():  # evaluation decodes at the predicted pitch, as decode does (YIN's is for training only)
        torch.testing.assert_close(tok(x).recon, tok.decode(tok.encode(x)), atol=1e-4, rtol=0)
    long = torch.cat([x, x, x], dim=1)  # 60 tokens
    codes = tok.encode(long)
    torch.testing.assert_close(tok.model.decode(codes, chunk_tokens=8), tok.model.decode(codes, chunk_tokens=0),
                               atol=1e-5, rtol=0)
    tok.save_pretrained(tmp_path / "t")
    back = load_tokenizer(tmp_path / "t")
    assert back.config.harmonics == 16 and back.fingerprint == tok.fingerprint
    torch.testing.assert_close(back.decode(codes), tok.decode(codes))


def test_harmonics_off_keeps_old_fingerprints_and_bad_settings_are_errors():
    plain = dict(modality="audio", sample_rate=SR, clip_samples=3200, istft_dim=16, istft_layers=1)

    def fingerprint(**kw):
        torch.manual_seed(0)  # the fingerprint covers the weights too
        return build_tokenizer(**plain, **kw).fingerprint

    assert "harmonics" not in TokenizerConfig(**plain).to_dict()
    assert fingerprint(harmonics=0) == fingerprint() != fingerprint(harmonics=8)
    with pytest.raises(ValueError, match="harmonics must be >= 0"):
        TokenizerConfig(**plain, harmonics=-1)
    with pytest.raises(ValueError, match="non-causal"):
        TokenizerConfig(**plain, harmonics=8, causal=True)
    from tokenizers_vq.onnx_export import export_onnx

    with pytest.raises(ValueError, match="no ONNX export yet.*--format safetensors"):
        export_onnx(build_tokenizer(**plain, harmonics=8), "unused")
