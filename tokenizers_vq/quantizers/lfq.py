"""``lfq``: lookup-free quantization (Yu et al. 2023, "Language Model Beats Diffusion", MAGVIT-v2, section 3.1) from
vector-quantize-pytorch. The latent is projected to k = log2(codebook_size) dimensions and each is binarised to
-1 / +1: the code is the k-bit number, so there is no codebook to look up or to collapse; an entropy penalty (low
entropy per position, high entropy over the batch) keeps every code in use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor
from vector_quantize_pytorch import LFQ

from ..registry import QUANTIZERS
from .base import CodebookConfig, Quantizer, QuantizerOutput, _from_seq, _to_seq

if TYPE_CHECKING:
    from ..config import TokenizerConfig


@dataclass
class LFQConfig(CodebookConfig):
    """2**k codes from k binary dimensions."""

    codebook_size: int = 1024  # number of codes, a power of two (2**k from k binary dimensions)
    lfq_entropy_loss_weight: float = 0.1  # weight of the entropy penalty that keeps codes in use (MAGVIT-v2 eq. 5)
    lfq_diversity_gamma: float = 1.0  # weight of the batch-entropy term inside that penalty
    lfq_commitment_weight: float = 0.25  # weight of the commitment loss between the latent and its binary code

    def finalize(self, parent: Any) -> None:
        super().finalize(parent)
        if self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"lfq needs codebook_size a power of two (2**k codes from k bits), got "
                             f"{self.codebook_size}; e.g. {1 << (self.codebook_size.bit_length() - 1)}")


@QUANTIZERS.register("lfq", config=LFQConfig)
class LFQQuantizer(Quantizer):
    """float [B, latent_dim, *grid] -> codes int64 [B, *grid] in [0, codebook_size); the quantized latent is the
    ±1 code projected back to latent_dim (the library's projections)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.in_dim = self.out_dim = config.latent_dim
        self.vocab_size = config.codebook_size
        self.lfq = LFQ(dim=config.latent_dim, codebook_size=config.codebook_size,
                       entropy_loss_weight=config.lfq_entropy_loss_weight, diversity_gamma=config.lfq_diversity_gamma,
                       commitment_loss_weight=config.lfq_commitment_weight)

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        self._check_single(n_quantizers)
        seq, grid = _to_seq(z)
        quantized, codes, aux = self.lfq(seq.float())  # aux: weighted entropy + commitment loss (0 in eval)
        return QuantizerOutput(_from_seq(quantized, grid), codes.view(z.shape[0], *grid), aux,
                               {"lfq_aux_loss": aux.detach()})

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        grid = tuple(codes.shape[1:])
        return _from_seq(self.lfq.indices_to_codes(codes.reshape(codes.shape[0], -1)), grid)
