"""The adversarial part of image tokenizer training: a PatchGAN discriminator trained from scratch with the hinge
loss (Isola et al. 2017; VQGAN, Esser et al. 2021), VQGAN's adaptive weight, a delayed start, and feature
matching on the discriminator's layers (Salimans et al. 2016; MelGAN's form). No pretrained network.

Only training uses it: ``pipelines`` wraps a tokenizer and a discriminator into one module
(``pipelines.training.adversarial``), so the discriminator is checkpointed, resumed and synchronised across
processes with the tokenizer, and left out of the saved tokenizer folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DiscriminatorConfig:
    """Settings of the adversarial loss (train-tokenizer flags; not saved with the tokenizer)."""

    disc_weight: float = 0.0  # weight of the adversarial loss on the generator (0: no discriminator; VQGAN 0.8, LlamaGen 0.5)
    disc_start: int = 0  # optimizer step at which the adversarial and feature-matching terms switch on (the discriminator trains from step 0)
    disc_channels: int = 64  # width of the discriminator's first layer (doubled per layer, at most 8x)
    disc_layers: int = 3  # stride-2 layers of the PatchGAN (3: 70x70 receptive field; 2 suits 32-64 px images)
    disc_adaptive: bool = True  # scale the adversarial term by |grad rec_loss| / |grad adv_loss| at the decoder's last layer (VQGAN)
    feature_match_weight: float = 0.0  # weight of the L1 between the discriminator's features of the input and of its reconstruction

    def __post_init__(self) -> None:
        if self.disc_weight < 0 or self.feature_match_weight < 0 or self.disc_start < 0:
            raise ValueError("disc_weight, feature_match_weight and disc_start must be >= 0")
        if self.disc_layers < 1 or self.disc_channels < 1:
            raise ValueError("disc_layers and disc_channels must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.disc_weight > 0 or self.feature_match_weight > 0


class PatchDiscriminator(nn.Module):
    """PatchGAN: [B, C, H, W] in [0, 1] -> real/fake logits [B, 1, h, w], one per overlapping patch, plus the
    activations of each hidden layer. GroupNorm instead of BatchNorm, so a patch's score does not depend on the
    rest of the batch (and N processes need no synchronised statistics); spectral norm is not needed with the
    hinge loss at these sizes."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2))]
        w = width
        for i in range(1, layers + 1):
            nxt = width * min(2**i, 8)
            stride = 2 if i < layers else 1  # the last feature layer keeps the resolution (pix2pix's layout)
            # no bias before a norm: it would be subtracted right away (and Adam would amplify its zero gradient)
            blocks.append(nn.Sequential(nn.Conv2d(w, nxt, 4, stride, 1, bias=False), nn.GroupNorm(min(32, nxt), nxt),
                                        nn.LeakyReLU(0.2)))
            w = nxt
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(w, 1, 4, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = x * 2 - 1
        feats = []
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        return self.head(h), feats


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's hinge loss: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), halved as in VQGAN."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """The generator's side of the hinge GAN: -mean(D(G(z)))."""
    return -fake_logits.mean()


def feature_matching_loss(real_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
    """Mean over layers of the L1 between the discriminator's activations of the input (a fixed target) and of
    the reconstruction."""
    return torch.stack([(f - r.detach()).abs().mean() for r, f in zip(real_feats, fake_feats)]).mean()


def adaptive_weight(rec_loss: Tensor, adv_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's balance (Esser et al. 2021, eq. 7): |grad_L rec_loss| / (|grad_L adv_loss| + 1e-4) at the decoder's
    last layer weight L, clamped to [0, max_weight] and detached: the adversarial term pulls that layer about as
    hard as the reconstruction does, whatever their raw scales."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, max_weight).detach()
