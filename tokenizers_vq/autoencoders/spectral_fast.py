"""The per-frame step of a causal spectral codec, written for speed on one CPU thread (issue 24: a live codec
codes a 20 ms frame per call, so the fixed cost of each call decides the real-time factor).

``FastSpectralStep`` is a snapshot of a ``SpectralAudioAutoencoder``'s weights in the layout the step reads best,
the way the Transformer prior's decoding step is written (``prior/transformer.py``): time-major activations
``[n, C]`` (no transposes between layers), weights copied once as contiguous ``[in, out]`` matrices for
``torch.addmm`` (MKL's few-row GEMM), no submodule calls, and a convolution's history kept as its last ``k - 1``
input rows. It computes what ``FrameStack.step`` computes, op for op but for the summation order of the matrix
products: the stream objects (``spectral_stream``) run it and their output equals offline coding to float
rounding (tests: 1e-5). Measured by ``bench/codec_speed.py``; on one frame it runs ~3x fewer ops than the modules.

The snapshot is taken when a stream object is made: weights changed later (training) need a new stream object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor

from .spectral import KERNEL, WINDOW_HOPS

if TYPE_CHECKING:
    from .spectral import FrameStack, SpectralAudioAutoencoder


def _f32(t: Tensor) -> Tensor:
    return t.detach().float().contiguous()


class _LayerNorm:
    def __init__(self, ln: torch.nn.LayerNorm):
        self.shape, self.weight, self.bias, self.eps = tuple(ln.normalized_shape), _f32(ln.weight), _f32(ln.bias), ln.eps

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class FastStack:
    """A causal ``FrameStack``, time-major: frames float32 [n, cin] after ``state`` -> ([n, cout], new state).
    ``state``: the input conv's last ``k - 1`` input rows [k - 1, cin], then each block's last 6 rows [6, dim]."""

    def __init__(self, stack: FrameStack):
        k = stack.inp.kernel_size[0]
        self.k_in, self.cin, self.dim = k, stack.inp.in_channels, stack.inp.out_channels
        # conv weight [out, cin, k] flattened in unfold's order (channel c, tap j at c * k + j), transposed
        self.w_in, self.b_in = _f32(stack.inp.weight.reshape(self.dim, -1).t()), _f32(stack.inp.bias)
        self.blocks = [(_f32(b.dw.weight[:, 0]), _f32(b.dw.bias), _LayerNorm(b.norm), _f32(b.up.weight.t()),
                        _f32(b.up.bias), _f32(b.down.weight.t()), _f32(b.down.bias), _f32(b.gamma))
                       for b in stack.blocks]
        self.norm = _LayerNorm(stack.norm)
        self.w_out, self.b_out = _f32(stack.out.weight.t()), _f32(stack.out.bias)

    def initial_state(self, device: torch.device | str = "cpu") -> list[Tensor]:
        return [torch.zeros(self.k_in - 1, self.cin, device=device),
                *(torch.zeros(KERNEL - 1, self.dim, device=device) for _ in self.blocks)]

    def __call__(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        n = x.shape[0]
        if self.k_in > 1:
            xin = torch.cat([state[0], x])
            new = [xin[n:]]
            h = torch.addmm(self.b_in, xin.unfold(0, self.k_in, 1).reshape(n, -1), self.w_in)
        else:
            new = [state[0]]
            h = torch.addmm(self.b_in, x, self.w_in)
        for (w_dw, b_dw, norm, w_up, b_up, w_down, b_down, gamma), s in zip(self.blocks, state[1:]):
            xin = torch.cat([s, h])
            new.append(xin[n:])
            y = norm((xin.unfold(0, KERNEL, 1) * w_dw).sum(-1) + b_dw)  # depthwise conv over the last 7 rows
            y = torch.addmm(b_down, F.gelu(torch.addmm(b_up, y, w_up)), w_down)
            h = torch.addcmul(h, gamma, y)
        return torch.addmm(self.b_out, self.norm(h), self.w_out), new


class FastSpectralStep:
    """A causal spectral codec's encoder and decoder step on whole tokens (see the module docstring).

    ``encode(companded, context, state, n_quantizers)``: mu-law-companded samples float32 [n * hop] after the
    window's past ``context`` [n_fft - stft_hop] -> (codes int64 [n, q] (or [n] for a single-codebook quantizer),
    new context, new state). ``decode(codes, state)`` -> (complex STFT frames [n * sub, bins], new state).
    """

    def __init__(self, model: SpectralAudioAutoencoder):
        self.model = model
        self.sub, self.bins, self.fine = model.sub, model.bins, model.fine_dim
        self.encoder, self.decoder, self.refine = FastStack(model.encoder), FastStack(model.decoder), FastStack(model.refine)
        self.latent_norm = _LayerNorm(model.latent_norm) if model.latent_norm is not None else None
        q = model.quantizer
        self.mu = int(model.config.mu_law_channels)
        # Residual VQ with the plain lookup (every layer Euclidean, single-head, no projection): its codebooks
        # stacked, so a frame's nearest codes are one product per codebook and its latent one gather.
        plain = getattr(q, "_plain_lookup", None)
        self.rvq = bool(plain is not None and plain() and isinstance(q.rq.project_in, torch.nn.Identity)
                        and isinstance(q.rq.project_out, torch.nn.Identity))
        if self.rvq:
            books = torch.stack([_f32(q._codebook(i)) for i in range(q.num_codebooks)])  # [Q, K, d]
            self.books_t = books.transpose(1, 2).contiguous()  # [Q, d, K]
            self.books_sq = (books ** 2).sum(-1)  # [Q, K]
            self.flat_books = books.reshape(-1, books.shape[-1])  # [Q * K, d]
            self.offsets = torch.arange(books.shape[0], device=books.device) * books.shape[1]

    # ------------------------------------------------------------------ encoder
    def compand(self, x: Tensor) -> Tensor:
        """Samples float32 [T] in [-1, 1] (checked by the caller) -> the mu-law signal the encoder sees (torchaudio's
        encoding and decoding, without ``mu_law_encode``'s per-call range check: the stream checks each chunk)."""
        return AF.mu_law_decoding(AF.mu_law_encoding(x, self.mu), self.mu).float()

    def encode(self, companded: Tensor, context: Tensor, state: list[Tensor] | None, n_quantizers: int | None
               ) -> tuple[Tensor, Tensor, list[Tensor]]:
        buf = torch.cat([context, companded])
        spec = self.model.stft.frames(buf[None])  # [1, bins, n * sub]
        feats = self.model._spec_features(spec)[0].t()  # [n, 3 * bins * sub]: a token's sub frames side by side
        codes, state = self.encode_features(feats, state, n_quantizers)
        return codes, buf[buf.shape[0] - context.shape[0]:], state

    def encode_features(self, feats: Tensor, state: list[Tensor] | None, n_quantizers: int | None
                        ) -> tuple[Tensor, list[Tensor]]:
        """Encoder input float32 [n, 3 * bins * sub] -> (codes, new state)."""
        if state is None:
            state = self.encoder.initial_state(feats.device)
        z, state = self.encoder(feats, state)  # [n, D]
        if self.latent_norm is not None:
            z = self.latent_norm(z)
        if self.rvq:
            return self._nearest(z, n_quantizers), state
        return self.model.quantizer.codes(z.t()[None], n_quantizers)[0], state

    def _nearest(self, z: Tensor, n: int | None) -> Tensor:
        """Residual VQ codes of latents [n, d]: per codebook the nearest entry (|c|^2 - 2 z.c; |z|^2 is the same for
        every entry), then the residual. int64 [n, q]."""
        q = n or self.books_t.shape[0]
        codes = []
        for i in range(q):
            idx = torch.addmm(self.books_sq[i], z, self.books_t[i], alpha=-2).argmin(-1)
            z = z - self.flat_books[idx + i * self.books_sq.shape[1]]
            codes.append(idx)
        return torch.stack(codes, dim=-1)

    # ------------------------------------------------------------------ decoder
    def initial_decoder_state(self, device: torch.device | str = "cpu") -> tuple[list[Tensor], list[Tensor]]:
        return self.decoder.initial_state(device), self.refine.initial_state(device)

    def decode(self, codes: Tensor, state: tuple[list[Tensor], list[Tensor]]
               ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]]]:
        """codes int64 [n, q'] (or [n]) -> (complex STFT frames [n * sub, bins], new state)."""
        out, state = self.decode_frames(codes, state)
        mag = torch.exp(out[:, :self.bins].clamp(max=6.0))
        return torch.polar(mag, out[:, self.bins:].contiguous()), state

    def decode_frames(self, codes: Tensor, state: tuple[list[Tensor], list[Tensor]]
                      ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]]]:
        """codes -> (refine's output float32 [n * sub, 2 * bins]: log-magnitude, phase; new state)."""
        n = codes.shape[0]
        if self.rvq:  # codes [n, q'] -> the sum of the first q' codebooks' entries
            latent = self.flat_books[codes + self.offsets[:codes.shape[1]]].sum(1)
        else:
            latent = self.model.quantizer.codes_to_latent(codes[None])[0].t()
        h, dec_state = self.decoder(latent, state[0])  # [n, fine * sub]
        h = h.view(n, self.fine, self.sub).transpose(1, 2).reshape(n * self.sub, self.fine)  # depth to space
        out, ref_state = self.refine(h, state[1])
        return out, (dec_state, ref_state)


