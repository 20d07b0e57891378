"""The spectral (inverse-STFT) audio codec: exact STFT framing, locality, training signal, save/load."""

import pytest
import torch

from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer
from tokenizers_vq.autoencoders.spectral import FrameSTFT


def tiny(**kw):
    cfg = dict(modality="audio", audio_head="istft", quantizer="fsq", fsq_levels=[5, 5], latent_dim=8,
               istft_dim=16, istft_layers=1, sample_rate=8000, clip_samples=1600)
    return build_tokenizer(**(cfg | kw))


def test_frame_stft_is_invertible_and_one_frame_per_hop():
    st = FrameSTFT(80)
    x = torch.randn(3, 1600)
    spec = st.analyse(x)
    assert spec.shape == (3, 161, 20)
    torch.testing.assert_close(st.synthesise(spec), x, atol=1e-5, rtol=0)


def test_defaults_give_50_frames_per_second_and_any_hop():
    tok = build_tokenizer(modality="audio", istft_dim=16, istft_layers=1)  # the audio default family
    assert tok.config.autoencoder == "spectral" and tok.config.downsample == 320 and tok.frame_rate == 50.0
    # the default bottleneck: the shipped tokenizer's, 5 residual codebooks of 512 codes (2.25 kbit/s)
    assert (tok.config.quantizer, tok.config.num_quantizers, tok.config.codebook_size) == ("rvq", 5, 512)
    assert tok.token_shape((16000,)) == (50, 5)
    assert tok.config == TokenizerConfig(modality="audio", audio_head="istft", istft_dim=16, istft_layers=1)
    TokenizerConfig(modality="audio", audio_head="istft", downsample=240, clip_samples=2400)  # not a power of two
    with pytest.raises(ValueError, match="power of two"):
        TokenizerConfig(modality="audio", audio_head="logistic", downsample=240, clip_samples=2400)
    with pytest.raises(ValueError, match="not divisible by downsample"):
        TokenizerConfig(modality="audio", audio_head="istft", downsample=320, clip_samples=1000)


def test_forward_trains_and_reports_spectral_metrics():
    tok = tiny()
    x = torch.rand(4, 1600) * 1.6 - 0.8
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = tok(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else float(out.loss.detach())
    assert out.recon.shape == x.shape and out.codes.shape == (4, 10)  # hop 160 at 8 kHz
    assert {"mel_l1", "stft_l1", "wave_l1", "si_snr"} <= set(out.metrics)
    assert float(out.loss.detach()) < first  # it learns on a fixed batch
    assert out.recon.abs().max() <= 1.0


def test_chunked_coding_equals_one_piece():
    tok = tiny(chunk_tokens=7).eval()
    x = torch.rand(2, 8000) * 2 - 1  # 50 frames: many chunks with context either side
    whole = tok.model.encode(x, chunk_tokens=0)
    assert torch.equal(tok.model.encode(x), whole)
    torch.testing.assert_close(tok.model.decode(whole), tok.model.decode(whole, chunk_tokens=0), atol=1e-5, rtol=0)


def test_save_load_round_trip(tmp_path):
    tok = tiny().eval()
    x = torch.rand(2, 1600) * 2 - 1
    tok.save_pretrained(tmp_path / "t")
    back = load_tokenizer(tmp_path / "t")
    assert torch.equal(back.encode(x), tok.encode(x))
    torch.testing.assert_close(back.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    assert back.fingerprint == tok.fingerprint


def test_fused_spectral_loss_equals_separate_mel_and_magnitude_losses():
    """One STFT per resolution (unfold framing, no gradient through the reference) gives the values and the
    gradient of torchaudio's mel spectrogram loss plus a torch.stft log-magnitude loss."""
    from tokenizers_vq.audio_dsp import multires_log_mel_l1, multires_spectral_l1
    from tokenizers_vq.metrics import log_mel_spectrogram

    g = torch.Generator().manual_seed(0)
    est = (torch.randn(3, 4000, generator=g) * 0.1).requires_grad_()
    ref = torch.randn(3, 4000, generator=g) * 0.2
    ffts = [128, 256, 1024, 16384]  # the last does not fit in 4,000 samples and is skipped by both
    mels, mags = [], []
    for n in ffts[:3]:
        mels.append((log_mel_spectrogram(est, 8000, n, n_mels=min(80, n // 8))
                     - log_mel_spectrogram(ref, 8000, n, n_mels=min(80, n // 8))).abs().mean())
        win = torch.hann_window(n)
        a, b = (torch.stft(s, n, n // 4, window=win, return_complex=True).abs() for s in (est, ref))
        mags.append((torch.log(a + 1e-5) - torch.log(b + 1e-5)).abs().mean())
    mel_ref, mag_ref = torch.stack(mels).mean(), torch.stack(mags).mean()
    grad_ref = torch.autograd.grad(mel_ref + mag_ref, est)[0]
    mel, mag = multires_spectral_l1(est, ref, 8000, ffts)
    grad = torch.autograd.grad(mel + mag, est)[0]
    torch.testing.assert_close(mel, mel_ref)
    torch.testing.assert_close(multires_log_mel_l1(est, ref, 8000, ffts), mel_ref)
    torch.testing.assert_close(mag, mag_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-7, rtol=1e-4)
    assert mag.item() > 0.1  # different signals: a loss that could not be zero by accident
    zero_mel, zero_mag = multires_spectral_l1(est, est.detach(), 8000, ffts)
    assert zero_mel.item() == 0 and zero_mag.item() == 0


def test_files_saved_before_the_spectral_default_keep_their_family():
    """Format 1 chose the family by ``audio_head`` (default "logistic"); format 2 names it: neither follows today's
    audio default (the spectral codec)."""
    import json
    from pathlib import Path

    v1 = Path(__file__).parents[1] / "fixtures" / "v1" / "tokenizers"
    d = json.loads((v1 / "audio_logistic_fsq" / "config.json").read_text())
    assert TokenizerConfig.from_dict(d).autoencoder == "mulaw"
    d.pop("audio_head")  # a format-1 file written before the field existed: format 1's default head
    old = TokenizerConfig.from_dict(d)
    assert (old.autoencoder, old.quantizer, old.audio_head) == ("mulaw", "fsq", "logistic")
    assert TokenizerConfig.from_dict(json.loads((v1 / "audio_istft_rvq" / "config.json").read_text())).autoencoder == "spectral"
    mulaw = TokenizerConfig(modality="audio", audio_head="categorical", quantizer="vq", codebook_size=16)
    again = TokenizerConfig.from_json(mulaw.to_json())
    assert again == mulaw and (again.autoencoder, again.quantizer, again.codebook_size) == ("mulaw", "vq", 16)
