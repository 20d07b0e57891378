"""Quantizers: continuous latents in, integer codes and quantized latents out.

One interface for the three bottlenecks (``vq``, ``fsq``, ``gumbel``). Latents are channel-first,
``[B, D, *grid]`` with any number of grid axes (2 for images, 1 for audio); codes are ``[B, *grid]``
int64 in ``[0, vocab_size)``. ``vq`` and ``fsq`` are vector-quantize-pytorch; ``gumbel`` is written here
because no maintained library ships the DALL-E dVAE bottleneck (Ramesh et al. 2021, §2.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, distributed, nn
from vector_quantize_pytorch import FSQ, VectorQuantize
from vector_quantize_pytorch import vector_quantize_pytorch as vqp

from .config import TokenizerConfig


@dataclass
class QuantizerOutput:
    """quantized: float [B, D_out, *grid]; codes: int64 [B, *grid]; loss: scalar; metrics: scalars."""

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

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def codes_to_latent(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        """codes int64 [B, *grid] -> quantized latent float [B, out_dim, *grid]."""
        raise NotImplementedError


class VQQuantizer(Quantizer):
    """VQ-VAE bottleneck (van den Oord et al. 2017) with EMA codebook updates, k-means initialisation,
    dead-code replacement and the commitment loss, all from vector-quantize-pytorch."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = self.out_dim = config.latent_dim
        self.vocab_size = config.codebook_size
        self.vq = VectorQuantize(
            dim=config.latent_dim,
            codebook_size=config.codebook_size,
            decay=config.ema_decay,
            kmeans_init=config.kmeans_init,
            kmeans_iters=10,
            threshold_ema_dead_code=config.dead_code_threshold,
            commitment_weight=config.commitment_weight,
        )
        _sync_codebook_when_distributed(self.vq)

    def forward(self, z: Tensor) -> QuantizerOutput:
        seq, grid = _to_seq(z)
        quantized, codes, commit = self.vq(seq.float())
        loss = commit.sum()
        return QuantizerOutput(_from_seq(quantized, grid), codes.view(z.shape[0], *grid), loss,
                               {"commit_loss": loss.detach()})

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        grid = tuple(codes.shape[1:])
        out = self.vq.get_output_from_indices(codes.reshape(codes.shape[0], -1))
        return _from_seq(out, grid)


def _when_distributed(dist_fn, local_fn):
    def fn(*args, **kwargs):
        return (dist_fn if vqp.is_distributed() else local_fn)(*args, **kwargs)

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

    def forward(self, z: Tensor) -> QuantizerOutput:
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

    def forward(self, z: Tensor) -> QuantizerOutput:
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


QUANTIZER_CLASSES: dict[str, type[Quantizer]] = {"vq": VQQuantizer, "fsq": FSQQuantizer, "gumbel": GumbelQuantizer}


def build_quantizer(config: TokenizerConfig) -> Quantizer:
    """The quantizer named by ``config.quantizer``."""
    return QUANTIZER_CLASSES[config.quantizer](config)
