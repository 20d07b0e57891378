"""Streaming encode and decode for a causal spectral codec (``causal=True``): audio or tokens in chunks of any size.

Each object keeps what the next chunk needs: the encoder the mu-law samples of an unfinished token and the last STFT
window's worth of past samples; both the last inputs of every causal convolution (``FrameStack.step``); the decoder
the overlap-add tail of the inverse STFT (the window_hops - 1 hops, 3 by default, of the last frames' windows that
later frames still add to).
Both run ``FastSpectralStep`` (``spectral_fast.py``): the modules' computation written for a frame per call (time-
major, weights as contiguous [in, out] matrices, no submodule calls), ~2x faster on one frame than the modules'
``step``; the concatenated outputs of a stream equal offline ``encode`` / ``decode`` (to float rounding: the tests
hold it to 1e-5).

Latency: a token is emitted once its ``downsample`` samples have arrived; a sample is emitted once the window_hops - 1
STFT frames after its own are added, i.e. ``latency_ms`` = (downsample + window_hops - 1 STFT hops) / sample rate:
35 ms at 16 kHz.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .spectral_fast import FastSpectralStep, OverlapAdd

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
        self.step = FastSpectralStep(model)  # a snapshot of the weights, read the way one frame is fastest
        self.reset()

    def reset(self) -> None:
        stft = self.model.stft
        self.device = stft.window.device
        self.pending = torch.zeros(0)  # samples of an unfinished token
        self.context = torch.zeros(stft.n_fft - stft.hop, device=self.device)  # the last window's past (companded)
        self.state: list[Tensor] | None = None  # the encoder stack's, made on the first chunk

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
        companded = self.step.compand(samples.to(self.device))
        codes, self.context, self.state = self.step.encode(companded, self.context, self.state, self.n_quantizers)
        return codes.long().cpu()


class StreamDecoder:
    """``dec(tokens)``: int64 tokens [t] or [t, q'] -> float32 samples [T'] in [-1, 1] that no later token changes;
    ``dec.flush()``: the last window_hops - 1 STFT hops of samples and a fresh state for a new stream."""

    def __init__(self, model: SpectralAudioAutoencoder, check_tokens: Callable[[Tensor], None] | None = None):
        self.model, self.check_tokens = model, check_tokens
        self.step = FastSpectralStep(model)
        self.ola = OverlapAdd(model.stft.window, model.stft.env_floor, model.stft.window_hops)
        self.reset()

    def reset(self) -> None:
        self.device = self.model.stft.window.device
        self.ola.reset()  # overlap-add sums not yet final: windowed frames, and the window's squares
        self.skip = self.model.stft.pad  # the first frames' windows reach this far before sample 0
        self.state = self.step.initial_decoder_state(self.device)

    @torch.no_grad()
    def __call__(self, tokens: Any) -> Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.shape[0] == 0:
            return torch.zeros(0)
        if self.check_tokens is not None:
            self.check_tokens(tokens[None])
        spec, self.state = self.step.decode(tokens.long().to(self.device), self.state)
        y = self.ola(spec).cpu()
        drop = min(self.skip, y.shape[0])
        self.skip -= drop
        return y[drop:].clamp(-1.0, 1.0)

    @torch.no_grad()
    def flush(self) -> Tensor:
        y = (self.ola.tail / self.ola.env_tail.clamp(min=self.model.stft.env_floor)).reshape(-1).cpu()[self.skip:]
        self.reset()
        return y.clamp(-1.0, 1.0)
