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
from typing import TYPE_CHECKING, Any, ClassVar

from einops import rearrange
from torch import Tensor, distributed, nn
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch import vector_quantize_pytorch as vqp

from vqgen_io.components import ADDED_LATER, ComponentConfig

from ..registry import QUANTIZERS

if TYPE_CHECKING:
    from ..config import TokenizerConfig


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
    # False: the encoder's output is read as logits (gumbel), whose scale is the codes' confidence, so the audio
    # encoders must not normalise it
    normalize_input: ClassVar[bool] = True

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:  # pragma: no cover
        """z float [B, in_dim, *grid] -> QuantizerOutput(quantized float [B, out_dim, *grid], codes int64
        [B, *grid] (residual: [B, *grid, n]) in [0, vocab_size), loss scalar, metrics). ``n_quantizers``:
        residual quantizers only, the codebooks to use (1..num_codebooks; None = all, or a random count in
        training with quantizer dropout); the others accept None or 1."""
        raise NotImplementedError

    def codes(self, z: Tensor, n_quantizers: int | None = None) -> Tensor:
        """Only the codes of ``forward(z, n_quantizers)``: int64 [B, *grid] (residual: [B, *grid, n]). Subclasses
        may skip the loss and metrics; the codes are the same."""
        return self(z, n_quantizers).codes

    def codes_to_latent(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        """codes int64 [B, *grid] (residual: [B, *grid, q'], q' <= num_codebooks) -> quantized latent float
        [B, out_dim, *grid]."""
        raise NotImplementedError

    def _check_single(self, n_quantizers: int | None) -> None:
        # Backbones pass n_quantizers generically; a single-codebook quantizer has exactly one to give.
        if n_quantizers not in (None, 1):
            raise ValueError(f"n_quantizers={n_quantizers!r}: this quantizer has a single codebook (use rvq or "
                             "rfsq for several)")


@dataclass
class QuantizerConfig(ComponentConfig):
    """Base of a quantizer's config section. ``vocab_size``: codes per codebook; ``residual``: codes carry a
    trailing codebook axis of ``num_codebooks``."""

    residual: ClassVar[bool] = False

    @property
    def vocab_size(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def num_codebooks(self) -> int:
        return 1

    def run_defaults(self, steps: int) -> dict[str, Any]:
        """Field values that suit a training run of ``steps`` steps where the user set none (gumbel: anneal over
        the whole run)."""
        return {}


@dataclass
class CodebookConfig(QuantizerConfig):
    """Quantizers with ``codebook_size`` learned or indexed codes."""

    codebook_size: int = 512  # vq, rvq (per codebook), gumbel, lfq: number of codes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    def finalize(self, parent: Any) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")


@dataclass
class VQSettings(CodebookConfig):
    """vector-quantize-pytorch's ``VectorQuantize`` settings (vq and every rvq layer)."""

    commitment_weight: float = 0.25  # beta in van den Oord et al. 2017, eq. 3
    ema_decay: float = 0.99  # EMA codebook decay
    kmeans_init: bool = True  # initialise codes with k-means on the first batch
    dead_code_threshold: float = 2.0  # replace codes whose EMA usage falls below this
    codebook_dim: int | None = field(default=None, metadata=ADDED_LATER)  # look codes up in this many dimensions (projected down and back up; LlamaGen: 8); None: latent_dim
    cosine: bool = field(default=False, metadata=ADDED_LATER)  # l2-normalise inputs and codes before the lookup (LlamaGen, ViT-VQGAN): codebooks that stay used


@dataclass
class FSQLevels(QuantizerConfig):
    """Quantizers with finite scalar levels (fsq, rfsq)."""

    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq, rfsq (per codebook): levels per dimension (8,5,5,5: 1,000 codes)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels)

    def finalize(self, parent: Any) -> None:
        self.fsq_levels = [int(v) for v in self.fsq_levels]
        if any(v < 2 for v in self.fsq_levels):
            raise ValueError(f"every FSQ level must be >= 2, got {self.fsq_levels}")


@dataclass
class ResidualSettings(ComponentConfig):
    """Residual quantization (SoundStream): several codebooks, each on what the previous ones left."""

    residual: ClassVar[bool] = True
    num_quantizers: int = 4  # codebooks q, applied one after another to the remaining residual
    quantizer_dropout: bool = True  # each training batch uses a random 1..q codebooks (SoundStream section 3.3), so the model decodes at every bitrate

    @property
    def num_codebooks(self) -> int:
        return self.num_quantizers

    def finalize(self, parent: Any) -> None:
        super().finalize(parent)
        if not isinstance(self.num_quantizers, int) or isinstance(self.num_quantizers, bool) or self.num_quantizers < 1:
            raise ValueError(f"num_quantizers must be an integer >= 1 (codebooks of rvq / rfsq), got "
                             f"{self.num_quantizers!r}")
        self.quantizer_dropout = bool(self.quantizer_dropout)


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




def build_quantizer(config: TokenizerConfig) -> Quantizer:
    """The quantizer registered under ``config.quantizer`` (``tokenizers_vq/quantizers/<name>.py``)."""
    return QUANTIZERS.get(config.quantizer)(config)
