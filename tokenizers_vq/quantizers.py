"""Quantizers: continuous latents in, integer codes and quantized latents out.

One interface for the five bottlenecks (``vq``, ``fsq``, ``gumbel``, and the residual ``rvq``, ``rfsq``).
Latents are channel-first, ``[B, D, *grid]`` with any number of grid axes (2 for images, 1 for audio); codes
are ``[B, *grid]`` int64 in ``[0, vocab_size)``, with a trailing codebook axis ``[B, *grid, q]`` for the
residual quantizers (``num_codebooks`` = q; 1 for the others). ``vq``, ``fsq``, ``rvq`` and ``rfsq`` are
vector-quantize-pytorch; ``gumbel`` is written here because no maintained library ships the DALL-E dVAE
bottleneck (Ramesh et al. 2021, §2.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, distributed, nn
from vector_quantize_pytorch import FSQ, ResidualFSQ, ResidualVQ, VectorQuantize
from vector_quantize_pytorch import vector_quantize_pytorch as vqp

from .config import TokenizerConfig


@dataclass
class QuantizerOutput:
    """quantized: float [B, D_out, *grid]; codes: int64 [B, *grid] ([B, *grid, n] for residual quantizers);
    loss: scalar; metrics: scalars."""

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _to_seq(z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """[B, D, *grid] -> ([B, N, D], grid)."""
    grid = tuple(z.shape[2:])
    return rearrange(z, "b d ... -> b (...) d"), grid


def _from_seq(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """[B, N, D] -> [B, D, *grid]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class Quantizer(nn.Module):
    """Base: ``in_dim`` channels in, ``out_dim`` channels out, ``vocab_size`` codes."""

    in_dim: int
    out_dim: int
    vocab_size: int

    num_codebooks: int = 1  # size of the codes' trailing codebook axis (residual quantizers); 1 = no such axis

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:  # pragma: no cover
        """z float [B, in_dim, *grid] -> QuantizerOutput(quantized float [B, out_dim, *grid], codes int64
        [B, *grid] (residual: [B, *grid, n]) in [0, vocab_size), loss scalar, metrics). ``n_quantizers``:
        residual quantizers only, the codebooks to use (1..num_codebooks; None = all, or a random count in
        training with quantizer dropout); the others accept None or 1."""
        raise NotImplementedError

    def codes_to_latent(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        """codes int64 [B, *grid] (residual: [B, *grid, q'], q' <= num_codebooks) -> quantized latent float
        [B, out_dim, *grid]."""
        raise NotImplementedError

    def _check_single(self, n_quantizers: int | None) -> None:
        # Backbones pass n_quantizers generically; a single-codebook quantizer has exactly one to give.
        if n_quantizers not in (None, 1):
            raise ValueError(f"n_quantizers={n_quantizers!r}: this quantizer has a single codebook (use rvq or "
                             "rfsq for several)")


def _vq_kwargs(config: TokenizerConfig) -> dict:
    """vector-quantize-pytorch's VectorQuantize settings from a config (shared by vq and every rvq layer)."""
    return dict(dim=config.latent_dim, codebook_size=config.codebook_size, decay=config.ema_decay,
                kmeans_init=config.kmeans_init, kmeans_iters=10, threshold_ema_dead_code=config.dead_code_threshold,
                commitment_weight=config.commitment_weight)


class VQQuantizer(Quantizer):
    """VQ-VAE bottleneck (van den Oord et al. 2017) with EMA codebook updates, k-means initialisation,
    dead-code replacement and the commitment loss, all from vector-quantize-pytorch."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = self.out_dim = config.latent_dim
        self.vocab_size = config.codebook_size
        self.vq = VectorQuantize(**_vq_kwargs(config))
        _sync_codebook_when_distributed(self.vq)

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        self._check_single(n_quantizers)
        seq, grid = _to_seq(z)
        quantized, codes, commit = self.vq(seq.float())
        loss = commit.sum()
        return QuantizerOutput(_from_seq(quantized, grid), codes.view(z.shape[0], *grid), loss,
                               {"commit_loss": loss.detach()})

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        grid = tuple(codes.shape[1:])
        out = self.vq.get_output_from_indices(codes.reshape(codes.shape[0], -1))
        return _from_seq(out, grid)


def _is_distributed() -> bool:
    # Not vqp.is_distributed(): it is functools.cache'd, and VectorQuantize.__init__ calls it before the launcher's
    # process group exists, so it answers False for the rest of the process and no codebook statistic was ever
    # all-reduced (each rank learned its codebook from its own batches only).
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


def _when_distributed(dist_fn, local_fn):
    def fn(*args, **kwargs):
        return (dist_fn if _is_distributed() else local_fn)(*args, **kwargs)

    return fn


def _sync_codebook_when_distributed(vq: VectorQuantize) -> None:
    """Make k-means initialisation, dead-code replacement and EMA statistics all-reduce across processes
    whenever a process group is up *at call time*.

    vector-quantize-pytorch decides ``sync_codebook`` when the module is built; a tokenizer is usually built
    before Accelerate starts the process group, so each rank would silently keep its own codebook (and
    k-means could deadlock when only some ranks take the distributed path: its issues #25 and #105).
    """
    cb = vq._codebook
    cb.all_reduce_fn = _when_distributed(distributed.all_reduce, vqp.noop)
    cb.kmeans_all_reduce_fn = _when_distributed(distributed.all_reduce, vqp.noop)
    cb.sample_fn = _when_distributed(vqp.sample_vectors_distributed, vqp.batched_sample_vectors)
    cb.replace_sample_fn = _when_distributed(vqp.sample_vectors_distributed, vqp.batched_sample_vectors)


class FSQQuantizer(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023) from vector-quantize-pytorch: no codebook to
    collapse, no auxiliary loss; ``prod(levels)`` codes."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = self.out_dim = config.latent_dim
        self.vocab_size = math.prod(config.fsq_levels)
        # A level of 2 has no centre value under FSQ's default rounding; the library only accepts it with its
        # symmetry-preserving bound (arXiv 2411.19842 §3.2), so that is switched on exactly when a 2 is present
        # (configs without one quantize as before).
        self.fsq = FSQ(levels=list(config.fsq_levels), dim=config.latent_dim,
                       preserve_symmetry=any(v == 2 for v in config.fsq_levels))

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        self._check_single(n_quantizers)
        seq, grid = _to_seq(z)
        quantized, codes = self.fsq(seq.float())
        return QuantizerOutput(_from_seq(quantized, grid), codes.view(z.shape[0], *grid), seq.new_zeros(()), {})

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        grid = tuple(codes.shape[1:])
        out = self.fsq.indices_to_codes(codes.reshape(codes.shape[0], -1))
        return _from_seq(out, grid)


class GumbelQuantizer(Quantizer):
    """DALL-E dVAE bottleneck (Ramesh et al. 2021, §2.1): the encoder emits logits over the codebook;
    training mixes code embeddings with a Gumbel-softmax relaxation whose temperature is annealed
    exponentially from ``gumbel_temperature_start`` to ``gumbel_temperature_end``, plus a KL to the
    uniform prior; inference takes the argmax code."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = config.codebook_size  # the encoder produces one logit per code
        self.out_dim = config.latent_dim
        self.vocab_size = config.codebook_size
        self.embed = nn.Embedding(config.codebook_size, config.latent_dim)
        self.t0, self.t1 = config.gumbel_temperature_start, config.gumbel_temperature_end
        self.anneal_steps = max(1, config.gumbel_anneal_steps)
        self.kl_weight = config.gumbel_kl_weight
        self.hard = config.gumbel_straight_through
        # Persistent so that a resumed run continues the annealing where it stopped.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperature_tensor(self) -> Tensor:
        """tau at the current step, a 0-dim tensor on the step's device (no host sync, no compile graph break)."""
        frac = (self.step.float() / self.anneal_steps).clamp(max=1.0)
        return self.t0 * (self.t1 / self.t0) ** frac

    @property
    def temperature(self) -> float:
        return float(self.temperature_tensor())

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        self._check_single(n_quantizers)
        logits, grid = _to_seq(z.float())  # [B, N, K]
        codes = logits.argmax(-1)
        log_q = F.log_softmax(logits, dim=-1)
        # KL(q || uniform) = sum q log q + log K, averaged over positions.
        kl = (log_q.exp() * log_q).sum(-1).mean() + math.log(self.vocab_size)
        if self.training:
            tau = self.temperature_tensor()
            # DALL-E mixes soft samples; with hard=True the forward pass uses the one-hot sample (straight-through
            # Gumbel-softmax, Jang et al. 2017 §2.2), so the decoder never learns to read information from a
            # mixture that argmax inference would throw away (with soft samples the bench saw the codebook collapse to a perplexity of about 5).
            soft = F.gumbel_softmax(logits, tau=tau, hard=self.hard, dim=-1)
            quantized = soft @ self.embed.weight
            self.step += 1
            metrics = {"kl": kl.detach(), "temperature": tau.detach()}
        else:
            quantized = self.embed(codes)
            metrics = {"kl": kl.detach()}
        return QuantizerOutput(_from_seq(quantized, grid), codes.view(z.shape[0], *grid),
                               self.kl_weight * kl, metrics)

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        grid = tuple(codes.shape[1:])
        return _from_seq(self.embed(codes.reshape(codes.shape[0], -1)), grid)


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

    def _layers(self, residual: Tensor, n: int) -> tuple[Tensor, Tensor, list[Tensor]]:
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


QUANTIZER_CLASSES: dict[str, type[Quantizer]] = {"vq": VQQuantizer, "fsq": FSQQuantizer, "gumbel": GumbelQuantizer,
                                                 "rvq": ResidualVQQuantizer, "rfsq": ResidualFSQQuantizer}


def build_quantizer(config: TokenizerConfig) -> Quantizer:
    """The quantizer named by ``config.quantizer``."""
    return QUANTIZER_CLASSES[config.quantizer](config)
