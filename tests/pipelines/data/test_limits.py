"""Files over the input limits (decompression bombs, corrupt sample rates, odd resampling ratios) are counted
skips with their reason, or errors under --strict; checked from the header, so they cost nothing."""

import json
import logging
import struct
import time
import zlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipelines.data import DataSpec, audio_io, load_data, report_skips
from pipelines.data.audio_io import AudioReadError, check_audio_limits, read_audio, resample_kernel_size
from pipelines.data.image_io import ImageReadError, check_image
from pipelines.data.spec import (
    MAX_AUDIO_SAMPLES,
    MAX_AUDIO_SECONDS,
    MAX_IMAGE_PIXELS,
    MAX_RESAMPLE_KERNEL,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
)

SR = 16000
STANDARD_RATES = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000, 176400,
                  192000, 352800, 384000]


def one_bit_png(path, width: int, height: int) -> None:
    """A blank 1-bit PNG written chunk by chunk: 30000 x 30000 is ~110 KB on disk and never 900 MB in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * min(1000, height - y)) for y in range(0, height, 1000)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def wav_claiming_rate(path, rate: int, n: int = 20000) -> None:
    """A real 16-bit mono WAV of n samples whose header then says ``rate`` Hz (fmt chunk at byte 12)."""
    t = np.arange(n) / SR
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt " and struct.unpack("<I", data[24:28])[0] == SR
    data[24:32] = struct.pack("<II", rate, rate * 2)  # sample rate, byte rate (2 bytes per frame)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def bomb_bytes(tmp_path_factory) -> bytes:
    """The issue's decompression bomb: a 30000 x 30000 1-bit PNG, ~110 KB (made once: 0.7 s of zlib)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    one_bit_png(path, 30000, 30000)
    return path.read_bytes()


# ---------------------------------------------------------------------------------------- images
def test_decompression_bomb_is_rejected_from_its_header(tmp_path, bomb_bytes):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_bytes)
    assert len(bomb_bytes) < 200_000
    t = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"bomb\.png: image is 900,000,000 pixels, over the 67,108,864-pixel "
                                             r"limit \(MAX_IMAGE_PIXELS\); downscale it"):
        check_image(str(bomb), 32)
    assert time.perf_counter() - t < 1.0


def test_image_over_our_limit_but_under_pils_is_rejected_with_its_size(tmp_path):
    big = tmp_path / "big.png"
    one_bit_png(big, 9000, 8000)  # 72 MP: PIL would only warn; ours is 67 MP
    with pytest.raises(ImageReadError, match=r"big\.png: 9000x8000 image is 72,000,000 pixels, over the"):
        check_image(str(big), 32)
    ok = tmp_path / "ok.png"
    one_bit_png(ok, 4000, 3000)  # a 12 MP photo-sized image passes
    check_image(str(ok), 32)


def test_extreme_aspect_ratio_is_rejected_before_its_resize_explodes(tmp_path):
    strip = tmp_path / "strip.png"
    one_bit_png(strip, 3_000_000, 1)  # 3 MP, but its shorter side scaled to 32 would be 96 M x 32
    with pytest.raises(ImageReadError, match=r"strip\.png: 3000000x1 image would be resized to 96000000x32 .*"
                                             r"crop it closer to square"):
        check_image(str(strip), 32)
    assert MAX_IMAGE_PIXELS == 8192 * 8192


# ---------------------------------------------------------------------------------------- audio
def test_wav_claiming_1_hz_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "one_hz.wav"
    wav_claiming_rate(path, 1)
    assert sf.info(str(path)).samplerate == 1  # libsndfile itself accepts it
    t = time.perf_counter()
    with pytest.raises(AudioReadError, match=r"one_hz\.wav: the header's sample rate 1 Hz is outside 1000\.\.768000 Hz"):
        read_audio(path, SR)
    assert time.perf_counter() - t < 1.0  # not 320 M samples and 3.2 GB


@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE - 1, MAX_SAMPLE_RATE + 1])
def test_sample_rate_range_is_inclusive_and_enforced(rate):
    with pytest.raises(AudioReadError, match=f"sample rate {rate} Hz"):
        check_audio_limits("x.wav", rate, 100, 1, None)
    for ok in (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE):
        check_audio_limits("x.wav", ok, 100, 1, None)


def test_duration_and_decoded_size_limits():
    check_audio_limits("long.wav", 48000, MAX_AUDIO_SECONDS * 48000, 2, SR)  # exactly an hour of stereo: fine
    with pytest.raises(AudioReadError, match=r"long\.wav: 3,601 s of audio is over the 3600 s limit .*ffmpeg"):
        check_audio_limits("long.wav", 48000, 3601 * 48000, 2, SR)
    frames = MAX_AUDIO_SAMPLES // 8 + 1  # under an hour at 384 kHz, but 8 channels of it
    with pytest.raises(AudioReadError, match=r"x8\.flac: .* x 8 channels is over the 1,073,741,824-sample"):
        check_audio_limits("x8.flac", 384000, frames, 8, SR)


def test_duration_limit_through_read_audio(tmp_path, monkeypatch):
    path = tmp_path / "two_seconds.wav"
    sf.write(path, np.zeros(2 * SR, np.float32), SR)
    monkeypatch.setattr(audio_io, "MAX_AUDIO_SECONDS", 1)
    with pytest.raises(AudioReadError, match=r"two_seconds\.wav: 2 s of audio is over the 1 s limit"):
        read_audio(path, SR)


