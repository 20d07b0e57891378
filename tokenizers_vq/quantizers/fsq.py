"""``fsq``: finite scalar quantization (Mentzer et al. 2023) from vector-quantize-pytorch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor
from vector_quantize_pytorch import FSQ

from ..registry import QUANTIZERS
from .base import FSQLevels, Quantizer, QuantizerOutput, _from_seq, _to_seq

if TYPE_CHECKING:
    from ..config import TokenizerConfig


@dataclass
class FSQConfig(FSQLevels):
    """prod(fsq_levels) implicit codes; nothing to learn in the bottleneck, nothing to collapse."""


@QUANTIZERS.register("fsq", config=FSQConfig)
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
