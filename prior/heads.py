"""Output heads: turn a network's per-position features into the V-way distribution of each position.

``"softmax"`` (the default everywhere): a linear map to V logits.

``"logistic_mixture"``: the discretised mixture of logistics of PixelCNN++ (Salimans et al. 2017, §2.1,
Eq. 2). Each position predicts K weights pi_k, means mu_k and log scales log s_k (3K numbers instead of V);
bin i of the V ordered bins is the interval [x_i - h, x_i + h] around x_i = 2i / (V - 1) - 1 (bins tile
[-1, 1], h = 1 / (V - 1)), and its probability is

    P(i) = sum_k pi_k [sigma((x_i + h - mu_k) / s_k) - sigma((x_i - h - mu_k) / s_k)],

with the edge bins integrating to -inf (bin 0) and +inf (bin V - 1), so the V probabilities sum to one.
The head returns these as log-probabilities ``[..., V]``: everything that consumes logits (softmax
sampling, ``log_prob``, cross-entropy, caches, beam search) works unchanged, since log_softmax of a
normalised log-distribution is itself. Only meaningful when the token values are *ordered* (neighbouring
values are similar): raw 8-bit pixels and raw mu-law samples (V = 256), not a codebook's indices.

RGB: raw colour grids interleave channels per pixel (R, G, B of a pixel are consecutive raster
positions), so each channel's mixture is already conditioned on the earlier channels of its pixel
through the autoregressive inputs; PixelCNN++'s linear channel coupling (it predicts the three channels
of a pixel at once) is not needed here.

Numerics: log(sigma(b) - sigma(a)) is computed as log sigma(b') + log(1 - exp(log sigma(a') - log sigma(b')))
with (a', b') = (-b, -a) when a > 0 (the same difference, sigma's symmetry), so a' <= 0 and neither term
saturates; the infinite edges are finite constants far in the tails (exact in float32, finite gradients).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vqgen_io.components import ComponentConfig

OUTPUTS = ("softmax", "logistic_mixture")
_TAIL = 1e4  # a standardised edge at +-1e4 is +-inf for the logistic in float32 (sigma(-1e4) = 0 exactly)
LOG_SCALE_MIN = -7.0  # PixelCNN++'s floor on log s (keeps bin probabilities differentiable)


@dataclass
class OutputHeadConfig(ComponentConfig):
    """Settings of the output head (prior/heads.py), for the architectures that can predict ordered values with a
    discretised logistic mixture: an architecture supports ``output="logistic_mixture"`` by including these."""

    output: str = field(default="softmax", metadata={"strict": True})  # softmax (V logits) | logistic_mixture (PixelCNN++; ordered values only: raw pixels, mu-law)
    logistic_mixtures: int = 5  # components K per position

    def finalize(self, parent: Any) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "logistic_mixture" and self.logistic_mixtures < 1:
            raise ValueError(f"logistic_mixtures must be >= 1, got {self.logistic_mixtures}")


def head_size(output: str, vocab_size: int, mixtures: int) -> int:
    """Number of features the network must emit per position for ``output``: V (softmax) or 3K (mixture)."""
    if output == "softmax":
        return vocab_size
    if output == "logistic_mixture":
        return 3 * mixtures
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def _log1mexp(z: Tensor) -> Tensor:
    """log(1 - exp(z)) for z <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(z > -0.6931471805599453, torch.log(-torch.expm1(z)), torch.log1p(-torch.exp(z)))


def logistic_mixture_log_probs(params: Tensor, vocab_size: int) -> Tensor:
    """Discretised logistic mixture: params float [..., 3K] (K logits of pi, K means in data units
    [-1, 1], K log scales) -> log-probabilities float32 [..., V] over the V ordered bins; logsumexp over
    the last axis is 0 (up to float rounding). V >= 2."""
    V = vocab_size
    K = params.shape[-1] // 3
    logit_pi, mu, log_s = params.float().unflatten(-1, (3, K)).unbind(-2)  # each [..., K]
    log_s = log_s.clamp(min=LOG_SCALE_MIN)
    inv_s = torch.exp(-log_s)[..., None]  # [..., K, 1]
    centres = torch.linspace(-1.0, 1.0, V, device=params.device)  # x_i
    h = 1.0 / (V - 1)
    a = (centres - h - mu[..., None]) * inv_s  # [..., K, V]: standardised lower edges
    b = (centres + h - mu[..., None]) * inv_s
    idx = torch.arange(V, device=params.device)
    a = torch.where(idx == 0, torch.full_like(a, -_TAIL), a)  # bin 0 integrates from -inf
    b = torch.where(idx == V - 1, torch.full_like(b, _TAIL), b)  # bin V-1 to +inf
    flip = a > 0  # both edges in the upper tail: use sigma(-a) - sigma(-b), the same mass
    a2, b2 = torch.where(flip, -b, a), torch.where(flip, -a, b)
    lsa, lsb = F.logsigmoid(a2), F.logsigmoid(b2)
    log_mass = lsb + _log1mexp(torch.minimum(lsa - lsb, torch.full_like(lsa, -1e-30)))  # [..., K, V]
    return torch.logsumexp(torch.log_softmax(logit_pi, -1)[..., None] + log_mass, -2)


def head_to_logits(out: Tensor, output: str, vocab_size: int) -> Tensor:
    """A net's last projection, float [..., head_size(...)] -> logits float [..., V]: unchanged for
    "softmax"; for "logistic_mixture" the mixture's normalised log-probabilities (float32)."""
    return out if output == "softmax" else logistic_mixture_log_probs(out, vocab_size)
