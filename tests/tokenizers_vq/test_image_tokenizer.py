"""Image tokenizers: shapes, ranges, round trips, save/load, config JSON, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer

QUANTIZERS = ["vq", "fsq", "gumbel"]


def tiny(quantizer: str, **kw):
    base = dict(modality="image", quantizer=quantizer, channels=1, image_size=16, hidden_channels=8, latent_dim=8,
                num_res_blocks=1, codebook_size=32, fsq_levels=[5, 4])
    base.update(kw)
    return build_tokenizer(TokenizerConfig(**base))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("downsample,channels,size", [(4, 1, 16), (8, 3, 32), (16, 1, 32)])
def test_encode_decode_shapes_and_ranges(quantizer, downsample, channels, size):
    tok = tiny(quantizer, downsample=downsample, channels=channels, image_size=size).eval()
    x = torch.rand(3, channels, size, size)
    codes = tok.encode(x)
    assert codes.dtype == torch.int64 and codes.shape == (3, size // downsample, size // downsample)
    assert tok.token_shape((channels, size, size)) == tuple(codes.shape[1:])
    assert 0 <= codes.min() and codes.max() < tok.vocab_size
    y = tok.decode(codes)
    assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1
    out = tok(x)
    assert out.recon.shape == x.shape and out.loss.dim() == 0 and torch.isfinite(out.loss)
    # encode -> decode equals the eval-mode forward reconstruction (indices -> codes -> output round trip)
    torch.testing.assert_close(out.recon, y, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.codes, codes)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_tokens_always_in_range_for_extreme_inputs(quantizer):
    tok = tiny(quantizer).eval()
    for x in (torch.zeros(2, 1, 16, 16), torch.ones(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()):
        c = tok.encode(x)
        assert 0 <= c.min() and c.max() < tok.vocab_size


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_straight_through_gradient_reaches_encoder(quantizer):
    tok = tiny(quantizer).train()
    out = tok(torch.rand(4, 1, 16, 16))
    out.loss.backward()
    enc_grads = [p.grad for n, p in tok.named_parameters() if "encoder" in n and p.grad is not None]
    assert enc_grads and any(g.abs().sum() > 0 for g in enc_grads)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_save_load_identical_tokens_and_reconstructions(tmp_path, quantizer):
    tok = tiny(quantizer)
    tok.train()
    tok(torch.rand(8, 1, 16, 16))  # k-means init / EMA / annealing state must survive the round trip
    tok.eval()
    x = torch.rand(4, 1, 16, 16)
    tok.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    again = load_tokenizer(str(tmp_path))
    assert again.config == tok.config
    assert torch.equal(again.encode(x), tok.encode(x))
    assert torch.equal(again.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["class_name"] == "Tokenizer" and raw["format_version"] == 2
    assert raw["quantizer"] == quantizer and raw["autoencoder"] == "vqvae" and "autoencoder_config" in raw


def test_config_json_round_trip_and_defaults():
    c = TokenizerConfig(quantizer="vq", codebook_size=128, fsq_levels=[8, 8])
    assert TokenizerConfig.from_json(c.to_json()) == c
    assert TokenizerConfig().vocab_size == 1000  # fsq [8, 5, 5, 5]
    assert TokenizerConfig(modality="audio").downsample == 320 and TokenizerConfig().downsample == 4
    assert TokenizerConfig(modality="audio", audio_head="logistic").downsample == 64  # the mu-law family
    with pytest.raises(ValueError, match="quantizer"):
        TokenizerConfig(quantizer="pq")
    with pytest.raises(ValueError, match="power of two"):
        TokenizerConfig(downsample=3)
    with pytest.raises(ValueError, match="unknown TokenizerConfig fields"):
        TokenizerConfig.from_dict({"modality": "image", "bogus": 1})


def test_wrong_channels_is_a_clear_error():
    tok = tiny("fsq").eval()
    with pytest.raises(ValueError, match="1-channel images but got 3 channels"):
        tok.encode(torch.rand(2, 3, 16, 16))


def test_values_outside_unit_range_are_rejected():
    tok = tiny("fsq").eval()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*1/255"):
        tok.encode(torch.rand(1, 1, 16, 16) * 255)
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 20\)"):
        tok.decode(torch.full((1, 4, 4), 20))


def test_load_from_folder_without_config_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_tokenizer(str(tmp_path))
    tiny("fsq").save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type for a corrupt file
        load_tokenizer(str(tmp_path / "t"))


def test_gumbel_temperature_anneals_and_kl_is_reported():
    tok = tiny("gumbel", gumbel_anneal_steps=10, gumbel_temperature_start=1.0, gumbel_temperature_end=0.1).train()
    q = tok.model.quantizer
    assert q.temperature == pytest.approx(1.0)
    for i in range(10):
        out = tok(torch.rand(2, 1, 16, 16))
        # exponential annealing, tau_i = 1.0 * 0.1 ** (i / 10), computed as a tensor (no host sync per step)
        assert out.metrics["temperature"].item() == pytest.approx(0.1 ** (i / 10))
    assert q.temperature == pytest.approx(0.1)
    tok(torch.rand(2, 1, 16, 16))
    assert q.temperature == pytest.approx(0.1)  # held at the end value after anneal_steps
    assert "kl" in out.metrics and out.metrics["kl"] >= 0


def test_fsq_with_binary_levels_gives_distinct_codes():
    # The library rejects a level of 2 unless its symmetry-preserving bound is on; the quantizer turns it on.
    tok = tiny("fsq", fsq_levels=[2, 2, 3])
    assert tok.vocab_size == 12
    x = torch.rand(4, 1, 16, 16)
    codes = tok.encode(x)
    assert codes.min() >= 0 and codes.max() < 12 and codes.unique().numel() > 1
    # every one of the 12 codes decodes to its own latent vector (a level of 2 really has two values)
    latents = tok.model.quantizer.codes_to_latent(torch.arange(12).view(1, 12, 1))[0, :, :, 0].T
    assert torch.cdist(latents, latents).add(torch.eye(12)).min() > 1e-3


def test_vocabulary_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match=r"fsq_levels \[15, 15, 15, 15, 15, 15\] give 11,390,625 tokens"):
        TokenizerConfig(quantizer="fsq", fsq_levels=[15] * 6)
    with pytest.raises(ValueError, match="codebook_size is 2,000,000 tokens"):
        TokenizerConfig(quantizer="vq", codebook_size=2_000_000)
