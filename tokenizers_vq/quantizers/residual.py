"""``rvq`` and ``rfsq``: residual quantization (SoundStream, Zeghidour et al. 2021), codes with a trailing codebook
axis, with quantizer dropout so one model decodes at every bitrate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, distributed
from vector_quantize_pytorch import ResidualFSQ, ResidualVQ

from ..registry import QUANTIZERS
from .base import (
    FSQLevels,
    Quantizer,
    QuantizerOutput,
    ResidualSettings,
    VQSettings,
    _from_seq,
    _is_distributed,
    _sync_codebook_when_distributed,
    _to_seq,
)
from .vq import _vq_kwargs

if TYPE_CHECKING:
    from ..config import TokenizerConfig


@dataclass
class RVQConfig(ResidualSettings, VQSettings):
    """``num_quantizers`` VQ codebooks of ``codebook_size`` codes each."""


@dataclass
class RFSQConfig(ResidualSettings, FSQLevels):
    """``num_quantizers`` FSQ stages of ``fsq_levels`` each."""


def _random_count(q: int, device: torch.device) -> int:
    """A uniform draw from 1..q (torch's RNG, which the training loop seeds and checkpoints), the same on every
    process: all ranks must run the same layers, or their codebook all-reduces would not pair up."""
    n = torch.randint(1, q + 1, (), device=device)
    if _is_distributed():
        distributed.broadcast(n, src=0)
    return int(n)


def _batch_perplexity(codes: Tensor, vocab_size: int) -> Tensor:
    """exp(entropy) of the codes' empirical distribution in one batch: codes int64 [B, N] -> float 0-dim, in
    [1, vocab_size]. On the codes' device, no host sync."""
    p = torch.bincount(codes.reshape(-1), minlength=vocab_size).float()
    p = p / p.sum().clamp_min(1)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum())


