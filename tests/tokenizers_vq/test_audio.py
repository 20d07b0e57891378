"""The audio autoencoder (shapes, ranges, chunking, save/load, training) and the audio metrics."""

import math

import pytest
import torch

from tokenizers_vq import build_tokenizer, load_tokenizer, mu_law_decode, mu_law_encode
from tokenizers_vq.autoencoders.mulaw import stage_strides
from tokenizers_vq.metrics import bitrate_kbps, log_mel_l1, mu_law_accuracy, si_snr, stoi

SR = 16000


def tiny(quantizer="fsq", **kw):
    base = dict(modality="audio", autoencoder="mulaw", quantizer=quantizer, hidden_channels=4, num_res_blocks=1, latent_dim=8,
                codebook_size=16, fsq_levels=[4, 4], kmeans_init=False, clip_samples=1024)
    base.update(kw)
    torch.manual_seed(0)
    return build_tokenizer(**base)


def melody(seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A deterministic test signal in [-1, 1]: two detuned tones with a slow envelope, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    x = 0.4 * torch.sin(2 * math.pi * 220 * t) * torch.sin(2 * math.pi * 0.7 * t).abs()
    x = x + 0.2 * torch.sin(2 * math.pi * 331 * t)
    x = x[None].repeat(batch, 1) + 0.05 * torch.randn(batch, t.numel(), generator=g)
    return x.clamp(-1, 1)


def test_stage_strides_multiply_to_downsample():
    assert stage_strides(64) == [4, 4, 4]
    assert stage_strides(32) == [2, 4, 4]
    assert stage_strides(2) == [2]
    assert stage_strides(1) == []
    for d in (1, 2, 4, 8, 16, 32, 64, 128):
        assert math.prod(stage_strides(d)) == d


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "gumbel"])
@pytest.mark.parametrize("downsample", [64, 32, 4])
def test_encode_decode_shapes_and_ranges(quantizer, downsample):
    tok = tiny(quantizer, downsample=downsample).eval()
    for length in (downsample * 3, 1024, 2048):
        x = melody(length / SR)
        codes = tok.encode(x)
        assert codes.shape == (2, length // downsample) == (2, *tok.token_shape((length,)))
        assert codes.dtype == torch.int64
        assert codes.min() >= 0 and codes.max() < tok.vocab_size
        y = tok.decode(codes)
        assert y.shape == (2, length) and y.dtype == torch.float32
        assert y.min() >= -1 and y.max() <= 1
    assert tok.token_shape((16000,)) == (16000 // downsample,)


@pytest.mark.parametrize("quantizer,head", [("fsq", "logistic"), ("vq", "logistic"), ("gumbel", "logistic"),
                                            ("fsq", "categorical")])
def test_forward_output_and_gradients_reach_the_encoder(quantizer, head):
    tok = tiny(quantizer, audio_head=head).train()
    x = melody(1024 / SR)
    out = tok(x)
    assert out.recon.shape == x.shape and out.codes.shape == (2, 16)
    assert out.recon.min() >= -1 and out.recon.max() <= 1
    for k in ("ce", "mel_l1", "wave_l1", "mu_law_acc", "si_snr"):
        assert k in out.metrics and torch.isfinite(out.metrics[k])
    assert 0 <= out.metrics["mu_law_acc"] <= 1
    # At init both heads are spread over the 256 classes: CE near log(256) (free logits: within 0.5 nat;
    # the logistic's random locations leave it up to ~0.5 nat worse still).
    assert abs(out.metrics["ce"].item() - math.log(256)) < (0.5 if head == "categorical" else 1.0)
    torch.testing.assert_close(out.metrics["wave_l1"], (out.recon - x).abs().mean().detach())
    out.loss.backward()
    first = tok.model.encoder[0].weight.grad
    assert first is not None and first.abs().sum() > 0  # straight-through / relaxation passes gradient


def test_expected_and_argmax_waveforms():
    tok = tiny(audio_head="categorical")
    m = tok.model
    classes = torch.tensor([[0, 128, 255, 77]])
    logits = torch.full((1, 256, 4), -1e4)
    logits[0, classes[0], torch.arange(4)] = 1e4
    vals = mu_law_decode(classes)
    torch.testing.assert_close(m.expected_waveform(logits), vals)
    torch.testing.assert_close(m.argmax_waveform(logits), vals)
    # Two equally likely classes: the mean lies between them, the argmax picks one.
    logits = torch.full((1, 256, 1), -1e4)
    logits[0, [100, 156], 0] = 0.0
    mean = m.expected_waveform(logits)
    torch.testing.assert_close(mean, (mu_law_decode(torch.tensor(100)) + mu_law_decode(torch.tensor(156))).view(1, 1) / 2)
    with pytest.raises(ValueError, match="mean' or 'argmax"):
        m.decode(torch.zeros(1, 4, dtype=torch.long), mode="sample")
    y = m.decode(torch.zeros(1, 4, dtype=torch.long), mode="argmax")
    assert y.shape == (1, 256) and y.abs().max() <= 1


def test_bad_inputs_raise_clear_errors():
    tok = tiny()
    with pytest.raises(ValueError, match="multiple of downsample=64"):
        tok.encode(torch.zeros(1, 1000))
    with pytest.raises(ValueError, match="0-length"):
        tok.encode(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full((1, 128), float("nan")))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tok.encode(torch.full((1, 128), 1.5))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tok.encode(torch.zeros(1, 1, 128))
    with pytest.raises(ValueError, match="must lie in"):
        tok.decode(torch.full((1, 4), tok.vocab_size))


def test_receptive_field_covers_what_the_layers_actually_see():
    """Perturb one input sample: only latent frames within ``encoder_context`` tokens may change. Perturb
    one latent frame: only output samples within ``decoder_context`` tokens may change."""
    tok = tiny(hidden_channels=4, num_res_blocks=3).eval()
    m, d = tok.model, tok.config.downsample
    x = melody(64 * 64 / SR, batch=1)
    centre = 32 * d + 17
    with torch.no_grad():
        z = m.encoder(m._companded(x)[1])
        x2 = x.clone()
        x2[0, centre] = -x2[0, centre] + 0.5
        z2 = m.encoder(m._companded(x2.clamp(-1, 1))[1])
        changed = (z - z2).abs().amax(1)[0].nonzero().flatten()
        assert len(changed) > 0
        assert changed.min() >= centre // d - m.encoder_context and changed.max() <= centre // d + m.encoder_context
        lat = torch.randn(1, m.quantizer.out_dim, 64)
        lat2 = lat.clone()
        lat2[0, :, 32] += 1.0
        y, y2 = m.decoder(lat), m.decoder(lat2)
        moved = (y - y2).abs().amax(1)[0].nonzero().flatten() // d
        assert len(moved) > 0
        assert moved.min() >= 32 - m.decoder_context and moved.max() <= 32 + m.decoder_context


@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_chunked_encode_and_decode_equal_one_piece_on_10_seconds(quantizer):
    tok = tiny(quantizer, hidden_channels=4, num_res_blocks=2).eval()
    m = tok.model
    x = melody(10.0, batch=1)  # 2,500 tokens
    with torch.no_grad():
        one = m.encode(x, chunk_tokens=0)
        for chunk in (100, 37):  # 37: chunks do not divide the length; the last one is short
            chunked = m.encode(x, chunk_tokens=chunk)
            assert torch.equal(chunked, one), f"{(chunked != one).sum()} tokens differ with chunk {chunk}"
        part = one[:, :500]  # decoding is 256 logits per sample: 2 s of tokens keep the test fast
        y_one = m.decode(part, chunk_tokens=0)
        y_chunk = m.decode(part, chunk_tokens=37)
    assert y_chunk.shape == y_one.shape == (1, 500 * 64)
    # No seam: equal up to float summation order.
    assert (y_one - y_chunk).abs().max() < 1e-5
    # The Tokenizer entry points chunk by config.chunk_tokens (256) and agree too.
    assert torch.equal(tok.encode(x), one)


def test_overlap_is_widened_to_the_receptive_field():
    with pytest.warns(UserWarning, match="chunk_overlap_tokens=0"):
        tok = tiny(chunk_overlap_tokens=0)
    m = tok.model
    assert m.overlap == max(m.encoder_context, m.decoder_context) > 0


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "gumbel"])
def test_save_and_load_give_identical_tokens(tmp_path, quantizer):
    tok = tiny(quantizer)
    tok.train()
    tok(melody(1024 / SR))  # vq: initialise/update the codebook so the saved state is not the init
    tok.eval()
    x = melody(2048 / SR, seed=1)
    codes = tok.encode(x)
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.config == tok.config
    assert torch.equal(loaded.encode(x), codes)
    torch.testing.assert_close(loaded.decode(codes), tok.decode(codes), rtol=0, atol=0)
    # The mu-law class values and mel filterbanks are derived, not stored.
    from safetensors.torch import load_file

    assert not any("class_values" in k or "fb" in k for k in load_file(tmp_path / "tok" / "model.safetensors"))


