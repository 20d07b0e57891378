"""``vq``: the VQ-VAE bottleneck (van den Oord et al. 2017) from vector-quantize-pytorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor
from vector_quantize_pytorch import VectorQuantize

from ..registry import QUANTIZERS
from .base import Quantizer, QuantizerOutput, VQSettings, _from_seq, _sync_codebook_when_distributed, _to_seq

if TYPE_CHECKING:
    from ..config import TokenizerConfig


@dataclass
class VQConfig(VQSettings):
    """One codebook of ``codebook_size`` codes with EMA updates."""


def _vq_kwargs(config: TokenizerConfig) -> dict:
    """vector-quantize-pytorch's VectorQuantize settings from a config (shared by vq and every rvq layer)."""
    return dict(dim=config.latent_dim, codebook_size=config.codebook_size, decay=config.ema_decay,
                kmeans_init=config.kmeans_init, kmeans_iters=10, threshold_ema_dead_code=config.dead_code_threshold,
                commitment_weight=config.commitment_weight, codebook_dim=config.codebook_dim,
                use_cosine_sim=config.cosine)


@QUANTIZERS.register("vq", config=VQConfig)
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
