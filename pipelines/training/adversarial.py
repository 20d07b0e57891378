"""Adversarial tokenizer training: the tokenizer and its discriminator as one module for the shared loop.

One module, one optimizer, one backward per step: the loss is the tokenizer's own loss, plus the discriminator's
hinge loss on the reconstruction detached from the tokenizer, plus (from ``disc_start``) the adversarial and
feature-matching terms computed through the discriminator with its parameters detached. So each loss term moves
only the network it belongs to, exactly as with two optimizers stepping in turn (the two have separate AdamW
moments per parameter either way). Being one module, the discriminator is in every checkpoint (exact resume),
its gradients are all-reduced by DDP like the tokenizer's, and ``save_final`` writes the tokenizer alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from tokenizers_vq import Tokenizer
from tokenizers_vq.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_weight,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
)


class AdversarialTokenizer(nn.Module):
    """``tokenizer`` + a ``PatchDiscriminator``; ``forward(x)`` -> (loss, metrics). State dict: ``tokenizer.*``,
    ``discriminator.*`` and ``step`` (the optimizer step, which switches the adversarial terms on)."""

    def __init__(self, tokenizer: Tokenizer, config: DiscriminatorConfig):
        super().__init__()
        family = tokenizer.model
        if not getattr(family, "supports_adversarial", False):
            raise ValueError(f"adversarial training (--disc-weight / --feature-match-weight) needs an autoencoder "
                             f"family that supports it (resnet); this tokenizer's is {tokenizer.config.autoencoder!r}")
        self.tokenizer = tokenizer
        self.config = config
        self.discriminator = PatchDiscriminator(tokenizer.config.channels, config.disc_channels, config.disc_layers)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step = 0  # the same on the host: no device sync to read it each step
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_step())

    def _sync_step(self) -> None:
        self._step = int(self.step)

    def set_step(self, step: int) -> None:
        self.step.fill_(step)
        self._step = step

    @property
    def active(self) -> bool:
        """Whether the adversarial terms act on the tokenizer at the current step."""
        return self._step >= self.config.disc_start

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x float [B, C, H, W] in [0, 1] (validated by the task) -> (scalar loss, detached metrics)."""
        cfg = self.config
        out = self.tokenizer(x, check_values=False)
        fake = out.raw
        real_logits, real_feats = self.discriminator(x)
        fake_logits, _ = self.discriminator(fake.detach())
        d_loss = hinge_d_loss(real_logits, fake_logits)
        loss = out.loss + d_loss
        metrics: dict[str, Tensor] = {**out.metrics, "d_loss": d_loss.detach(),
                                      "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}
        if self.active:
            # The discriminator judges the reconstruction with its weights detached: these terms train the
            # tokenizer only (the discriminator's own gradient comes from d_loss above).
            frozen = {n: p.detach() for n, p in self.discriminator.named_parameters()}
            g_logits, g_feats = functional_call(self.discriminator, frozen, (fake,))
            if cfg.disc_weight:
                g_loss = hinge_g_loss(g_logits)
                weight = torch.tensor(cfg.disc_weight, device=x.device)
                if cfg.disc_adaptive and torch.is_grad_enabled():
                    last = self.tokenizer.model.decoder.last_layer.weight
                    weight = weight * adaptive_weight(out.rec_loss, g_loss, last)
                loss = loss + weight * g_loss
                metrics |= {"g_loss": g_loss.detach(), "adv_weight": weight.detach()}
            if cfg.feature_match_weight:
                fm = feature_matching_loss(real_feats, g_feats)
                loss = loss + cfg.feature_match_weight * fm
                metrics["feature_match"] = fm.detach()
        return loss, metrics

    def evaluation_model(self) -> Tokenizer:
        return self.tokenizer


def tokenizer_of(model: Any) -> Any:
    """The tokenizer inside a training module (itself when it is one)."""
    return model.tokenizer if isinstance(model, AdversarialTokenizer) else model
