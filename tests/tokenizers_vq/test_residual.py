"""Residual quantizers (rvq, rfsq): token shapes and ranges with the trailing codebook axis, prefixes and
lower bitrates with fewer codebooks, quantizer dropout in training, save/load, errors, and the CLI path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer
from tokenizers_vq.code_stats import CodebookCounter, rate_metrics
from tokenizers_vq.quantizers import build_quantizer

Q = 3
TINY = dict(hidden_channels=4, latent_dim=8, codebook_size=16, fsq_levels=[5, 3], num_res_blocks=1, num_quantizers=Q)
AUDIO = dict(modality="audio", autoencoder="mulaw", clip_samples=64, downsample=4, latent_res_blocks=1, chunk_tokens=4)
IMAGE = dict(modality="image", image_size=16)
RESIDUAL = ("rvq", "rfsq")


def _tok(quantizer: str, modality: str = "audio", **kw):
    torch.manual_seed(0)
    tok = build_tokenizer(quantizer=quantizer, **TINY, **(AUDIO if modality == "audio" else IMAGE), **kw)
    x = _x(modality, 4)
    with torch.no_grad():  # no dropout without grad: k-means initialises every rvq codebook
        tok(x)
    return tok.eval()


def _x(modality: str, b: int, t: int = 29) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if modality == "image":
        return torch.nn.functional.interpolate(torch.rand(b, 1, 4, 4, generator=g), size=16)
    return torch.rand(b, t * 4, generator=g) * 2 - 1


@pytest.mark.parametrize("quantizer", RESIDUAL)
@pytest.mark.parametrize("modality", ["audio", "image"])
def test_shapes_ranges_and_prefixes(quantizer, modality):
    tok = _tok(quantizer, modality)
    x = _x(modality, 2)
    grid = (29,) if modality == "audio" else (4, 4)
    assert tok.num_codebooks == Q and tok.model.quantizer.num_codebooks == Q
    assert tok.token_shape() == ((16,) if modality == "audio" else (4, 4)) + (Q,)
    codes = tok.encode(x)
    assert codes.dtype == torch.int64 and codes.shape == (2, *grid, Q)
    assert codes.min() >= 0 and codes.max() < tok.vocab_size
    assert codes.unique().numel() > 2
    for n in range(1, Q + 1):
        part = tok.encode(x, n_quantizers=n)
        assert part.shape == (2, *grid, n) and torch.equal(part, codes[..., :n])  # greedy: a prefix
        assert tok.decode(part).shape == x.shape  # fewer codebooks decode too
    recon = tok.decode(codes)
    assert recon.shape == x.shape and recon.min() >= (0 if modality == "image" else -1) and recon.max() <= 1


@pytest.mark.parametrize("quantizer", RESIDUAL)
def test_fewer_codebooks_lower_bitrate_and_worse_reconstruction(quantizer):
    tok = _tok(quantizer)
    rates = [tok.bitrate_at(n) for n in range(1, Q + 1)]
    assert rates == sorted(rates) and rates[0] < rates[-1] == tok.bitrate
    assert tok.bitrate == pytest.approx(tok.frame_rate * Q * tok.bits_per_token)
    assert tok.bits_per_input(n_quantizers=1) * Q == pytest.approx(tok.bits_per_input())
    img = _tok(quantizer, "image")
    assert img.bitrate is None and img.bits_per_input() == pytest.approx(16 * Q * img.bits_per_token)
    assert rate_metrics(tok)["kbps_n1"] < rate_metrics(tok)["kbps"]
    # The residual stack gets closer to the latent with every codebook.
    q = tok.model.quantizer
    z = tok.model.encoder(tok.model._companded(_x("audio", 2))[1])
    with torch.no_grad():
        errs = [(q(z, n_quantizers=n).quantized - z).pow(2).mean().item() for n in range(1, Q + 1)]
    assert errs[-1] < errs[0]


@pytest.mark.parametrize("quantizer", RESIDUAL)
def test_save_load_round_trip_and_fingerprint(quantizer, tmp_path):
    tok = _tok(quantizer)
    x = _x("audio", 2)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    q = cfg["quantizer_config"]
    assert cfg["quantizer"] == quantizer and q["num_quantizers"] == Q and q["quantizer_dropout"] is True
    back = load_tokenizer(tmp_path)
    assert torch.equal(back.encode(x), tok.encode(x)) and back.fingerprint == tok.fingerprint
    assert torch.allclose(back.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    plain = _tok("vq" if quantizer == "rvq" else "fsq")
    assert plain.fingerprint != tok.fingerprint


def test_non_residual_unchanged_and_old_configs_load(tmp_path):
    tok = _tok("fsq")
    assert tok.num_codebooks == 1 and tok.token_shape() == (16,) and tok.encode(_x("audio", 2)).shape == (2, 29)
    assert tok.encode(_x("audio", 2), n_quantizers=1).shape == (2, 29)
    with pytest.raises(ValueError, match="n_quantizers"):
        tok.encode(_x("audio", 2), n_quantizers=2)
    # config.json holds only the chosen quantizer's section: fsq has no residual fields (format-1 folders, which held
    # every quantizer's fields, are tests/test_old_folders.py's)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert set(cfg["quantizer_config"]) == {"fsq_levels"} and "num_quantizers" not in cfg
    back = load_tokenizer(tmp_path)
    assert back.fingerprint == tok.fingerprint
    prints = []
    for n in (4, 7):  # the same weights and a different (unused) num_quantizers
        torch.manual_seed(0)
        prints.append(build_tokenizer(tok.config, num_quantizers=n).fingerprint)
    assert prints[0] == prints[1]


@pytest.mark.parametrize("quantizer", RESIDUAL)
def test_quantizer_dropout_varies_codebooks_in_training(quantizer):
    cfg = TokenizerConfig(quantizer=quantizer, **TINY, **AUDIO)
    z = torch.randn(2, 8, 16)
    torch.manual_seed(0)
    q = build_quantizer(cfg).train()
    used = {q(z).codes.shape[-1] for _ in range(30)}
    assert used == set(range(1, Q + 1))
    out = q(z)
    assert out.metrics["active_codebooks"].item() == out.codes.shape[-1]
    assert all(f"perplexity_q{i}" in out.metrics for i in range(out.codes.shape[-1]))
    with torch.no_grad():  # encoding never drops
        assert {q(z).codes.shape[-1] for _ in range(5)} == {Q}
    assert {q.eval()(z).codes.shape[-1] for _ in range(5)} == {Q}
    fixed = build_quantizer(TokenizerConfig(quantizer=quantizer, **{**TINY, **AUDIO}, quantizer_dropout=False)).train()
    assert {fixed(z).codes.shape[-1] for _ in range(5)} == {Q}
    # Training through the tokenizer: a loss with gradients, codes with the active codebooks.
    tok = build_tokenizer(quantizer=quantizer, **TINY, **AUDIO).train()
    res = tok(_x("audio", 2, 16))
    res.loss.backward()
    assert torch.isfinite(res.loss) and 1 <= res.codes.shape[-1] <= Q
    assert tok.model.encoder[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("quantizer", RESIDUAL)
def test_quantizer_loop_matches_the_library_forward(quantizer):
    """Our layer loop (which can stop at any n) gives the library ResidualVQ / ResidualFSQ forward's results."""
    torch.manual_seed(0)
    q = build_quantizer(TokenizerConfig(quantizer=quantizer, **TINY, **AUDIO))
    z = torch.randn(2, 8, 16)
    with torch.no_grad():
        q(z)  # k-means initialisation
        q.eval()
        ours = q(z)
        quantized, codes, *_ = q.rq(z.transpose(1, 2))
    assert torch.equal(ours.codes, codes)
    assert torch.allclose(ours.quantized, quantized.transpose(1, 2), atol=1e-6)
    assert torch.allclose(q.codes_to_latent(ours.codes), ours.quantized, atol=1e-5)
    for n in range(1, Q + 1):  # our lookup equals the library's, dropped codebooks marked -1
        padded = torch.nn.functional.pad(ours.codes[..., :n].reshape(2, 16, n), (0, Q - n), value=-1)
        lib = q.rq.get_output_from_indices(padded).transpose(1, 2)
        assert torch.allclose(q.codes_to_latent(ours.codes[..., :n]), lib, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 32, 1), (3, 32, 50), (2, 32, 7, 5)])
