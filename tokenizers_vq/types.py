"""Typed outputs shared by the autoencoders."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class TokenizerOutput:
    """recon: the reconstruction in the input's layout and range; codes: int64 [B, *token_grid];
    loss: scalar training loss (reconstruction + quantizer terms); metrics: detached scalars for logging."""

    recon: Tensor
    codes: Tensor
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
