"""The modality objects: registry, name semantics, input checks, sizes, raw grids, file round trips, previews,
metrics and the codecs that expose them."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from tokenizers_vq import RawCodec, TokenizerConfig, build_tokenizer
from tokenizers_vq.modality import (
    AUDIO,
    IMAGE,
    AudioFileError,
    Modality,
    get_modality,
    modality_for_ndim,
    modality_names,
    register_modality,
)
from tokenizers_vq.modality import base as modality_base
from tokenizers_vq.modality.audio import decode_audio

TINY_IMAGE = dict(modality="image", quantizer="fsq", channels=1, image_size=8, hidden_channels=4, latent_dim=2,
                  fsq_levels=[3, 3], downsample=4)
TINY_AUDIO = dict(modality="audio", autoencoder="mulaw", quantizer="fsq", hidden_channels=4, latent_dim=2, fsq_levels=[3, 3],
                  clip_samples=512, sample_rate=8000)


# ---------------------------------------------------------------------------------------------- registry and names
def test_registry_lookup_and_unknown_name():
    assert modality_names() == ("image", "audio")
    assert get_modality("image") is IMAGE and get_modality("audio") is AUDIO
    assert get_modality(AUDIO) is AUDIO  # an object passes through
    with pytest.raises(ValueError, match=r"modality must be one of \('image', 'audio'\), got 'video'"):
        get_modality("video")
    with pytest.raises(ValueError, match="got None"):
        get_modality(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="taken"):
        register_modality(type(IMAGE)())
    assert modality_for_ndim(3) is IMAGE and modality_for_ndim(4) is IMAGE
    assert modality_for_ndim(1) is AUDIO and modality_for_ndim(2) is AUDIO
    with pytest.raises(ValueError, match="no modality takes inputs with 6 axes"):
        modality_for_ndim(6)


def test_a_modality_stands_in_for_its_name():
    assert str(IMAGE) == "image" and f"{AUDIO}" == "audio"
    assert IMAGE == "image" and "image" == IMAGE and AUDIO == "audio"
    assert IMAGE != "audio" and "audio" != IMAGE and IMAGE != AUDIO
    assert IMAGE != 3 and IMAGE is not None
    assert hash(IMAGE) == hash("image") and {"image": 1, "audio": 2}[AUDIO] == 2
    assert AUDIO in ("image", "audio") and "image" in {IMAGE}
    assert repr(IMAGE) == "get_modality('image')"
    # copies and pickles are the registered singleton
    assert pickle.loads(pickle.dumps(AUDIO)) is AUDIO and copy.deepcopy(IMAGE) is IMAGE
    with pytest.raises(TypeError):
        json.dumps(IMAGE)  # records store str(m); an object slipping into JSON is a loud error


def test_a_new_modality_is_one_registered_subclass():
    class Toy(Modality):
        name = "toy"
        input_ndim = 5

    toy = register_modality(Toy())
    try:
        assert get_modality("toy") is toy and modality_names()[-1] == "toy" and modality_for_ndim(6) is toy
    finally:
        del modality_base._REGISTRY["toy"]
    assert "toy" not in modality_names()


# ---------------------------------------------------------------------------------------------- codecs expose it
def test_codecs_expose_the_object_and_records_keep_the_name():
    torch.manual_seed(0)
    itok, atok = build_tokenizer(**TINY_IMAGE), build_tokenizer(**TINY_AUDIO)
    assert itok.modality is IMAGE and atok.modality is AUDIO and itok.modality == "image"
    assert itok.input_shape == IMAGE.input_shape(itok.config) == (1, 8, 8)
    assert atok.input_shape == (512,) and atok.sample_rate == 8000 and itok.sample_rate is None
    assert atok.frame_rate == 8000 / 64 and itok.frame_rate is None and itok.bitrate is None
    for tok in (itok, atok):
        rec = tok.record()
        assert type(rec["modality"]) is str and json.loads(json.dumps(rec))["modality"] == str(tok.modality)
    raw = RawCodec("audio", 256, (100,), 8000)
    assert raw.modality is AUDIO and RawCodec(IMAGE, 2, (1, 4, 4)).modality is IMAGE
    assert repr(raw) == "RawCodec(modality='audio', levels=256, input_shape=(100,), sample_rate=8000)"
    # the fingerprint hashes the config with the plain name, as folders saved before the object existed did
    cfg = {"class_name": "RawCodec", "modality": "audio", "levels": 256, "input_shape": [100], "sample_rate": 8000}
    assert raw.codec_config() == cfg and type(raw.codec_config()["modality"]) is str
    assert raw.fingerprint == hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:32]
    with pytest.raises(ValueError, match=r"modality must be one of \('image', 'audio'\)"):
        RawCodec("text", 256, (4,))


# ---------------------------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("x,match", [
    (torch.rand(2, 8, 8), r"image tokenizer expects \[B, C, H, W\], got shape \(2, 8, 8\)"),
    (torch.rand(2, 3, 8, 8), "1-channel images but got 3 channels"),
    (torch.rand(2, 1, 8, 6), r"divisible by downsample=4, got \(8, 6\)"),
    (torch.rand(2, 1, 8, 8) * 255, r"image tokenizer input must lie in \[0, 1\].*scale 8-bit images by 1/255"),
    (torch.full((1, 1, 8, 8), float("nan")), "NaN"),
])
def test_image_checks(x, match):
    with pytest.raises(ValueError, match=match):
        IMAGE.check_input(x, (1, 8, 8), downsample=4)


@pytest.mark.parametrize("x,match", [
    (torch.rand(2, 1, 64), r"audio tokenizer expects a waveform \[B, T\], got shape \(2, 1, 64\)"),
    (torch.zeros(2, 0), "audio tokenizer got a 0-length clip"),
    (torch.rand(1, 64) * 4 - 2, r"audio tokenizer input must lie in \[-1, 1\].*peak-normalise the audio"),
])
def test_audio_checks(x, match):
    with pytest.raises(ValueError, match=match):
        AUDIO.check_input(x, (64,), downsample=64)


def test_checks_pass_in_range_inputs_and_skip_values_on_request():
    IMAGE.check_input(torch.rand(2, 1, 8, 12), (1, 8, 8), downsample=4)  # H, W any multiple of d
    AUDIO.check_input(torch.rand(2, 100) * 2 - 1, (64,))  # any length
    IMAGE.check_input(torch.rand(1, 1, 4, 4) * 9, (1, 4, 4), values=False)
    with pytest.raises(ValueError, match=r"this raw codec was built for 1-channel"):
        IMAGE.check_input(torch.rand(1, 3, 4, 4), (1, 4, 4), who="raw codec")


# ---------------------------------------------------------------------------------------------- sizes
def test_sizes_and_input_shapes():
    assert IMAGE.input_shape({"channels": 3, "image_size": 16}) == (3, 16, 16)
    assert IMAGE.sizes((3, 16, 16)) == {"channels": 3, "image_size": 16}
    assert AUDIO.input_shape({"sample_rate": 8000, "clip_samples": 400}) == (400,)
    assert AUDIO.sizes((400,), 8000) == {"sample_rate": 8000, "clip_samples": 400}
    cfg = TokenizerConfig()
    assert IMAGE.input_shape() == (cfg.channels, cfg.image_size, cfg.image_size)  # the config's defaults
    assert AUDIO.input_shape() == (cfg.clip_samples,)
    assert set(IMAGE.size_fields) <= set(TokenizerConfig.__dataclass_fields__)
    assert set(AUDIO.size_fields) <= set(TokenizerConfig.__dataclass_fields__)
    assert (IMAGE.timed, AUDIO.timed) == (False, True) and (IMAGE.grid_ndim, AUDIO.grid_ndim) == (2, 1)


# ---------------------------------------------------------------------------------------------- raw grids
def test_raw_grids_round_trip_and_refuse_what_they_cannot_hold():
    x = torch.rand(2, 3, 4, 5)
    for levels in (2, 256):
        q = IMAGE.quantize_raw(x, levels)
        assert q.shape == (2, 4, 15) and IMAGE.raw_token_shape((3, 4, 5)) == (4, 15)
        assert torch.equal(IMAGE.quantize_raw(IMAGE.dequantize_raw(q, levels, (3, 4, 5)), levels), q)
    w = torch.linspace(-1, 1, 50)[None]
    q = AUDIO.quantize_raw(w, 256)
    assert q.shape == (1, 50) and (AUDIO.dequantize_raw(q, 256, (50,)) - w).abs().max() < 0.05
    assert IMAGE.check_raw(2, (1, 4, 4), 16000) is None and AUDIO.check_raw(256, (50,), 8000) == 8000
    with pytest.raises(ValueError, match="levels 2 .* or 256"):
        IMAGE.check_raw(3, (1, 4, 4), None)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        IMAGE.check_raw(2, (2, 4, 4), None)
    with pytest.raises(ValueError, match="mu-law.*levels=2"):
        AUDIO.check_raw(2, (50,), 8000)
    with pytest.raises(ValueError, match="positive sample_rate"):
        AUDIO.check_raw(256, (50,), None)
    with pytest.raises(ValueError, match=r"raw image tokens must be \[B, 4, W\*3\]"):
        IMAGE.raw_input_shape(torch.zeros(1, 4, 7, dtype=torch.long), (3, 4, 5))


# ---------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(tmp_path, channels):
    x = torch.randint(0, 256, (channels, 6, 9)).float() / 255  # exactly representable in 8 bits
    path = tmp_path / f"x{IMAGE.file_suffix}"
    IMAGE.write(x, path)
    back = IMAGE.read(path, (channels, 6, 9))
    assert back.dtype == torch.float32 and torch.equal(back, x)
    assert torch.equal(IMAGE.read(path.read_bytes(), (channels, 6, 9)), x)  # encoded bytes too
    if channels == 3:  # converted to the codec's channels (ITU-R 601 luma via PIL)
        assert IMAGE.read(path, (1, 6, 9)).shape == (1, 6, 9)


def test_image_read_errors(tmp_path):
    IMAGE.write(torch.rand(1, 6, 9), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"a.png is 9x6 \(WxH\) but the codec expects 8x6; resize it"):
        IMAGE.read(tmp_path / "a.png", (1, 6, 8))
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="b.png is not a readable image"):
        IMAGE.read(tmp_path / "b.png", (1, 6, 8))
    with pytest.raises(FileNotFoundError, match="c.png: no such file"):
        IMAGE.read(tmp_path / "c.png", (1, 6, 8))


def test_wav_round_trip_and_resampling(tmp_path):
    t = torch.arange(800) / 8000
    wave = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    path = tmp_path / f"a{AUDIO.file_suffix}"
    AUDIO.write(wave, path, 8000)
    data, rate = sf.read(path, dtype="int16")
    assert rate == 8000 and data.shape == (800,)  # 16-bit PCM at the given rate
    back = AUDIO.read(path, (800,), 8000)
    assert back.dtype == torch.float32 and back.shape == (800,) and (back - wave).abs().max() <= 1 / 32768
    assert AUDIO.read(path, (800,), 16000).shape == (1600,)  # resampled to the codec's rate
    assert torch.equal(AUDIO.read(path.read_bytes(), (800,), 8000), back)


def test_wav_read_is_mono_and_peak_normalised(tmp_path):
    stereo = np.stack([np.full(100, 2.0), np.zeros(100)], axis=1).astype(np.float32)  # float WAV, peak 2
    sf.write(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    wave, rate, scale = decode_audio(tmp_path / "s.wav", 8000)
    assert rate == 8000 and scale == 1.0 and torch.allclose(wave, torch.ones(100))  # mean 1.0: no scaling needed
    sf.write(tmp_path / "p.wav", stereo * 2, 8000, subtype="FLOAT")
    wave, _, scale = decode_audio(tmp_path / "p.wav")
    assert scale == 0.5 and wave.abs().max() == 1.0


def test_audio_read_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match="empty.wav: the file is empty"):
        AUDIO.read(tmp_path / "empty.wav", (10,), 8000)
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1000, np.float32), 8000, format="WAV", subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes(buf.getvalue()[:500])
    with pytest.raises(AudioFileError, match="cut.wav: WAV file is truncated"):
        AUDIO.read(tmp_path / "cut.wav", (10,), 8000)
    (tmp_path / "junk.wav").write_bytes(b"RIFX" + bytes(100))
    with pytest.raises(AudioFileError, match="junk.wav: cannot decode audio"):
        AUDIO.read(tmp_path / "junk.wav", (10,), 8000)
    with pytest.raises(AudioFileError, match="gone.wav: no such file"):
        AUDIO.read(tmp_path / "gone.wav", (10,), 8000)
    with pytest.raises(ValueError, match="over the limit"):  # the data layer's header check runs before decoding
        def refuse(rate, frames, channels):
            raise ValueError(f"{frames} frames: over the limit")

        decode_audio(buf.getvalue(), 8000, check_header=refuse)


def test_pack_and_unpack_files():
    waves = [torch.rand(10) - 0.5, torch.rand(4) - 0.5, torch.rand(8) - 0.5]
    x, record = AUDIO.pack(waves, (4,), 8000)
    assert x.shape == (3 + 1 + 2, 4) and record == {"samples": [10, 4, 8], "clips": [3, 1, 2], "sample_rate": 8000}
    assert AUDIO.duration(record) == 22 / 8000
    back = AUDIO.unpack(x, json.loads(json.dumps(record)))  # the record survives JSON (a container header)
    assert all(torch.equal(a, b) for a, b in zip(back, waves))
    images = [torch.rand(1, 4, 4) for _ in range(3)]
    x, record = IMAGE.pack(images, (1, 4, 4))
    assert x.shape == (3, 1, 4, 4) and record == {} and IMAGE.duration(record) is None
    assert all(torch.equal(a, b) for a, b in zip(IMAGE.unpack(x, record), images))


# ---------------------------------------------------------------------------------------------- previews
def test_image_previews(tmp_path):
    x = torch.rand(10, 3, 8, 8)
    png = IMAGE.write_reconstructions(x, x.flip(0), tmp_path / "rec")
    assert png == tmp_path / "rec" / "reconstructions.png" == IMAGE.preview_path(tmp_path / "rec", "reconstructions")
    with Image.open(png) as im:  # 8 per row: 8 originals, their reconstructions, then 2 + 2; 2 px gaps; 4x
        assert im.size == ((8 * 10 + 2) * 4, (3 * 10 + 2) * 4)
    assert IMAGE.write_reconstructions(x[:2], x[:2], tmp_path / "r.png") == tmp_path / "r.png"
    grid = IMAGE.write_preview(x, tmp_path)
    assert grid == tmp_path / "grid.png" and grid.is_file()


def test_audio_previews(tmp_path):
    x = torch.rand(3, 800) - 0.5
    out = AUDIO.write_reconstructions(x, x * 0.5, tmp_path / "rec", 8000)
    assert out == tmp_path / "rec" == AUDIO.preview_path(tmp_path, "rec")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00_original.wav", "00_reconstruction.wav", "01_original.wav", "01_reconstruction.wav",
                     "02_original.wav", "02_reconstruction.wav", "spectrograms.png"]
    pic = AUDIO.write_preview(x, tmp_path, 8000, labels=["a", "b", "c"])
    assert pic == tmp_path / "spectrograms.png"
    with Image.open(pic) as im, Image.open(out / "spectrograms.png") as pairs:
        assert im.mode == pairs.mode == "RGB" and pairs.width == im.width  # two tiles per row in both


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_and_rates():
    x = torch.rand(2, 1, 8, 8)
    m = IMAGE.recon_metrics(x, x)
    assert set(m) == {"psnr", "ssim"} and m["psnr"] > 90 and m["ssim"] == pytest.approx(1.0)
    assert IMAGE.split_metrics(lambda: pytest.fail("images have no whole-split metric")) == {}
    t = torch.arange(2048) / 8000
    w = torch.stack([torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 500 * t)]) * 0.5
    m = AUDIO.recon_metrics(w + 0.01 * torch.randn(w.shape), w, 8000)
    assert set(m) == {"si_snr", "log_mel_l1"} and m["si_snr"] > 20
    torch.manual_seed(0)
    itok, atok = build_tokenizer(**TINY_IMAGE), build_tokenizer(**TINY_AUDIO)
    assert IMAGE.rate(itok, 1) == ("bits_per_image", itok.bits_per_input())
    assert AUDIO.rate(atok, 1) == ("kbps", atok.bitrate / 1000)


# ---------------------------------------------------------------------------------------------- ONNX export
def test_export_examples_and_axes():
    g = torch.Generator().manual_seed(0)
    x = IMAGE.example_input((3, 8, 8), 4, g)
    assert x.shape == (2, 3, 8, 8) and 0 <= x.min() and x.max() <= 1
    a = AUDIO.example_input((100,), 64, g)
    assert a.shape == (2, 128) and -1 <= a.min() and a.max() <= 1  # at least 2 tokens long
    xd, td = IMAGE.dynamic_axes(torch.zeros(2, 2, 2, dtype=torch.long), 4)
    assert set(xd) == {0, 2, 3} and set(td) == {0, 1, 2}  # batch, height and width
    xd, td = IMAGE.dynamic_axes(torch.zeros(2, 2, 2, dtype=torch.long), 4, spatial=False)
    assert set(xd) == set(td) == {0}
    xd, td = AUDIO.dynamic_axes(torch.zeros(2, 3, 4, dtype=torch.long), 64)
    assert set(xd) == set(td) == {0, 1}  # batch and time; the codebook axis stays static
    assert dict(AUDIO.trace_kwargs) == {"chunk_tokens": 0} and dict(IMAGE.trace_kwargs) == {}