def test_evaluation_lookup_equals_the_library_forward_to_the_bit(shape):
    """Without grad in eval, rvq looks codes up without the library's forward (``_nearest``): the same codes, sums
    and zero losses, for one frame, many frames and a 2-d grid; with grad (training) the library's forward runs."""
    torch.manual_seed(0)
    q = build_quantizer(TokenizerConfig(quantizer="rvq", latent_dim=32, codebook_size=512, num_quantizers=5))
    with torch.no_grad():
        q(torch.randn(4, 32, 300))  # k-means initialisation of every codebook
    q.eval()
    z = torch.randn(*shape) * 2
    seq = z.flatten(2).transpose(1, 2)
    with torch.no_grad():
        assert q._plain_lookup()
        fast = q._nearest(seq, 5)
        with torch.enable_grad():  # the library's path
            slow = q._layers(seq, 5)
        out = q(z)
    assert torch.equal(fast[1], slow[1]) and torch.equal(fast[0], slow[0].detach())
    assert [float(v) for v in fast[2]] == [float(v.detach()) for v in slow[2]] == [0.0] * 5
    assert torch.equal(out.codes, slow[1].view(*out.codes.shape))
    assert torch.equal(q.codes(z), out.codes) and torch.equal(q.codes(z, 2), out.codes[..., :2])
    q.rq.layers[1]._codebook.initted.fill_(False)  # an uninitialised codebook: the library's forward decides
    assert not q._plain_lookup()


