"""The causal spectral codec (issue 24): no lookahead, and ``stream_encoder`` / ``stream_decoder`` in chunks of any
size equal offline ``encode`` / ``decode`` of the same model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer

HOP = 320  # tokens of 20 ms at 16 kHz


def causal_tokenizer(**kw):
    torch.manual_seed(0)
    cfg = dict(modality="audio", causal=True, istft_dim=16, istft_layers=2, num_quantizers=3, codebook_size=16,
               clip_samples=3200) | kw
    tok = build_tokenizer(**cfg)
    tok.train()(torch.rand(4, cfg["clip_samples"]) * 1.6 - 0.8)  # initialise the codebooks (k-means) as training does
    return tok.eval()


def speechlike(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return (0.4 * torch.sin(2 * math.pi * 180 * t) * torch.sin(2 * math.pi * 3 * t)
            + 0.1 * torch.randn(n, generator=g)).clamp(-1, 1)


def stream_encode(tok, x, sizes):
    enc, out, i, k = tok.stream_encoder(), [], 0, 0
    while i < len(x):
        step = sizes[k % len(sizes)]
        out.append(enc(x[i:i + step]))
        i, k = i + step, k + 1
    return torch.cat([*out, enc.flush()])


def stream_decode(tok, tokens, frames):
    dec = tok.stream_decoder()
    out = [dec(tokens[j:j + frames]) for j in range(0, len(tokens), frames)]
    return torch.cat([*out, dec.flush()])


@pytest.mark.parametrize("frames", [1, 3, 7])
@pytest.mark.parametrize("quantizer", ["rvq", "fsq"])
def test_streams_equal_offline_at_any_chunk_size(frames, quantizer):
    kw = {} if quantizer == "rvq" else dict(quantizer="fsq", fsq_levels=[5, 4])
    tok = causal_tokenizer(**kw)
    n = 11 * HOP + 137  # an odd number of samples: the last token is zero-padded, as offline on the padded clip
    x = speechlike(n)
    offline = tok.encode(F.pad(x, (0, -n % HOP))[None])[0]
    # chunks of `frames` tokens plus a few samples, then odd sizes, down to single samples
    streamed = stream_encode(tok, x, [frames * HOP + 13, 1, 7 * frames + 2])
    assert streamed.dtype == torch.int64 and torch.equal(streamed, offline)
    decoded = stream_decode(tok, offline, frames)
    want = tok.decode(offline[None])[0]
    assert decoded.shape == want.shape == (12 * HOP,)
    torch.testing.assert_close(decoded, want, atol=1e-5, rtol=0)


def test_no_lookahead_and_latency():
    tok = causal_tokenizer()
    x = speechlike(20 * HOP)
    later = x.clone()
    later[9 * HOP:] = speechlike(11 * HOP, seed=5)  # a different future from sample 9 * HOP on
    a, b = tok.encode(x[None])[0], tok.encode(later[None])[0]
    assert torch.equal(a[:9], b[:9]) and not torch.equal(a[9:], b[9:])
    ya, yb = tok.decode(a[None])[0], tok.decode(b[None])[0]
    # a sample waits for the 3 STFT hops (3 x 80 samples) of the frames after it, never for more
    final = 9 * HOP - 3 * (HOP // 4)
    torch.testing.assert_close(ya[:final], yb[:final], atol=1e-6, rtol=0)
    assert not torch.allclose(ya[final:9 * HOP], yb[final:9 * HOP])
    assert tok.latency_ms == pytest.approx(1000 * (HOP + 3 * HOP // 4) / 16000) == 35.0
    slow = causal_tokenizer(sample_rate=8000, clip_samples=1600)  # 50 tokens/s at 8 kHz: hop 160, still 35 ms
    assert slow.config.downsample == 160 and slow.latency_ms == pytest.approx(35.0)


def test_chunked_offline_coding_of_a_long_clip_equals_one_piece():
    tok = causal_tokenizer()
    x = speechlike(40 * HOP)
    whole = tok.model.encode(x[None], chunk_tokens=0)
    assert torch.equal(tok.model.encode(x[None], chunk_tokens=8), whole)
    torch.testing.assert_close(tok.model.decode(whole, chunk_tokens=8), tok.model.decode(whole, chunk_tokens=0),
                               atol=1e-5, rtol=0)


def test_flush_starts_a_new_stream_and_fewer_codebooks_stream():
    tok = causal_tokenizer()
    x = speechlike(5 * HOP)
    enc = tok.stream_encoder(n_quantizers=2)
    first = torch.cat([enc(x), enc.flush()])
    again = torch.cat([enc(x[:100]), enc(x[100:]), enc.flush()])
    assert torch.equal(first, again) and torch.equal(first, tok.encode(x[None], n_quantizers=2)[0])
    assert first.shape == (5, 2)
    dec = tok.stream_decoder()
    assert dec(first[:0]).shape == (0,)
    torch.testing.assert_close(torch.cat([dec(first), dec.flush()]), tok.decode(first[None])[0], atol=1e-5, rtol=0)
    # the same decoder after flush: a new stream, the same samples
    torch.testing.assert_close(torch.cat([dec(first[:2]), dec(first[2:]), dec.flush()]), tok.decode(first[None])[0],
                               atol=1e-5, rtol=0)


def test_streaming_needs_a_causal_model_and_clean_input(tmp_path):
    offline = build_tokenizer(modality="audio", istft_dim=16, istft_layers=1, num_quantizers=2, codebook_size=16)
    assert offline.latency_ms == math.inf and offline.config.causal is False
    with pytest.raises(ValueError, match="not causal.*--causal"):
        offline.stream_encoder()
    with pytest.raises(ValueError, match="not causal"):
        offline.stream_decoder()
    with pytest.raises(ValueError, match="causal=True is a setting of autoencoder family spectral"):
        TokenizerConfig(modality="audio", audio_head="logistic", causal=True)
    tok = causal_tokenizer()
    enc = tok.stream_encoder()
    with pytest.raises(ValueError, match="float samples"):
        enc(torch.zeros(10, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"mono samples \[T\]"):
        enc(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="outside"):
        enc(torch.full((10,), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match=r"must lie in \[0, 16\)"):
        tok.stream_decoder()(torch.full((2, 3), 16))
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.config.causal and again.fingerprint == tok.fingerprint
    x = speechlike(3 * HOP)
    assert torch.equal(stream_encode(again, x, [HOP]), tok.encode(x[None])[0])


def test_causal_model_trains_and_old_configs_stay_offline():
    tok = causal_tokenizer()
    tok.train()
    out = tok(speechlike(2 * 3200).view(2, 3200))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in tok.model.encoder.parameters())
    # a config saved before the field existed (no "causal" key) is the offline model, and its fingerprint leaves
    # the field out while it holds its default
    cfg = TokenizerConfig(modality="audio", istft_dim=16, istft_layers=1)
    d = cfg.to_dict()
    d["autoencoder_config"].pop("causal")
    assert TokenizerConfig.from_dict(d) == cfg and TokenizerConfig.from_dict(d).causal is False
    assert "causal" not in str(cfg.identity_dict())
    assert "causal" in str(cfg.replace(causal=True).identity_dict())


def test_convolutions_without_grad_equal_conv1d():
    """Without grad the causal convolutions run as sums over their taps (``_conv_taps``: ~7x less per-call overhead
    on one frame); they equal conv1d, which training runs, for depthwise, dense and kernel-1 convolutions."""
    from tokenizers_vq.autoencoders.spectral import _conv_taps

    torch.manual_seed(0)
    for conv in (torch.nn.Conv1d(8, 8, 7, groups=8), torch.nn.Conv1d(6, 5, 7), torch.nn.Conv1d(12, 4, 1)):
        for n in (1, 3, 40):
            x = torch.randn(2, conv.in_channels, n + conv.kernel_size[0] - 1)
            with torch.no_grad():
                torch.testing.assert_close(_conv_taps(conv, x), conv(x), atol=1e-5, rtol=1e-5)
    tok = causal_tokenizer()
    x = speechlike(8 * HOP)[None]
    feats = tok.model._features(x)
    with torch.no_grad():
        fast = tok.model.encoder(feats)
    torch.testing.assert_close(fast, tok.model.encoder(feats).detach(), atol=1e-5, rtol=1e-4)


def test_fast_step_equals_the_modules_state_by_state():
    """``FastSpectralStep`` (what the stream objects and the ONNX step graphs run: time-major, weights as [in, out]
    matrices) equals the modules' ``FrameStack.step`` frame by frame, states carried, and ``OverlapAdd`` fed 1, 2,
    then 6 frames equals the offline ``FrameSTFT.synthesise``."""
    from tokenizers_vq.autoencoders.spectral_fast import FastSpectralStep, FastStack, OverlapAdd

    torch.manual_seed(0)
    tok = build_tokenizer(modality="audio", causal=True, istft_dim=24, istft_layers=2, num_quantizers=3,
                          codebook_size=16, clip_samples=3200)
    tok.model.quantizer.dropout = False  # every codebook k-means-initialised by the one training call
    tok.train()(torch.rand(4, 3200) * 1.6 - 0.8)
    m = tok.eval().model
    with torch.no_grad():
        for stack in (m.encoder, m.decoder, m.refine):
            fast = FastStack(stack)
            x = torch.randn(1, stack.inp.in_channels, 8)
            want = stack(x)[0].t()
            got, state, i = [], fast.initial_state(), 0
            for n in (1, 2, 5):
                y, state = fast(x[0, :, i:i + n].t(), state)
                got.append(y)
                i += n
            torch.testing.assert_close(torch.cat(got), want, atol=1e-5, rtol=1e-5)
        step = FastSpectralStep(m)
        assert step.rvq  # the stacked-codebook lookup, not the quantizer's module call
        z = torch.randn(6, m.quantizer.in_dim)
        assert torch.equal(step._nearest(z, None), m.quantizer.codes(z.t()[None])[0])
        assert torch.equal(step._nearest(z, 2), m.quantizer.codes(z.t()[None], 2)[0])
        spec = torch.polar(torch.rand(1, m.bins, 9) + 0.1, torch.rand(1, m.bins, 9) * 6)
        ola = OverlapAdd(m.stft.window, m.stft.env_floor)
        got = [ola(spec[0, :, lo:hi].t()) for lo, hi in ((0, 1), (1, 3), (3, 9))]
        got.append((ola.tail / ola.env_tail.clamp(min=m.stft.env_floor)).reshape(-1))  # what flush() returns
        # the stream runs in padded time: its first ``pad`` samples precede the offline signal's first
        torch.testing.assert_close(torch.cat(got)[m.stft.pad:], m.stft.synthesise(spec)[0], atol=1e-6, rtol=1e-5)


def test_a_longer_synthesis_window_streams_and_keeps_old_fingerprints(tmp_path):
    """istft_window_hops 8 (a 40 ms window at 8 kHz, which resolves pitch harmonics): streams equal offline, the
    latency counts 7 STFT hops of synthesis window, the ONNX steps equal the stream; 4 (the default) is left out of
    the fingerprint, so folders saved before the field existed keep theirs."""
    tok = causal_tokenizer(istft_window_hops=8, clip_samples=6400)  # 80 vectors for k-means: no duplicate codes
    assert tok.model.stft.n_fft == 8 * HOP // 4 and tok.latency_ms == pytest.approx(1000 * (HOP + 7 * HOP // 4) / 16000)
    n = 9 * HOP + 41
    x = speechlike(n)
    offline = tok.encode(F.pad(x, (0, -n % HOP))[None])[0]
    assert torch.equal(stream_encode(tok, x, [3 * HOP + 13, 1, 23]), offline)
    torch.testing.assert_close(stream_decode(tok, offline, 3), tok.decode(offline[None])[0], atol=1e-5, rtol=0)
    assert tok.fingerprint != causal_tokenizer(clip_samples=6400).fingerprint
    assert causal_tokenizer(istft_window_hops=4).fingerprint == causal_tokenizer().fingerprint
    assert "istft_window_hops" not in causal_tokenizer().config.to_dict()
    tok.save_pretrained(tmp_path / "t")
    assert load_tokenizer(tmp_path / "t").model.stft.window_hops == 8
    with pytest.raises(ValueError, match="istft_window_hops must be >= 2"):
        TokenizerConfig(modality="audio", istft_window_hops=1)
    from tokenizers_vq.onnx_export import export_onnx

    export_onnx(tok, tmp_path / "onnx")  # checks its streaming steps against stream_encoder / stream_decoder
    assert (tmp_path / "onnx" / "decoder_step.onnx").exists()