class OverlapAdd:
    """Streaming inverse STFT, time-major: complex frames [m, bins] -> the m * hop samples they complete, divided by
    the summed squared window (at least ``floor``), with the last ``window_hops`` - 1 hops' sums carried between
    calls: what ``FrameSTFT.synthesise`` computes on a whole signal, in padded time (the first ``stft.pad`` samples precede it)."""

    def __init__(self, window: Tensor, floor: float, window_hops: int = WINDOW_HOPS):
        self.window, self.floor = window.float(), floor
        self.n_fft, self.hops = window.shape[0], int(window_hops)
        self.hop = self.n_fft // self.hops
        self.wsq = (self.window ** 2).view(self.hops, self.hop)
        self._env: dict[int, Tensor] = {}
        self.reset()

    def reset(self) -> None:
        self.tail = torch.zeros(self.hops - 1, self.hop, device=self.window.device)
        self.env_tail = torch.zeros(self.hops - 1, self.hop, device=self.window.device)

    def _env_of(self, m: int) -> Tensor:
        """The squared windows of m frames summed into [m + h - 1, hop] (h = window_hops; cached per m:
        data-independent)."""
        env = self._env.get(m)
        if env is None:
            env = torch.zeros(m + self.hops - 1, self.hop, device=self.window.device)
            for j in range(self.hops):
                env[j:j + m] += self.wsq[j]
            self._env[m] = env
        return env

    def __call__(self, spec: Tensor) -> Tensor:
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window  # [m, n_fft]
        done, self.tail, self.env_tail = overlap_add(frames, self.tail, self.env_tail, self.wsq, self.floor,
                                                     self._env_of(spec.shape[0]))
        return done


