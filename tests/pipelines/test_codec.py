"""``vqgen codec encode | decode`` (issue 24): the packed token stream, files and pipes, streaming frame by frame with
a causal tokenizer, and clear errors for foreign, corrupt and cut-off streams."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.cli import main
from pipelines.stages import codec as C
from tokenizers_vq import build_tokenizer
from tokenizers_vq.bitstream import StreamError, StreamHeader, pack_frames, unpack_frames

HOP = 320


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    """A causal and an offline tiny spectral tokenizer, saved, and a 1.3 s test clip as WAV and raw PCM."""
    root = tmp_path_factory.mktemp("codecs")
    for name, causal in (("causal", True), ("offline", False)):
        torch.manual_seed(0)
        # 12 codes in 4 bits: a corrupt byte can make a token no codec gives (12..15)
        tok = build_tokenizer(modality="audio", causal=causal, istft_dim=16, istft_layers=2, num_quantizers=3,
                              codebook_size=12, clip_samples=3200)
        tok.train()(torch.rand(4, 3200) * 1.6 - 0.8)  # k-means initialises the codebooks
        tok.eval().save_pretrained(root / name)
    t = np.arange(int(1.3 * 16000)) / 16000
    pcm = np.round(0.4 * np.sin(2 * math.pi * 220 * t) * 32767).astype("<i2")
    sf.write(root / "in.wav", pcm, 16000, subtype="PCM_16")
    (root / "in.raw").write_bytes(pcm.tobytes())
    return root


def expected_pcm(root: Path, name: str) -> np.ndarray:
    from tokenizers_vq import load_tokenizer

    tok = load_tokenizer(root / name).eval()
    x = torch.from_numpy(np.frombuffer((root / "in.raw").read_bytes(), dtype="<i2").astype(np.float32) / 32768)
    x = torch.nn.functional.pad(x, (0, -len(x) % HOP))
    y = tok.decode(tok.encode(x[None]))[0]
    return (y.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()


def test_pack_and_unpack_any_vocabulary():
    g = np.random.default_rng(0)
    for vocab, q in ((512, 5), (2, 1), (1000, 1), (16, 3), (4096, 2)):
        h = StreamHeader("f", 16000, 320, q, vocab)
        tokens = g.integers(0, vocab, size=(37, q))
        data = pack_frames(tokens, h)
        assert len(data) == 37 * h.frame_bytes == 37 * math.ceil(q * math.ceil(math.log2(vocab)) / 8)
        assert np.array_equal(unpack_frames(data, h), tokens)
    h = StreamHeader("f", 16000, 320, 5, 512)
    assert (h.frame_bytes, h.kbit_per_s) == (6, 2.4)  # 45 bits in 6 bytes per 20 ms, as Codec2 2400's 48
    assert StreamHeader.read(io.BytesIO(h.to_bytes()).read) == h
    odd = StreamHeader("f", 16000, 320, 1, 500)  # 9 bits hold up to 511: a token >= 500 is corruption
    with pytest.raises(StreamError, match="beyond the codec's 500 codes"):
        unpack_frames(pack_frames(np.array([[510]]), StreamHeader("f", 16000, 320, 1, 512)), odd)
    mixed = pack_frames(np.array([[3], [499], [510], [4]]), StreamHeader("f", 16000, 320, 1, 512))
    assert unpack_frames(mixed, odd, strict=False).tolist() == [[3], [499]]  # the frames before the corrupt one
    for bad in (-1, 512):  # would wrap into another code
        with pytest.raises(ValueError, match=r"tokens must be in \[0, 512\)"):
            pack_frames(np.array([[3, 4, bad, 5, 6]]), h)


@pytest.mark.parametrize("field,value", [("codebooks", 0), ("vocab_size", "512"), ("sample_rate", -8000),
                                         ("hop", 1.5), ("causal", "yes"), ("vocab_size", None)])
def test_corrupt_header_fields_are_stream_errors(field, value):
    import json
    import struct

    d = {"fingerprint": "f", "sample_rate": 16000, "hop": 320, "codebooks": 5, "vocab_size": 512, "causal": True}
    body = json.dumps({**d, field: value}).encode()
    blob = b"VQGC" + bytes([1]) + struct.pack("<H", len(body)) + body
    with pytest.raises(StreamError, match=f"corrupt header.*{field}"):
        StreamHeader.read(io.BytesIO(blob).read)


@pytest.mark.parametrize("name", ["causal", "offline"])
def test_file_round_trip_equals_encode_then_decode(codecs, name, capsys):
    vqc, wav = codecs / f"{name}.vqc", codecs / f"{name}.wav"
    assert main(["codec", "encode", "--tokenizer", str(codecs / name), str(codecs / "in.wav"), str(vqc)]) == 0
    assert main(["codec", "decode", "--tokenizer", str(codecs / name), str(vqc), str(wav)]) == 0
    out = capsys.readouterr().out
    assert "1.30 s -> 65 frames at 0.80 kbit/s" in out and ("35.0 ms latency" in out) == (name == "causal")
    assert vqc.stat().st_size == len(StreamHeader.read(open(vqc, "rb").read).to_bytes()) + 65 * 2
    got, sr = sf.read(wav, dtype="int16")
    assert sr == 16000 and got.shape == (65 * HOP,)  # whole frames, the last one zero-padded
    assert np.abs(got.astype(int) - expected_pcm(codecs, name)).max() <= 1  # PCM rounding of a 1e-5 difference


class _Pipe:
    """stdin that hands over ``chunk`` bytes per read and records how much the encoder had written by then."""

    def __init__(self, data: bytes, chunk: int, written: io.BytesIO):
        self.data, self.chunk, self.written, self.seen = data, chunk, written, []

    def read1(self, n: int) -> bytes:
        self.seen.append(len(self.written.getvalue()))
        part, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk):]
        return part


def test_causal_encoder_writes_frames_while_input_arrives(codecs, monkeypatch, tmp_path):
    written = io.BytesIO()
    pipe = _Pipe((codecs / "in.raw").read_bytes(), 2 * HOP * 3 + 10, written)  # 3 frames and 5 samples per read
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": pipe})())
    monkeypatch.setattr(sys, "stdout", type("S", (), {"buffer": written})())
    stats = C.codec_encode(codecs / "causal", "-", "-")
    header = StreamHeader.read(io.BytesIO(written.getvalue()).read)
    n_header = len(header.to_bytes())
    # by the 2nd read the first 3 frames are out, by the 3rd 6: a frame leaves once its samples are in
    assert pipe.seen[1] == n_header + 3 * 2 and pipe.seen[2] == n_header + 6 * 2
    assert stats["frames"] == 65 and len(written.getvalue()) == n_header + 65 * 2
    C.codec_encode(codecs / "causal", str(codecs / "in.wav"), str(tmp_path / "file.vqc"))
    assert (tmp_path / "file.vqc").read_bytes() == written.getvalue()  # the same bytes as from the WAV file


def test_pipes_between_two_processes(codecs):
    """``vqgen codec encode - - | vqgen codec decode - -`` on raw 16-bit PCM."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "codec"]
    enc = subprocess.Popen([*cmd, "encode", "--tokenizer", str(codecs / "causal"), "-", "-"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, env=env)
    dec = subprocess.Popen([*cmd, "decode", "--tokenizer", str(codecs / "causal"), "-", "-"], stdin=enc.stdout,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    enc.stdout.close()
    enc.stdin.write((codecs / "in.raw").read_bytes())
    enc.stdin.close()
    out, err = dec.communicate(timeout=300)
    assert enc.wait(timeout=60) == 0 and dec.returncode == 0, err.decode()
    got = np.frombuffer(out, dtype="<i2")
    assert len(got) == 65 * HOP and np.abs(got.astype(int) - expected_pcm(codecs, "causal")).max() <= 1
    assert b"decoded - -> -" in err  # the report goes to stderr, never into the audio


def test_bad_streams_are_clear_errors_and_lose_nothing(codecs, tmp_path, capsys):
    vqc = codecs / "causal.vqc"
    if not vqc.exists():
        assert main(["codec", "encode", "--tokenizer", str(codecs / "causal"), str(codecs / "in.wav"), str(vqc)]) == 0
    data = vqc.read_bytes()

    def decode(blob: bytes, tok: str = "causal") -> str:
        (tmp_path / "s.vqc").write_bytes(blob)
        assert main(["codec", "decode", "--tokenizer", str(codecs / tok), str(tmp_path / "s.vqc"),
                     str(tmp_path / "o.wav")]) == 2
        return capsys.readouterr().err

    err = decode(data, "offline")
    assert "was encoded by codec" in err and "decode with the tokenizer that encoded it" in err
    assert "not a vqgen codec stream" in decode((codecs / "in.wav").read_bytes())
    assert "is empty" in decode(b"")
    assert "ends inside its header" in decode(data[:20])
    err = decode(data[:-1])  # cut inside the last frame: the 64 complete frames are decoded and written
    assert "cut off inside a frame (1 of 2 bytes); the 64 complete frames" in err
    assert sf.info(tmp_path / "o.wav").frames == 64 * HOP
    start = len(StreamHeader.read(io.BytesIO(data).read).to_bytes())
    corrupt = bytearray(data)
    corrupt[start + 2 * 10] = 0xFF  # frame 10's first token reads 15, beyond the 12 codes
    err = decode(bytes(corrupt))
    assert "frame 10 holds a token beyond the codec's 12 codes; the 10 frames before it were decoded" in err
    assert sf.info(tmp_path / "o.wav").frames == 10 * HOP  # what was good is written
    h = StreamHeader.read(io.BytesIO(data).read)
    other = StreamHeader(h.fingerprint, h.sample_rate, 2 * h.hop, h.codebooks, h.vocab_size, h.causal)
    assert "corrupt header: it names codec" in decode(other.to_bytes() + data[start:])
    (tmp_path / "odd.raw").write_bytes(b"\x00\x01\x02")
    with open(tmp_path / "odd.raw", "rb") as f:
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "codec", "encode", "--tokenizer",
                               str(codecs / "causal"), "-", str(tmp_path / "odd.vqc")], stdin=f, capture_output=True)
    assert proc.returncode == 2 and b"odd byte" in proc.stderr
    assert not list(tmp_path.glob("*odd.vqc*"))  # no partial stream left behind
    assert main(["codec", "encode", "--tokenizer", str(codecs / "causal"), str(vqc), str(tmp_path / "x.vqc")]) == 2
    assert "cannot read" in capsys.readouterr().err