def test_resample_kernel_size_matches_torchaudio():
    from torchaudio.functional.functional import _get_sinc_resample_kernel

    for rate, target in [(44100, 16000), (8000, 44100), (22050, 24000), (997, 50), (1, 16000)]:
        g = np.gcd(rate, target)
        kernel, _ = _get_sinc_resample_kernel(rate, target, int(g))
        assert resample_kernel_size(rate, target) == kernel.numel()


def test_odd_rate_that_would_need_a_huge_resampling_filter_is_skipped(tmp_path):
    path = tmp_path / "odd.wav"
    wav_claiming_rate(path, 44101, n=4410)  # 44101 and 16000 are coprime: 706 M taps, 12 GB
    t = time.perf_counter()
    with pytest.raises(AudioReadError, match=r"odd\.wav: resampling 44101 Hz to 16000 Hz needs a 706,160,000-tap "
                                             r"filter, over the 16,777,216 limit \(MAX_RESAMPLE_KERNEL\).*sox"):
        read_audio(path, SR)
    assert time.perf_counter() - t < 1.0
    wave, rate = read_audio(path, 44101)  # at its own rate nothing is resampled
    assert rate == 44101 and wave.shape == (4410,)


def test_every_standard_rate_passes_the_limits_for_every_common_target():
    for target in (8000, 16000, 22050, 24000, 44100, 48000):
        for rate in STANDARD_RATES:
            check_audio_limits("ok.wav", rate, 600 * rate, 2, target)  # 10 minutes of stereo
            assert resample_kernel_size(rate, target) <= MAX_RESAMPLE_KERNEL


# ---------------------------------------------------------------------------------------- through the CLI
def _folder_of_pngs(root, bomb_bytes):
    folder = root / "imgs"
    (folder / "digits").mkdir(parents=True)
    for i in range(5):
        Image.new("L", (20, 20), 50 * i).save(folder / "digits" / f"{i}.png")
    (folder / "digits" / "bomb.png").write_bytes(bomb_bytes)
    return folder


def _folder_of_wavs(root):
    folder = root / "wavs"
    (folder / "tone").mkdir(parents=True)
    for i in range(5):
        sf.write(folder / "tone" / f"{i}.wav", np.full(SR // 4, 0.1 * (i + 1), np.float32), SR, subtype="PCM_16")
    wav_claiming_rate(folder / "tone" / "one_hz.wav", 1)
    return folder


def _tokenize(args, out, capsys):
    from pipelines.cli import main

    rc = main(["tokenize", "--raw", *args, "--out", str(out), "--quiet"])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_cli_tokenize_skips_the_bad_file_and_tokenizes_the_rest(tmp_path, caplog, capsys, kind, bomb_bytes):
    if kind == "image":
        folder, bad, reason = _folder_of_pngs(tmp_path, bomb_bytes), "bomb.png", "900,000,000 pixels, over the 67,108,864-pixel"
        args = ["--levels", "2", "--dataset", str(folder)]
    else:
        folder, bad, reason = _folder_of_wavs(tmp_path), "one_hz.wav", "sample rate 1 Hz is outside 1000..768000 Hz"
        args = ["--dataset", str(folder)]
    with caplog.at_level(logging.WARNING, logger="vqgen.data"):
        rc, out = _tokenize(args, tmp_path / "tokens", capsys)
    assert rc == 0 and "Traceback" not in out.err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "vqgen.data"]
    assert len(warnings) == 1
    assert f"skipped 1 unreadable {kind} file(s)" in warnings[0]
    assert f"{bad}: " in warnings[0] and reason in warnings[0]
    counts = json.loads((tmp_path / "tokens" / "tokens.json").read_text())["counts"]
    assert counts["train"] + counts["test"] == 5 and counts["test"] >= 1  # every good file, nothing else

    rc, out = _tokenize([*args, "--strict"], tmp_path / "strict", capsys)
    assert rc == 2 and "Traceback" not in out.err
    assert out.err.startswith("vqgen tokenize: error: ")
    assert bad in out.err and reason in out.err and "drop --strict" in out.err
    assert not (tmp_path / "strict" / "tokens.json").exists()


def test_load_data_skips_a_bomb_among_hub_rows(tmp_path, caplog, bomb_bytes):
    """The Hub path (a local parquet folder) applies the same limits to encoded image cells."""
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    cells = [{"bytes": bomb_bytes, "path": "bomb.png"}]
    for i in range(4):
        Image.new("L", (8, 8), 60 * i).save(tmp_path / f"{i}.png")
        cells.append({"bytes": (tmp_path / f"{i}.png").read_bytes(), "path": f"{i}.png"})
    ds = Dataset.from_dict({"image": cells, "label": [0, 1, 0, 1, 0]},
                           features=Features({"image": HFImage(), "label": Value("int64")}))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "data" / "train-00000.parquet"))
    with caplog.at_level(logging.WARNING, logger="vqgen.data"):
        s = load_data(DataSpec(str(tmp_path / "hub"), modality="image", test_fraction=0.25))
        assert len(s.train) + len(s.test) == 5  # rows are read when asked for: the bomb is met then
        read = [s.train.read_item(i) for i in range(len(s.train))] + [s.test.read_item(i) for i in range(len(s.test))]
        assert sum(r is None for r in read) == 1
        report_skips(s)
    assert "skipped 1 unreadable image file(s)" in caplog.text and "bomb.png: image is 900,000,000 pixels" in caplog.text
