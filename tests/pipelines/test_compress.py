"""Lossless compression with a prior-driven range coder: exact round trips, size vs ideal, clear errors."""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

import pipelines.likelihood.compress as compress_mod
from pipelines.data.audio_io import read_audio
from pipelines.likelihood.compress import (
    compress_files,
    compress_grids,
    compression_stats,
    decompress_file,
    decompress_grids,
    read_header,
)
from pipelines.likelihood.score import encode_batch, score_grids
from prior import PriorConfig, PriorNet, build_prior
from tokenizers_vq import RawCodec, build_tokenizer, quantize_raw


class TinyCausalNet(PriorNet):
    """A test-local causal net (GRU over the shifted sequence) whose logits depend on the context.

    ``forward`` runs the whole sequence at once and ``step`` one position with a hidden-state cache, so the
    two paths agree only up to floating-point rounding: exactly the situation compression must survive.
    """

    supports_cache = True

    def __init__(self, config: PriorConfig, use_cache: bool = True):
        super().__init__(config)
        self.supports_cache = use_cache
        V, d = config.vocab_size, 8
        self.emb = nn.Embedding(V + 1, d)  # index V = start-of-sequence
        self.pos = nn.Parameter(torch.randn(config.seq_len, d))
        self.lab = nn.Embedding(config.num_classes + 1, d) if config.num_classes else None
        self.rnn = nn.GRU(d, 16, batch_first=True)
        self.head = nn.Linear(16, V)

    def _inp(self, prev: torch.Tensor, pos: torch.Tensor | int, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.emb(prev) + self.pos[pos]
        if self.lab is not None:
            h = h + (self.lab(labels)[:, None] if h.dim() == 3 else self.lab(labels))
        return h

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        B, L = x.shape
        prev = torch.cat([torch.full((B, 1), self.config.vocab_size, dtype=torch.long), x[:, :-1]], 1)
        out, _ = self.rnn(self._inp(prev, torch.arange(L), labels))
        return 3 * self.head(out)  # sharper than init so that context matters a lot

    def init_cache(self, batch_size: int, device: torch.device) -> dict:
        return {"h": None}

    def step(self, cache: dict, x: torch.Tensor, pos: int, labels: torch.Tensor | None) -> torch.Tensor:
        prev = x[:, pos - 1] if pos else torch.full((x.shape[0],), self.config.vocab_size, dtype=torch.long)
        out, cache["h"] = self.rnn(self._inp(prev, pos, labels)[:, None], cache["h"])
        return 3 * self.head(out[:, 0])


def tiny_causal_prior(shape=(3, 5), vocab=7, num_classes=0, use_cache=True, seed=0):
    torch.manual_seed(seed)
    prior = build_prior(arch="histogram", vocab_size=vocab, shape=shape, num_classes=num_classes)
    prior.net = TinyCausalNet(prior.config, use_cache)
    return prior.eval()


def fitted_histogram(tokens, labels=None, vocab=None, num_classes=0):
    prior = build_prior(arch="histogram", vocab_size=vocab, shape=tuple(tokens.shape[1:]), num_classes=num_classes)
    prior.net.fit(tokens.reshape(len(tokens), -1), labels)
    return prior.eval()


def rand_tokens(n, shape, vocab, seed=0):
    return torch.randint(0, vocab, (n, *shape), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("shape,vocab", [((2, 3), 3), ((5,), 17), ((4, 4), 300), ((1, 1), 2)])
def test_histogram_round_trip(shape, vocab):
    tokens = rand_tokens(20, shape, vocab)
    prior = fitted_histogram(tokens, vocab=vocab)
    out = decompress_grids(prior, compress_grids(prior, tokens))
    assert out.tokens.dtype == torch.int64 and torch.equal(out.tokens, tokens) and out.labels is None


def test_conditional_histogram_round_trip_with_unknown_labels():
    tokens = rand_tokens(30, (3, 4), 6, seed=1)
    labels = torch.arange(30) % 3
    prior = fitted_histogram(tokens, labels, vocab=6, num_classes=3)
    labels = labels.clone()
    labels[::7] = -1  # unknown label: coded with the null-label table
    out = decompress_grids(prior, compress_grids(prior, tokens, labels, chunk_size=4))
    assert torch.equal(out.tokens, tokens) and torch.equal(out.labels, labels)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("shape,num_classes", [((3, 5), 0), ((11,), 3), ((2, 2), 2)])
def test_context_dependent_prior_round_trip(use_cache, shape, num_classes):
    prior = tiny_causal_prior(shape, vocab=7, num_classes=num_classes, use_cache=use_cache)
    x = prior.sample(13, labels=(torch.arange(13) % num_classes) if num_classes else None,
                     generator=torch.Generator().manual_seed(0))
    # the logits really depend on the context (otherwise this is just a histogram test)
    y = x.clone().reshape(13, -1)
    y[:, 0] = (y[:, 0] + 1) % 7
    lab = (torch.arange(13) % num_classes) if num_classes else None
    a = prior(x, lab).reshape(13, -1, 7)[:, -1]
    b = prior(y.reshape(x.shape), lab).reshape(13, -1, 7)[:, -1]
    assert (a - b).abs().max() > 1e-3
    data = compress_grids(prior, x, lab, chunk_size=5)  # 5 does not divide 13: a short last chunk
    out = decompress_grids(prior, data)
    assert torch.equal(out.tokens, x)


REAL_ARCHS = {  # tiny settings for whichever parallel-written architectures exist
    "transformer": dict(n_layer=1, n_head=2, d_model=16),
    "sparse_transformer": dict(n_layer=1, n_head=2, d_model=16),
    "lstm": dict(lstm_hidden=16, lstm_layers=1),
    "made": dict(made_hidden=(32,)),
    "wavenet": dict(residual_channels=8, skip_channels=8, dilation_cycle=3),
    "pixelcnn": dict(pixelcnn_layers=2, pixelcnn_channels=8),
}


@pytest.mark.parametrize("arch", sorted(REAL_ARCHS))
def test_real_arch_round_trip(arch):
    torch.manual_seed(0)
    prior = build_prior(arch=arch, vocab_size=5, shape=(3, 4), num_classes=2, **REAL_ARCHS[arch]).eval()
    tokens, labels = rand_tokens(6, (3, 4), 5, seed=3), torch.tensor([0, 1, 0, 1, -1, 1])
    assert torch.equal(decompress_grids(prior, compress_grids(prior, tokens, labels, chunk_size=4)).tokens, tokens)


# ---------------------------------------------------------------------------------------------- size
def test_size_close_to_ideal_code_length_on_fitted_histogram():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(64, 16, generator=g), -1)  # a skewed table per position
    tokens = torch.multinomial(probs, 400, replacement=True, generator=g).T.reshape(400, 8, 8)
    prior = fitted_histogram(tokens, vocab=16)
    stats = compression_stats(prior, tokens)
    # the ideal code length is the model's NLL in bits (same numbers as scoring)
    nll_bits = score_grids(prior, tokens).sum().item() / math.log(2)
    assert stats.ideal_bits == pytest.approx(nll_bits, rel=1e-9)
    # range coder: within 0.5% + a few words of flushing of the ideal
    assert 8 * stats.payload_bytes <= stats.ideal_bits * 1.005 + 64
    assert 8 * stats.payload_bytes >= stats.ideal_bits - 1  # cannot beat the model (sanity of accounting)
    assert stats.file_bytes - stats.payload_bytes < 80  # the header is small
    assert stats.bits_per_dim_ideal == pytest.approx(nll_bits / (400 * 64))
    # what `vqgen compress` prints: its own file only (PNG / gzip of the grids are bench.baselines)
    assert set(stats.to_dict()) == {"n", "seq_len", "dims_per_input", "file_bytes", "payload_bytes",
                                    "ideal_bits", "payload_overhead_percent", "bits_per_dim_file",
                                    "bits_per_dim_ideal", "kbit_per_second"}
    data = compress_grids(prior, tokens)
    assert len(data) == stats.file_bytes


# ---------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def packed():
    tokens = rand_tokens(40, (4, 4), 9, seed=2)
    prior = fitted_histogram(tokens, vocab=9)
    return prior, tokens, compress_grids(prior, tokens, torch.arange(40) % 4)


def test_truncated_and_corrupted_are_clear_errors(packed):
    prior, _, data = packed
    for cut in (len(data) - 1, len(data) // 2, 10, 5):
        with pytest.raises(ValueError, match="truncated"):
            decompress_grids(prior, data[:cut], name="x.vqz")
    for i in range(4, len(data)):  # every single-byte change after the magic is caught before decoding
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(ValueError, match="corrupted"):
            decompress_grids(prior, bytes(bad))
    with pytest.raises(ValueError, match="not a vqgen compressed file"):
        decompress_grids(prior, b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="trailing"):
        decompress_grids(prior, data + b"\0")


def test_wrong_prior_is_a_clear_error(packed):
    prior, tokens, data = packed
    other = fitted_histogram(rand_tokens(40, (4, 4), 9, seed=99), vocab=9)  # same config, other weights
    with pytest.raises(ValueError, match="different prior"):
        decompress_grids(other, data)
    other_shape = fitted_histogram(rand_tokens(40, (4, 5), 9), vocab=9)
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        decompress_grids(other_shape, data)


def test_decoder_divergence_is_caught_by_the_token_checksum():
    """A prior whose probabilities change between compress and decompress (here: a non-weight attribute,
    standing in for a device or dtype change) must give a clear error, not silently wrong tokens."""
    tokens = rand_tokens(50, (4, 4), 9, seed=5)
    prior = fitted_histogram(tokens, vocab=9)
    data = compress_grids(prior, tokens)
    forward, step = prior.net.forward, prior.net.step
    prior.net.forward = lambda x, labels: forward(x, labels).roll(1, -1)  # same weights, other function
    prior.net.step = lambda cache, x, pos, labels: step(cache, x, pos, labels).roll(1, -1)
    with pytest.raises(ValueError, match="checksum"):
        decompress_grids(prior, data)


def test_header_round_trips_metadata(packed):
    prior, tokens, _ = packed
    data = compress_grids(prior, tokens, metadata={"names": ["a.png"], "k": 1})
    h = read_header(data)
    assert h.metadata == {"names": ["a.png"], "k": 1} and h.n == 40 and h.shape == (4, 4) and h.labels is None
    assert data[:4] == b"VQGZ" and struct.unpack_from("<B", data, 4)[0] == 2


def _as_version(data: bytes, version: int, plain_meta: bool) -> bytes:
    """The same container rewritten with another version byte (and, for version 1, its metadata as plain JSON),
    its CRC made good again: what an older (or newer) vqgen would have written."""
    h = read_header(data)
    meta = zlib.compress(json.dumps(h.metadata, sort_keys=True, separators=(",", ":")).encode(), 9)
    start = data.index(struct.pack("<I", len(meta)) + meta)
    new_meta = json.dumps(h.metadata, sort_keys=True).encode() if plain_meta else meta
    body = data[:4] + bytes([version]) + data[5:start] + struct.pack("<I", len(new_meta)) + new_meta \
        + data[start + 4 + len(meta):-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_1_files_still_decode_and_a_newer_version_is_named(packed):
    """Format 2 deflates the metadata (per-file names and lengths); files written by format 1 (plain JSON) decode
    to the same tokens, and a file from a newer vqgen is refused as such, not as corruption."""
    prior, tokens, _ = packed
    meta = {"names": [f"clip_{i:04d}.wav" for i in range(40)], "lengths": [16000] * 40}
    data = compress_grids(prior, tokens, metadata=meta)
    old = _as_version(data, 1, plain_meta=True)
    assert len(old) > len(data) + 300  # the plain names cost what the deflated ones save
    assert read_header(old).metadata == meta and torch.equal(decompress_grids(prior, old).tokens, tokens)
    with pytest.raises(ValueError, match="container format 3, newer than this vqgen"):
        decompress_grids(prior, _as_version(data, 3, plain_meta=False))


def test_bad_inputs_to_compress(packed):
    prior, tokens, _ = packed
    with pytest.raises(ValueError, match="range"):
        compress_grids(prior, tokens + 9)
    with pytest.raises(ValueError, match="shape"):
        compress_grids(prior, tokens[:, :3])
    with pytest.raises(ValueError, match="labels"):
        compress_grids(prior, tokens, torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- files
def _write_images(folder, n, size, mode, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        arr[: size[0] // 2] //= 8  # some structure for the model to learn
        p = folder / f"img_{i}.png"
        Image.fromarray(arr, mode).save(p)
        paths.append(p)
    return paths


def _as_tensor(path, mode):
    a = np.asarray(Image.open(path).convert(mode), dtype=np.float32) / 255
    return torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)


def _raw_image_setup(tmp_path, mode="L", levels=256, n=5):
    """Image files, their raw codec, their grids and a histogram prior fitted on those grids."""
    paths = _write_images(tmp_path / "in", n, (6, 8), mode)
    x = torch.stack([_as_tensor(p, mode) for p in paths])
    codec = RawCodec("image", levels, tuple(x.shape[1:]))
    grids = quantize_raw(x, levels)
    return paths, x, codec, grids, fitted_histogram(grids, vocab=levels)


@pytest.mark.parametrize("mode,levels", [("L", 256), ("L", 2), ("RGB", 256)])
def test_raw_files_round_trip_exactly(tmp_path, mode, levels):
    paths, x, codec, grids, prior = _raw_image_setup(tmp_path, mode, levels)
    assert tuple(grids.shape[1:]) == codec.token_shape() and torch.equal(encode_batch(codec, x), grids)
    stats = compress_files(prior, codec, paths, tmp_path / "out" / "a.vqz")
    assert stats.n == 5 and stats.dims_per_input == x[0].numel()
    meta = read_header((tmp_path / "out" / "a.vqz").read_bytes()).metadata
    assert meta["codec_fingerprint"] == codec.fingerprint and meta["names"] == [p.name for p in paths]
    written = decompress_file(prior, codec, tmp_path / "out" / "a.vqz", tmp_path / "dec")
    assert [p.name for p in written] == [p.name for p in paths]
    back = torch.stack([_as_tensor(p, mode) for p in written])
    assert torch.equal(quantize_raw(back, levels), grids)  # exact at the chosen quantization
    if levels == 256:
        assert torch.equal(back, x)  # 8-bit: bit-identical pixels


def test_raw_file_errors(tmp_path):
    paths = _write_images(tmp_path, 2, (6, 8), "L")
    codec = RawCodec("image", 256, (1, 6, 8))
    prior = fitted_histogram(rand_tokens(4, (6, 8), 256), vocab=256)
    odd = _write_images(tmp_path / "odd", 1, (6, 9), "L")
    with pytest.raises(ValueError, match=r"img_0.png is 9x6 \(WxH\) but the codec expects 8x6"):
        compress_files(prior, codec, odd, tmp_path / "a.vqz")
    tall = _write_images(tmp_path / "odd", 1, (7, 8), "L", seed=1)
    tall[0] = tall[0].rename(tmp_path / "odd" / "tall.png")
    with pytest.raises(ValueError, match=r"tall.png is 8x7 .*resize"):
        compress_files(prior, codec, [paths[0], tall[0]], tmp_path / "a.vqz")
    (tmp_path / "notimg.png").write_text("hello")
    with pytest.raises(ValueError, match="notimg.png is not a readable image"):
        compress_files(prior, codec, [paths[0], tmp_path / "notimg.png"], tmp_path / "a.vqz")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        compress_files(prior, codec, [paths[0], tmp_path / "missing.png"], tmp_path / "a.vqz")
    audio_prior, audio = fitted_histogram(rand_tokens(4, (16,), 256), vocab=256), RawCodec("audio", 256, (16,), 8000)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        compress_files(audio_prior, audio, [tmp_path / "missing.wav"], tmp_path / "a.vqz")
    with pytest.raises(ValueError, match=r"grids of shape \(6, 8\) but the prior models \(4, 4\)"):
        compress_files(fitted_histogram(rand_tokens(4, (4, 4), 256), vocab=256), codec, paths, tmp_path / "a.vqz")
    with pytest.raises(ValueError, match="no input files"):
        compress_files(prior, codec, [], tmp_path / "a.vqz")
    assert not (tmp_path / "a.vqz").exists()


def _tiny_image_tokenizer(seed=0):
    torch.manual_seed(seed)
    return build_tokenizer(modality="image", quantizer="fsq", channels=1, image_size=8, downsample=4,
                           hidden_channels=4, num_res_blocks=1, latent_dim=4, fsq_levels=[3, 3]).eval()


def test_tokenizer_files_round_trip_tokens(tmp_path):
    tok = _tiny_image_tokenizer()
    paths = _write_images(tmp_path, 4, (8, 8), "L")
    x = torch.stack([_as_tensor(p, "L") for p in paths])
    tokens = tok.encode(x)
    prior = fitted_histogram(tokens, vocab=tok.vocab_size)
    stats = compress_files(prior, tok, paths, tmp_path / "t.vqz")
    assert stats.dims_per_input == 64 and stats.seq_len == 4
    assert torch.equal(decompress_grids(prior, (tmp_path / "t.vqz").read_bytes()).tokens, tokens)
    written = decompress_file(prior, tok, tmp_path / "t.vqz", tmp_path / "dec")
    back = torch.stack([_as_tensor(p, "L") for p in written])
    assert torch.allclose(back, tok.decode(tokens).clamp(0, 1), atol=1 / 255)  # the tokenizer's reconstruction


def _other_codec(kind):
    if kind == "tokenizer":  # same config, other weights
        return _tiny_image_tokenizer(seed=0), _tiny_image_tokenizer(seed=1)
    return RawCodec("image", 256, (1, 8, 8)), RawCodec("image", 2, (1, 8, 8))


@pytest.mark.parametrize("kind", ["tokenizer", "raw"])
def test_decompress_with_another_codec_is_refused_naming_both_fingerprints(tmp_path, kind):
    codec, other = _other_codec(kind)
    assert codec.fingerprint != other.fingerprint
    paths = _write_images(tmp_path, 2, (8, 8), "L")
    grids = encode_batch(codec, torch.stack([_as_tensor(p, "L") for p in paths]))
    prior = fitted_histogram(grids, vocab=max(codec.vocab_size, other.vocab_size))
    compress_files(prior, codec, paths, tmp_path / "t.vqz")
    with pytest.raises(ValueError, match=f"(?s)compressed with the codec {codec.fingerprint}.*codec given is "
                                         f"{other.fingerprint}.*pass the --tokenizer"):
        decompress_file(prior, other, tmp_path / "t.vqz", tmp_path / "dec")
    assert not (tmp_path / "dec").exists()
    (tmp_path / "g.vqz").write_bytes(compress_grids(prior, grids))
    with pytest.raises(ValueError, match="compress_grids, not files"):
        decompress_file(prior, codec, tmp_path / "g.vqz", tmp_path / "dec")


# ---------------------------------------------------------------------------------------------- audio files
AUDIO_RATE, AUDIO_FILES = 8000, (("a.wav", 8000, 600), ("b.wav", 16000, 900))  # name, file rate, samples


def _write_waves(folder):
    """Random-ish (noisy tone) mono WAVs: one at the codec rate, one at twice it; lengths not multiples of T."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = np.random.default_rng(0), []
    for name, rate, n in AUDIO_FILES:
        t = np.arange(n) / rate
        wave = 0.5 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.1, 1, n) + 0.1 * rng.standard_normal(n)
        sf.write(folder / name, wave.clip(-0.9, 0.9).astype(np.float32), rate)  # 16-bit PCM
        paths.append(folder / name)
    return paths


def _audio_codec(kind, clip):
    if kind == "raw":
        return RawCodec("audio", 256, (clip,), AUDIO_RATE)
    torch.manual_seed(0)
    return build_tokenizer(modality="audio", autoencoder="mulaw", quantizer="fsq", hidden_channels=4, num_res_blocks=1, latent_dim=4,
                           fsq_levels=[3, 3], sample_rate=AUDIO_RATE, clip_samples=clip).eval()


@pytest.mark.parametrize("kind", ["raw", "tokenizer"])
def test_audio_files_round_trip(tmp_path, kind):
    clip = 128
    codec = _audio_codec(kind, clip)
    paths = _write_waves(tmp_path / "in")
    waves = [read_audio(p, target_rate=AUDIO_RATE)[0] for p in paths]  # what the codec sees, at its rate
    assert [len(w) for w in waves] == [600, 450]  # b.wav resampled 16 kHz -> 8 kHz
    clips = torch.cat([torch.nn.functional.pad(w, (0, -len(w) % clip)).reshape(-1, clip) for w in waves])
    grids = encode_batch(codec, clips)
    assert grids.shape == (9, *codec.token_shape())  # 5 + 4 clips, the last of each zero-padded
    prior = fitted_histogram(grids, vocab=codec.vocab_size)
    stats = compress_files(prior, codec, paths, tmp_path / "a.vqz")
    assert stats.n == 9 and stats.dims_per_input == clip and stats.kbit_per_second > 0
    data = (tmp_path / "a.vqz").read_bytes()
    meta = read_header(data).metadata
    assert meta["names"] == ["a.wav", "b.wav"] and meta["samples"] == [600, 450] and meta["clips"] == [5, 4]
    assert meta["codec_fingerprint"] == codec.fingerprint and meta["sample_rate"] == AUDIO_RATE
    assert torch.equal(decompress_grids(prior, data).tokens, grids)  # tokens exact
    written = decompress_file(prior, codec, tmp_path / "a.vqz", tmp_path / "dec")
    assert [p.name for p in written] == ["a.wav", "b.wav"]
    recon = codec.decode(grids).reshape(-1)
    for path, wave, start in zip(written, waves, (0, 5 * clip)):
        back, rate = sf.read(path, dtype="float32")
        assert rate == AUDIO_RATE and back.shape == wave.shape  # trimmed to the (resampled) input length
        assert np.abs(back - recon[start: start + len(wave)].clamp(-1, 1).numpy()).max() <= 1 / 32768
        if kind == "raw":  # exact at mu-law quantization
            assert torch.equal(quantize_raw(torch.from_numpy(back), 256), quantize_raw(wave, 256))


def test_random_order_made_is_refused():
    from prior import build_prior

    prior = build_prior(arch="made", vocab_size=3, shape=(2, 2), made_hidden=(8,), made_order="random")
    with pytest.raises(ValueError, match="made_order='raster'"):
        compress_grids(prior, torch.zeros(1, 2, 2, dtype=torch.long))


def test_auto_chunk_codes_everything_together_unless_a_kv_cache_would_be_too_big():
    pix = build_prior(PriorConfig(arch="pixelcnn", vocab_size=2, shape=(4, 4), pixelcnn_layers=1, pixelcnn_channels=4))
    assert compress_mod.auto_chunk(pix, 10) == 10 and compress_mod.auto_chunk(pix, 5000) == compress_mod.MAX_CHUNK
    big = build_prior(PriorConfig(arch="transformer", vocab_size=4, shape=(1024,), n_layer=8, d_model=512, n_head=4))
    per_grid = 2 * 8 * 1024 * 512 * 4  # keys and values of 8 layers, fp32: all the cache holds per grid
    assert compress_mod.cache_bytes_per_grid(big) == per_grid
    assert compress_mod.auto_chunk(big, 5000) == compress_mod.CACHE_BUDGET_BYTES // per_grid == 8
    deep = build_prior(PriorConfig(arch="wavenet", vocab_size=4, shape=(64,), residual_channels=64, dilation_cycle=12,
                                   n_cycles=3))
    queues = 3 * 4095 * 64 * 4  # one queue of `dilation` past activations per layer, plus a few [C] vectors
    assert queues <= compress_mod.cache_bytes_per_grid(deep) < queues + 4096
    assert compress_mod.auto_chunk(deep, 5000) == 85
    tokens = torch.randint(0, 2, (7, 4, 4))
    data = compress_grids(pix, tokens)
    assert read_header(data).chunk == 7 and torch.equal(decompress_grids(pix, data).tokens, tokens)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        compress_grids(pix, tokens, chunk_size=0)
