"""Streaming encode and decode for a causal spectral codec (``causal=True``): audio or tokens in chunks of any size.

Each object keeps what the next chunk needs: the encoder the mu-law samples of an unfinished token and the last STFT
window's worth of past samples; both the last inputs of every causal convolution (``FrameStack.step``); the decoder
the overlap-add tail of the inverse STFT (the 3 hops of the last frames' windows that later frames still add to).
Offline ``encode`` / ``decode`` run the same per-frame code with zero history, so the concatenated outputs of a
stream equal them (to float rounding: the tests hold it to 1e-5).

Latency: a token is emitted once its ``downsample`` samples have arrived; a sample is emitted once the 3 STFT frames
after its own are added, i.e. ``latency_ms`` = (downsample + 3 STFT hops) / sample rate: 35 ms at 16 kHz.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .spectral import CAUSAL_ENV_FLOOR, WINDOW_HOPS

if TYPE_CHECKING:
    from .spectral import SpectralAudioAutoencoder


def _as_samples(x: Any) -> Tensor:
    """One chunk of audio (tensor or array) -> float32 [T]; ``ValueError`` for another layout, NaN or |x| > 1."""
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        raise ValueError(f"stream_encoder takes float samples in [-1, 1], got {x.dtype} (int16 PCM: divide by 32768)")
    if x.dim() != 1:
        raise ValueError(f"stream_encoder takes one chunk of mono samples [T], got shape {tuple(x.shape)}")
    x = x.float()
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("audio chunk holds NaN or inf samples")
    if x.numel() and float(x.abs().max()) > 1.0:
        raise ValueError(f"audio chunk peaks at {float(x.abs().max()):.3f}, outside [-1, 1]: peak-normalise the audio")
    return x


class StreamEncoder:
    """``enc(x)``: float32 samples [T] (any T) -> int64 tokens [t] or [t, q] for the tokens completed so far;
    ``enc.flush()``: the last, zero-padded token (if samples are pending) and a fresh state for a new stream."""

    def __init__(self, model: SpectralAudioAutoencoder, n_quantizers: int | None = None):
        self.model, self.n_quantizers = model, n_quantizers
        self.reset()

    def reset(self) -> None:
        stft = self.model.stft
        self.pending = torch.zeros(0)  # samples of an unfinished token
        self.context = torch.zeros(1, stft.n_fft - stft.hop)  # the last window's past (companded) samples
        self.state: list[Tensor] | None = None  # the encoder stack's, made on the first chunk
        self.device = self.model.stft.window.device

    @torch.no_grad()
    def __call__(self, x: Any) -> Tensor:
        self.pending = torch.cat([self.pending, _as_samples(x)])
        return self._tokens(len(self.pending) // self.model.hop)

    @torch.no_grad()
    def flush(self) -> Tensor:
        hop = self.model.hop
        if len(self.pending):  # what an offline encode of the zero-padded input ends with
            self.pending = F.pad(self.pending, (0, -len(self.pending) % hop))
        out = self._tokens(len(self.pending) // hop)
        self.reset()
        return out

    def _tokens(self, t: int) -> Tensor:
        m = self.model
        if t == 0:
            q = self.n_quantizers or m.quantizer.num_codebooks
            return torch.zeros((0, q) if m.config.residual else (0,), dtype=torch.long)
        samples, self.pending = self.pending[: t * m.hop], self.pending[t * m.hop:]
        buf = torch.cat([self.context, m.companded(samples[None])], dim=1)
        self.context = buf[:, buf.shape[1] - self.context.shape[1]:]
        feats = m._spec_features(m.stft.frames(buf.to(self.device)))  # [1, 3 * bins * sub, t]
        if self.state is None:
            self.state = m.encoder.initial_state(feats)
        z, self.state = m.encoder.step(feats, self.state)
        if m.latent_norm is not None:
            z = m.latent_norm(z.transpose(1, 2)).transpose(1, 2)
        n = self.n_quantizers if m.config.residual else None
        return m.quantizer.codes(z, n)[0].long().cpu()


class StreamDecoder:
    """``dec(tokens)``: int64 tokens [t] or [t, q'] -> float32 samples [T'] in [-1, 1] that no later token changes;
    ``dec.flush()``: the last 3 STFT hops of samples and a fresh state for a new stream."""

    def __init__(self, model: SpectralAudioAutoencoder, check_tokens: Callable[[Tensor], None] | None = None):
        self.model, self.check_tokens = model, check_tokens
        self.reset()

    def reset(self) -> None:
        tail = self.model.stft.n_fft - self.model.stft.hop
        self.tail = torch.zeros(1, tail)  # overlap-add sums not yet final: windowed frames, then the window's squares
        self.env_tail = torch.zeros(1, tail)
        self.skip = self.model.stft.pad  # the first frames' windows reach this far before sample 0
        self.state: tuple[list[Tensor], list[Tensor]] | None = None
        self.device = self.model.stft.window.device

    @torch.no_grad()
    def __call__(self, tokens: Any) -> Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.shape[0] == 0:
            return torch.zeros(0)
        if self.check_tokens is not None:
            self.check_tokens(tokens[None])
        m = self.model
        latent = m.quantizer.codes_to_latent(tokens[None].long().to(self.device))  # [1, D, t]
        if self.state is None:
            h0 = m.decoder.initial_state(latent)
            self.state = (h0, m.refine.initial_state(latent.new_zeros(1, m.fine_dim, 1)))
        h, dec_state = m.decoder.step(latent, self.state[0])
        out, ref_state = m.refine.step(m._depth_to_space(h), self.state[1])
        self.state = (dec_state, ref_state)
        return self._overlap_add(m._spectrum(out).cpu())

    @torch.no_grad()
    def flush(self) -> Tensor:
        y = (self.tail / self.env_tail.clamp(min=self.model.stft.env_floor))[0, self.skip:]
        self.reset()
        return y.clamp(-1.0, 1.0)

    def _overlap_add(self, spec: Tensor) -> Tensor:
        """Complex frames [1, bins, n] -> the samples they complete (``overlap_add``), less those before time 0."""
        stft = self.model.stft
        y, self.tail, self.env_tail = overlap_add(spec, self.tail, self.env_tail, stft.window.cpu(), stft.env_floor)
        drop = min(self.skip, y.shape[1])
        self.skip -= drop
        return y[0, drop:].clamp(-1.0, 1.0)


def overlap_add(spec: Tensor, tail: Tensor, env_tail: Tensor, window: Tensor,
                floor: float = CAUSAL_ENV_FLOOR) -> tuple[Tensor, Tensor, Tensor]:
    """One streaming step of ``FrameSTFT.synthesise``: complex frames [B, bins, n] (window ``window`` of n_fft =
    4 hops) added onto the carried sums ``tail`` / ``env_tail`` [B, 3 hops] -> (the n * hop samples now final,
    divided by the summed squared window, at least ``floor``; the new tails). Block sums instead of ``F.fold``, so that a graph with
    a symbolic n exports (``onnx_stream``)."""
    n_fft = window.shape[0]
    hop = n_fft // WINDOW_HOPS
    frames = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None]  # [B, n_fft, n]
    b, n = frames.shape[0], frames.shape[2]
    blocks = frames.reshape(b, WINDOW_HOPS, hop, n).permute(0, 1, 3, 2)  # [B, 4, n, hop]: frame k's j-th hop
    env_blocks = (window**2).reshape(WINDOW_HOPS, 1, hop).expand(WINDOW_HOPS, n, hop)
    # hop j of frame k lands on block k + j of the n + 3 blocks this step touches
    y = sum(F.pad(blocks[:, j], (0, 0, j, WINDOW_HOPS - 1 - j)) for j in range(WINDOW_HOPS)).reshape(b, -1)
    env = sum(F.pad(env_blocks[j], (0, 0, j, WINDOW_HOPS - 1 - j)) for j in range(WINDOW_HOPS)).reshape(1, -1)
    k = tail.shape[1]
    y = torch.cat([y[:, :k] + tail, y[:, k:]], dim=1)
    env = torch.cat([env[:, :k] + env_tail, env[:, k:]], dim=1)
    done = n * hop
    return y[:, :done] / env[:, :done].clamp(min=floor), y[:, done:], env[:, done:].expand(b, -1)