@pytest.mark.parametrize("head", ["logistic", "categorical"])
def test_a_few_training_steps_lower_the_loss(head):
    tok = tiny("fsq", hidden_channels=4, audio_head=head).train()
    x = melody(1024 / SR, batch=2)
    opt = torch.optim.Adam(tok.parameters(), lr=5e-3)
    losses, mels = [], []
    for _ in range(20):
        out = tok(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        mels.append(out.metrics["mel_l1"].item())
    # Early on the log-mel and waveform terms dominate (the expected waveform starts near silent, far below
    # the floor of the log); cross-entropy moves later (free logits: after a few dozen steps).
    assert losses[-1] < 0.8 * losses[0], losses
    assert mels[-1] < 0.7 * mels[0], mels


def test_mel_loss_is_zero_for_identical_signals_and_grows_with_noise():
    m = tiny().model
    x = melody(2048 / SR)
    assert m.mel_loss(x, x).item() == 0.0
    small = m.mel_loss(x + 0.01 * torch.randn_like(x), x).item()
    big = m.mel_loss(x + 0.2 * torch.randn_like(x), x).item()
    assert 0 < small < big


# ------------------------------------------------------------------------------------------ metrics
def test_si_snr_known_values_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 16000, generator=g)
    noise = torch.randn(4, 16000, generator=g)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref  # orthogonal
    noise = noise / noise.norm(dim=-1, keepdim=True) * ref.norm(dim=-1, keepdim=True) / math.sqrt(10)
    est = ref + noise  # exactly 10 dB
    assert si_snr(est, ref).item() == pytest.approx(10.0, abs=0.05)
    assert si_snr(3.0 * est, ref).item() == pytest.approx(10.0, abs=0.05)
    assert si_snr(ref, ref).item() > 60
    with pytest.raises(ValueError, match="same shape"):
        si_snr(ref[:, :10], ref)