class ResidualQuantizer(Quantizer):
    """Residual quantization (SoundStream, Zeghidour et al. 2021, Algorithm 1): ``num_codebooks`` = q quantizers,
    each applied to what the previous ones left over; the quantized latent is the sum of their outputs.

    Codes are [B, *grid, q] int64 in [0, vocab_size) (per codebook). With ``quantizer_dropout`` each training
    forward (grad enabled, no ``n_quantizers``) uses the first n codebooks, n uniform in 1..q (SoundStream §3.3),
    so the decoder learns to read any prefix: ``codes_to_latent`` takes [B, *grid, q'] for any q' <= q (missing
    residuals are zero). Residual quantization is greedy, so the first n codes do not depend on later layers:
    encoding with n codebooks gives a prefix of the full codes.

    The layers, their codebooks and ``get_output_from_indices`` are vector-quantize-pytorch's ``ResidualVQ`` /
    ``ResidualFSQ``; the loop over layers is here because the library runs either all layers or a random
    number of them, never a chosen n (a test pins this loop to the library's own forward).
    """

    dropout: bool

    def _n_active(self, n_quantizers: int | None, device: torch.device) -> int:
        q = self.num_codebooks
        if n_quantizers is not None:
            if isinstance(n_quantizers, bool) or not isinstance(n_quantizers, int) or not 1 <= n_quantizers <= q:
                raise ValueError(f"n_quantizers must be an integer in [1, {q}] (this quantizer's codebooks), "
                                 f"got {n_quantizers!r}")
            return n_quantizers
        # Not under no_grad (Tokenizer.encode, evaluation): tokens must not depend on the RNG.
        if self.training and self.dropout and q > 1 and torch.is_grad_enabled():
            return _random_count(q, device)
        return q

    def _layers(self, residual: Tensor, n: int) -> tuple[Tensor, Tensor, list[Tensor]]:  # pragma: no cover
        """residual float [B, N, d] -> (sum of the first n layers' outputs [B, N, d], codes int64 [B, N, n],
        per-layer losses)."""
        raise NotImplementedError

    def _project_in(self, seq: Tensor) -> Tensor:
        return self.rq.project_in(seq)

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        """z float [B, D, *grid] -> quantized [B, D, *grid], codes int64 [B, *grid, n] (n = ``n_quantizers``, or
        q, or a random 1..q under quantizer dropout), loss (sum of the layers' commitment losses; 0 for rfsq),
        metrics: ``active_codebooks`` (n) and ``perplexity_q{i}`` (batch code perplexity of codebook i < n)."""
        seq, grid = _to_seq(z.float())
        n = self._n_active(n_quantizers, z.device)
        out, codes, losses = self._layers(self._project_in(seq), n)
        quantized = self.rq.project_out(out)
        loss = torch.stack([loss.sum() for loss in losses]).sum() if losses else seq.new_zeros(())
        metrics = {"active_codebooks": seq.new_tensor(float(n))}
        if losses:
            metrics["commit_loss"] = loss.detach()
        for i in range(n):
            metrics[f"perplexity_q{i}"] = _batch_perplexity(codes[..., i].detach(), self.vocab_size)
        return QuantizerOutput(_from_seq(quantized, grid), codes.view(z.shape[0], *grid, n), loss, metrics)

    def codes(self, z: Tensor, n_quantizers: int | None = None) -> Tensor:
        """codes int64 [B, *grid, n] of ``forward``, without its loss and per-codebook metrics (a streaming encoder
        asks for one frame at a time)."""
        seq, grid = _to_seq(z.float())
        n = self._n_active(n_quantizers, z.device)
        codes = self._layers(self._project_in(seq), n)[1]
        return codes.view(z.shape[0], *grid, n)

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """codes int64 [B, *grid, q'] in [0, vocab_size), 1 <= q' <= q -> float [B, D, *grid]: the sum of the first
        q' codebooks' entries (the later residuals are taken as zero)."""
        q, qq = self.num_codebooks, codes.shape[-1]
        if codes.dim() < 2 or not 1 <= qq <= q:
            raise ValueError(f"residual codes must be [B, *grid, q'] with 1 <= q' <= {q} codebooks, got shape "
                             f"{tuple(codes.shape)}")
        grid = tuple(codes.shape[1:-1])
        flat = codes.reshape(codes.shape[0], -1, qq)
        # The library's get_output_from_indices, without its packing, which torch.export specialises to the traced
        # batch size (the ONNX decoder then took batch 2 only); a test pins the two to each other.
        out = sum(F.embedding(flat[..., i], self._codebook(i)) for i in range(qq))
        return _from_seq(self.rq.project_out(out), grid)

    def _codebook(self, i: int) -> Tensor:  # pragma: no cover - interface
        """Codebook i's entries as they are added to the sum: float [vocab_size, d]."""
        raise NotImplementedError


