"""bench/codec_speed.py on a tiny causal codec: the rows' latency and call arithmetic, the stream-vs-offline
comparison and picture, the table, and its argument checks."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from bench import codec_speed as cs
from tokenizers_vq import build_tokenizer


def tiny_codec():
    torch.manual_seed(0)
    tok = build_tokenizer(modality="audio", causal=True, istft_dim=16, istft_layers=2, num_quantizers=3,
                          codebook_size=16, clip_samples=3200)
    with torch.no_grad():  # without grad: every codebook k-means-initialised
        tok.train()(torch.rand(4, 3200) * 1.6 - 0.8)
    return tok.eval()


def speech(n: int) -> torch.Tensor:
    t = torch.arange(n) / cs.SR
    return 0.5 * torch.sin(2 * math.pi * 200 * t) * torch.sin(2 * math.pi * 3 * t)


def test_rows_report_latency_per_chunk_and_rates(monkeypatch):
    tok = tiny_codec()
    args = argparse.Namespace(frames=[1, 3], onnx=False, onnx_frames=[], repeats=1)
    rows = cs.vqgen_rows(tok, speech(25 * 320), args, "tiny")
    assert [r["codec"] for r in rows] == ["vqgen tiny, stream, 1 frame(s) per call",
                                          "vqgen tiny, stream, 3 frame(s) per call", "vqgen tiny, offline (whole signal)"]
    assert [r["latency_ms"] for r in rows] == [35.0, 75.0, None]  # 35 ms + 20 ms for each frame a chunk waits for
    assert all(r["rtf"] > 0 and r["kbps"] == pytest.approx(50 * 3 * 4 / 1000) for r in rows)
    # a call of 3 frames codes 60 ms of audio: its time is 60 ms / rtf
    assert rows[1]["ms_per_call"] == pytest.approx(60.0 / rows[1]["rtf"])
    # the arithmetic on given timings: 0.5 s of audio in 0.5 / 0.25 / 0.1 s
    monkeypatch.setattr(cs, "stream_seconds", lambda tok, x, frames, repeats: {1: 0.5, 3: 0.25}[frames])
    monkeypatch.setattr(cs, "best_of", lambda repeats, fn: 0.1)
    rows = cs.vqgen_rows(tok, speech(25 * 320), args, "tiny")
    assert [r["rtf"] for r in rows] == pytest.approx([1.0, 2.0, 5.0])
    assert [r.get("ms_per_call") for r in rows] == pytest.approx([20.0, 30.0, None])


def test_stream_equals_offline_and_the_picture_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "ROOT", tmp_path)
    res = cs.stream_vs_offline(tiny_codec(), speech(20 * 320 + 77), tmp_path / "s.png")
    assert res["tokens_differ"] == 0 and res["max_abs_diff"] < 1e-5
    assert (tmp_path / "s.png").stat().st_size > 1000 and res["png"] == "s.png"


def test_table_and_errors():
    res = {"command": "python -m bench.codec_speed", "audio_s": 30.0,
           "meta": {"repeats": 3, "model_note": "Model: x.", "cpu": "cpu", "cores": 2, "torch": "2", "load_start": [0],
                    "load_end": [0]},
           "rows": [{"codec": "vqgen a, stream, 1 frame(s) per call", "kbps": 2.25, "rtf": 8.0, "latency_ms": 35.0,
                     "ms_per_call": 2.5, "stoi": 0.8, "listener": 0.95},
                    {"codec": "Opus 6k", "kbps": 6.0, "rtf": 70.0, "latency_ms": 26.5, "stoi": 0.9, "listener": 1.0},
                    {"codec": "Codec2 2400", "skipped": "c2enc is not installed"}],
           "stream_vs_offline": {"tokens_differ": 0, "max_abs_diff": 1e-7, "png": "x.png"}}
    md = cs.markdown(res)
    assert "| vqgen a, stream, 1 frame(s) per call | 2.25 | 8.0x | 35.0 | 2.50 | 0.800 | 95.0% |" in md
    assert "| Opus 6k | 6.00 | 70.0x | 26.5 | - | 0.900 | 100.0% |" in md
    assert "skipped: c2enc is not installed" in md and "0 tokens differ" in md
    assert "](x.png)" in md  # the spectrogram the run wrote, under its own name
    assert cs.parse_size("128x4") == (128, 4)
    with pytest.raises(argparse.ArgumentTypeError, match="DIMxLAYERS"):
        cs.parse_size("128")
    with pytest.raises(SystemExit, match="--quality needs --tokenizer"):
        cs.main(["--quality"])