def test_log_mel_l1_and_mu_law_accuracy_and_bitrate():
    x = melody(0.5)
    assert log_mel_l1(x, x, SR).item() == 0.0
    assert log_mel_l1(x + 0.1 * torch.randn_like(x), x, SR).item() > 0.1
    target = mu_law_encode(x)
    assert mu_law_accuracy(target, target).item() == 1.0
    logits = torch.nn.functional.one_hot(target, 256).permute(0, 2, 1).float()
    assert mu_law_accuracy(logits, target).item() == 1.0
    wrong = target.clone()
    wrong[:, ::4] = (wrong[:, ::4] + 1) % 256
    assert mu_law_accuracy(wrong, target).item() == pytest.approx(0.75, abs=1e-3)
    assert bitrate_kbps(250, 1000) == pytest.approx(250 * math.log2(1000) / 1000)
    assert bitrate_kbps(250, 1024) == 2.5
    with pytest.raises(ValueError):
        bitrate_kbps(250, 0)


def test_stoi_is_one_for_identical_and_lower_for_noisy():
    pytest.importorskip("pystoi", reason="pystoi is in the bench extra")
    x = melody(1.0, batch=1)
    assert stoi(x, x, SR) == pytest.approx(1.0, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    light, heavy = stoi(x + 0.05 * noise, x, SR), stoi(x + 1.0 * noise, x, SR)
    assert 1.0 > light > 0.9 > heavy