@QUANTIZERS.register("rvq", config=RVQConfig)
class ResidualVQQuantizer(ResidualQuantizer):
    """Residual VQ (``rvq``): ``num_quantizers`` VQ codebooks of ``codebook_size`` codes each, every one with
    VQQuantizer's EMA updates, k-means initialisation, dead-code replacement, commitment loss and distributed
    codebook sync. vector-quantize-pytorch's ``ResidualVQ``."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = self.out_dim = config.latent_dim
        self.vocab_size = config.codebook_size
        self.num_codebooks = config.num_quantizers
        self.dropout = config.quantizer_dropout
        self.rq = ResidualVQ(num_quantizers=config.num_quantizers, quantize_dropout=config.quantizer_dropout,
                             **_vq_kwargs(config))
        for layer in self.rq.layers:
            _sync_codebook_when_distributed(layer)

    def _codebook(self, i: int) -> Tensor:
        return self.rq.layers[i]._codebook.embed[0]  # [1 head, K, d] -> [K, d]

    def _plain_lookup(self) -> bool:
        """Whether an eval-time lookup may skip the library's forward (``_nearest``): every layer single-head,
        Euclidean, without projection, affine parameters or bridge, its codebook initialised, not training."""
        for vq in self.rq.layers:
            cb = vq._codebook
            if (vq.training or vq.heads != 1 or vq.has_projections or cb.use_cosine_sim
                    or getattr(cb, "affine_param", False) or getattr(cb, "vq_bridge", None) is not None
                    or (not torch.compiler.is_compiling() and not bool(cb.initted))):  # export checks it first
                return False
        return True

    def _nearest(self, residual: Tensor, n: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``_layers`` in evaluation, without the library's per-call Python (~0.5 ms a layer): its distance
        arithmetic op for op (vector_quantize_pytorch's ``cdist``: |x|^2 + |c|^2 - 2 x.c, clamped, square root), its
        argmax and its codebook entries, so the codes and sums are the library's to the bit (a test pins it)."""
        with torch.autocast("cuda", enabled=False):  # as the library's codebook forward: fp32 under CUDA autocast
            return self._nearest_fp32(residual, n)

    def _nearest_fp32(self, residual: Tensor, n: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        x = residual.float()
        flat = x.reshape(1, -1, x.shape[-1])
        x2 = (flat ** 2).sum(-1)
        out = torch.zeros_like(x)
        codes = []
        for vq in self.rq.layers[:n]:
            embed = vq._codebook.embed.detach().float()  # [1, K, d]
            xy = torch.einsum("b i d, b j d -> b i j", flat, embed) * -2
            dist = -(x2[..., None] + (embed ** 2).sum(-1)[:, None, :] + xy).clamp(min=1e-8).sqrt()
            idx = dist.argmax(dim=-1)[0]
            quantized = embed[0][idx]
            flat = flat - quantized[None]
            x2 = (flat ** 2).sum(-1)
            out = out + quantized.view_as(x)
            codes.append(idx.view(x.shape[:-1]))
        zero = x.new_zeros(())
        return out, torch.stack(codes, dim=-1), [zero] * len(codes)

    def _layers(self, residual: Tensor, n: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        if not torch.is_grad_enabled() and self._plain_lookup():
            return self._nearest(residual, n)
        out = torch.zeros_like(residual)
        codes, losses = [], []
        for vq in self.rq.layers[:n]:
            quantized, idx, loss = vq(residual)
            # As ResidualVQ with quant_grad_frac=0: the next layer sees the residual, no gradient through it.
            residual = residual - quantized.detach()
            out = out + quantized
            codes.append(idx)
            losses.append(loss)
        return out, torch.stack(codes, dim=-1), losses


@QUANTIZERS.register("rfsq", config=RFSQConfig)
class ResidualFSQQuantizer(ResidualQuantizer):
    """Residual FSQ (``rfsq``): ``num_quantizers`` FSQ stages with ``fsq_levels`` each (prod(levels) codes per
    codebook), stage i working at scale levels**-i; no codebook to collapse, no auxiliary loss.
    vector-quantize-pytorch's ``ResidualFSQ`` (its projection to len(levels) dims, soft clamp and scales)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = self.out_dim = config.latent_dim
        self.vocab_size = math.prod(config.fsq_levels)
        self.num_codebooks = config.num_quantizers
        self.dropout = config.quantizer_dropout
        self.rq = ResidualFSQ(levels=list(config.fsq_levels), num_quantizers=config.num_quantizers,
                              dim=config.latent_dim, quantize_dropout=config.quantizer_dropout)

    def _codebook(self, i: int) -> Tensor:
        return self.rq.layers[i].implicit_codebook * self.rq.scales[i]  # stage i works at scale levels**-i

    def _project_in(self, seq: Tensor) -> Tensor:
        x = self.rq.project_in(seq)
        clamp = self.rq.soft_clamp_input_value
        # ResidualFSQ's bound: keeps the first stage's input where its levels (and later stages' scales) reach.
        return x if clamp is None else (x / clamp).tanh() * clamp

    def _layers(self, residual: Tensor, n: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        out = torch.zeros_like(residual)
        codes = []
        with torch.autocast(residual.device.type, enabled=False):  # rounding to levels needs full precision
            for layer, scale in zip(self.rq.layers[:n], self.rq.scales[:n]):
                quantized, idx = layer(residual / scale)
                quantized = quantized * scale
                residual = residual - quantized.detach()
                out = out + quantized
                codes.append(idx)
        return out, torch.stack(codes, dim=-1), []
