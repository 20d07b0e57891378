"""Typed outputs shared by the autoencoders."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class TokenizerOutput:
    """recon: the reconstruction in the input's layout and range; codes: int64 [B, *token_grid];
    loss: scalar training loss (reconstruction + quantizer terms); metrics: detached scalars for logging.
    Families that support adversarial training also give ``raw`` (the reconstruction before it is clamped to the
    input's range, what a discriminator judges) and ``rec_loss`` (the reconstruction term of ``loss`` alone)."""

    recon: Tensor
    codes: Tensor
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    raw: Tensor | None = None
    rec_loss: Tensor | None = None