@pytest.mark.parametrize("quantizer", RESIDUAL)
def test_chunked_audio_equals_one_piece(quantizer):
    tok = _tok(quantizer)
    x = _x("audio", 2, 21)  # 6 chunks of 4 tokens
    codes = tok.encode(x)
    assert torch.equal(codes, tok.model.encode(x, chunk_tokens=0))
    with torch.no_grad():
        assert torch.allclose(tok.decode(codes), tok.model.decode(codes, chunk_tokens=0), atol=1e-5)
        assert torch.allclose(tok.decode(codes[..., :1]), tok.model.decode(codes[..., :1], chunk_tokens=0), atol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match="num_quantizers"):
        TokenizerConfig(quantizer="rvq", num_quantizers=0)
    with pytest.raises(ValueError, match="num_quantizers"):
        TokenizerConfig(quantizer="rfsq", num_quantizers=-2)
    tok = _tok("rvq")
    x = _x("audio", 1)
    with pytest.raises(ValueError, match="trained with 3"):
        tok.decode(torch.zeros(1, 5, Q + 1, dtype=torch.long))
    for n in (0, Q + 1):
        with pytest.raises(ValueError, match=r"n_quantizers must be an integer in \[1, 3\]"):
            tok.encode(x, n_quantizers=n)
    with pytest.raises(ValueError, match="bitrate|n_quantizers"):
        tok.bitrate_at(Q + 1)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        tok.decode(torch.full((1, 5, Q), 16))
    with pytest.raises(ValueError, match="dims"):
        tok.decode(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="q' <= 3"):
        tok.model.quantizer.codes_to_latent(torch.zeros(1, 5, Q + 1, dtype=torch.long))


def test_codebook_counter_reports_each_codebook():
    c = CodebookCounter(4, 2)
    c.add(torch.tensor([[[0, 0], [1, 0], [2, 0], [3, 1]]]))  # codebook 0 uses all 4 codes, codebook 1 uses 2
    m = c.metrics()
    assert m["codebook_usage_q0"] == 1.0 and m["codebook_usage_q1"] == 0.5 and m["codebook_usage"] == 0.5
    assert m["perplexity"] == m["perplexity_q1"] < m["perplexity_q0"] == pytest.approx(4.0)
    single = CodebookCounter(4)
    single.add(torch.tensor([[0, 1]]))
    assert single.metrics() == {"codebook_usage": 0.5, "perplexity": pytest.approx(2.0)}


def test_cli_trains_tokenizes_and_reconstructs_residual(tmp_path, capsys):
    from pipelines.cli import main

    tiny = ["--hidden-channels", "4", "--latent-dim", "8", "--num-res-blocks", "1", "--codebook-size", "16"]
    clip = ["--clip-seconds", "0.256", "--limit", "8"]
    assert main(["train-tokenizer", "--modality", "audio", "--audio-head", "logistic", "--dataset", "tones", "--quantizer", "rvq",
                 "--num-quantizers", "2", "--out", str(tmp_path / "tok"), "--steps", "2", "--batch-size", "4",
                 "--eval-limit", "4", "--quiet", *clip, *tiny]) == 0
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert cfg["quantizer"] == "rvq" and cfg["quantizer_config"]["num_quantizers"] == 2
    assert cfg["quantizer_config"]["quantizer_dropout"] is True
    metrics = json.loads((tmp_path / "tok" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "codebook_usage_q1" in flat and "kbps_n1" in flat
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--dataset", "tones", "--out",
                 str(tmp_path / "tokens"), "--quiet", "--limit", "8"]) == 0
    header = json.loads((tmp_path / "tokens" / "tokens.json").read_text())
    assert header["token_shape"] == [64, 2]
    saved = load_file(str(tmp_path / "tokens" / "train-00000.safetensors"))["tokens"]
    assert saved.shape[1:] == (64, 2) and saved.max() < 16
    # reconstruct on images (an audio test split at the sample rate costs a minute on a shared CPU).
    assert main(["train-tokenizer", "--dataset", "mnist5k", "--limit", "32", "--quantizer", "rfsq", "--num-quantizers",
                 "2", "--fsq-levels", "5,3", "--out", str(tmp_path / "itok"), "--steps", "1", "--batch-size", "8",
                 "--eval-limit", "8", "--quiet", "--hidden-channels", "4", "--latent-dim", "8", "--num-res-blocks",
                 "1"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "--tokenizer", str(tmp_path / "itok"), "--dataset", "mnist5k", "--limit", "32",
                 "--n", "2", "--out", str(tmp_path / "rec.png"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "rec.png").is_file() and "bits_per_image_n1" in out and "codebook_usage_q1" in out
    # The other flags reach the config (parsed only: one training run is enough for the path above).
    from pipelines.cli import parse_command
    from pipelines.commands import tokenizer_model_fields

    _, args, _ = parse_command(["train-tokenizer", "--quantizer", "rfsq", "--num-quantizers", "5",
                                "--no-quantizer-dropout", "--dataset", "tones", "--out", str(tmp_path / "x")])
    fields = tokenizer_model_fields(args)
    assert fields["quantizer"] == "rfsq" and fields["num_quantizers"] == 5 and fields["quantizer_dropout"] is False
    _, args, _ = parse_command(["train-tokenizer", "--dataset", "tones", "--out", str(tmp_path / "x")])
    assert "quantizer_dropout" not in tokenizer_model_fields(args)  # the config's default applies
