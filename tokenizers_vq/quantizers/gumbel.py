"""``gumbel``: the DALL-E dVAE bottleneck (Ramesh et al. 2021, section 2.1), written here because no maintained
library ships it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modality import get_modality
from ..registry import QUANTIZERS
from .base import CodebookConfig, Quantizer, QuantizerOutput, _from_seq, _to_seq

if TYPE_CHECKING:
    from ..config import TokenizerConfig


@dataclass
class GumbelConfig(CodebookConfig):
    """Gumbel-softmax relaxation over ``codebook_size`` code logits, annealed, with a KL to the uniform prior."""

    gumbel_temperature_start: float = 1.0  # tau at step 0 (DALL-E anneals 1 -> 1/16)
    gumbel_temperature_end: float = 1.0 / 16  # tau after gumbel_anneal_steps
    gumbel_anneal_steps: int = 5000  # steps of exponential annealing (train-tokenizer: the run's steps)
    gumbel_kl_weight: float | None = None  # weight of KL(codes || uniform) (default 0.01 images, 0.1 audio; 0.3 keeps more codes in use on speech)
    gumbel_straight_through: bool = True  # one-hot forward, soft gradient (training sees what inference does)

    def finalize(self, parent: Any) -> None:
        super().finalize(parent)
        if self.gumbel_kl_weight is None:
            # Near-silent audio frames collapse gumbel to a few codes at 1e-2; 0.1 suits tones and speech best together
            # (measurements: docs/DESIGN_NOTES.md).
            self.gumbel_kl_weight = 0.1 if get_modality(parent.modality).timed else 1e-2

    def run_defaults(self, steps: int) -> dict[str, Any]:
        return {"gumbel_anneal_steps": steps}  # anneal over the whole run


@QUANTIZERS.register("gumbel", config=GumbelConfig)
class GumbelQuantizer(Quantizer):
    """DALL-E dVAE bottleneck (Ramesh et al. 2021, §2.1): the encoder emits logits over the codebook;
    training mixes code embeddings with a Gumbel-softmax relaxation whose temperature is annealed
    exponentially from ``gumbel_temperature_start`` to ``gumbel_temperature_end``, plus a KL to the
    uniform prior; inference takes the argmax code."""

    normalize_input: ClassVar[bool] = False  # the encoder emits logits: their scale is the codes' confidence

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