def overlap_add(frames: Tensor, tail: Tensor, env_tail: Tensor, wsq: Tensor, floor: float,
                env: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One streaming overlap-add, out of place (so the ONNX decoder step traces it too): windowed frames float32
    [k, n_fft] plus the carried sums ``tail`` / ``env_tail`` [h - 1, hop] -> (the k * hop finished samples divided by
    the summed squared window, at least ``floor``; the new tail; the new env_tail). ``wsq``: the squared window as
    [h, hop] (h = window_hops, 4 by default); ``env``: its k frames summed into [k + h - 1, hop] when the caller
    has it (``OverlapAdd`` caches it)."""
    k = frames.shape[0]
    hops, hop = wsq.shape
    blocks = frames.view(k, hops, hop)
    # hop j of frame i lands on row i + j of the k + h - 1 rows this call touches
    y = sum(F.pad(blocks[:, j], (0, 0, j, hops - 1 - j)) for j in range(hops))
    if env is None:
        env = sum(F.pad(wsq[j].expand(k, hop), (0, 0, j, hops - 1 - j)) for j in range(hops))
    y = torch.cat([y[:hops - 1] + tail, y[hops - 1:]])
    env = torch.cat([env[:hops - 1] + env_tail, env[hops - 1:]])
    return (y[:k] / env[:k].clamp(min=floor)).reshape(-1), y[k:], env[k:]
