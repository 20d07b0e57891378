"""bench/speech_peers.py: Codec2 and Opus round trips (length, alignment, bitrate) and the delay search."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import bench.speech_peers as P

SR = 16000


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: {P.INSTALL}")


def bursts(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """float32 [T] in [-0.5, 0.5]: a ~150 Hz buzz through vowel-like formants, in 4 Hz syllables, with a leading
    silence so a delayed copy is not cut off at the start."""
    t = torch.arange(int(seconds * SR)) / SR
    pitch = 150 * (1 + 0.1 * torch.sin(2 * math.pi * 1.3 * t + seed))
    phase = 2 * math.pi * torch.cumsum(pitch, 0) / SR
    x = sum((sum(math.exp(-((h * 150 - f) / 150) ** 2) for f in (700, 1200, 2500)) + 0.05) * torch.sin(h * phase)
            for h in range(1, 25))
    x = x * (0.5 - 0.5 * torch.cos(2 * math.pi * 4 * t))
    x[: SR // 10] = 0
    return (0.5 * x / x.abs().max()).float()


def test_best_delay_and_estimate_delay_find_a_known_shift():
    ref = torch.stack([bursts(seed=s) for s in range(3)])
    out = torch.cat([torch.zeros(3, 336), ref[:, :-336]], dim=1)  # out lags ref by 336 samples (21 ms)
    assert P.estimate_delay(out, ref, SR) == pytest.approx(336, abs=8)
    # a score smooth in the delay at the grid's 4 ms scale, as STOI is (a waveform MSE oscillates with the pitch)
    env = lambda w: torch.nn.functional.avg_pool1d(w.abs()[:, None], 320, 1)[:, 0]  # noqa: E731  (20 ms)
    envelope_fit = lambda a, b: -float((env(a) - env(b)).pow(2).mean())  # noqa: E731
    assert P.best_delay(out, ref, envelope_fit, SR) == 336  # on the 0.5 ms grid: found exactly
    torch.testing.assert_close(P.advance(out, 336)[:, :-336], ref[:, :-336])


def test_missing_tool_names_the_install_command(monkeypatch):
    monkeypatch.setattr(P.shutil, "which", lambda tool: None)
    with pytest.raises(P.MissingTool, match="apt-get install codec2 opus-tools"):
        P.codec2_roundtrip(bursts(), SR, "1300")
    with pytest.raises(P.MissingTool, match="apt-get install codec2 opus-tools"):
        P.opus_roundtrip(bursts(), SR, 6)


@pytest.mark.parametrize("mode", P.CODEC2_MODES)
def test_codec2_roundtrip_keeps_length_and_the_signal(mode):
    _needs("c2enc", "c2dec")
    x = bursts()
    y, delay = P.codec2_roundtrip(x, SR, mode, return_delay=True)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.abs().max() <= 1.0
    assert 0 <= delay <= P.MAX_DELAY_S * SR
    corr = torch.corrcoef(torch.stack([P._envelope(y[None], SR)[0], P._envelope(x[None], SR)[0]]))[0, 1]
    assert corr > 0.5, corr  # the syllable envelope survives the vocoder
    assert P.codec2_kbps(mode) == {"3200": 3.2, "2400": 2.4, "1300": 1.3, "700C": 0.7}[mode]


def test_opus_roundtrip_keeps_length_is_aligned_and_reports_bitrate():
    _needs("opusenc", "opusdec")
    x = bursts()
    y, stats = P.opus_roundtrip(x, SR, 6, delay=0, return_stats=True)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0 < stats["kbps"] < 12  # payload bitrate opusenc reports, about the 6 asked for
    # opusdec drops the pre-skip: the decoded clip starts where the input does (within 1 ms)
    assert P.estimate_delay(y, x, SR) <= SR // 1000
