"""Image autoencoder: [B, C, H, W] in [0, 1] -> tokens [B, H/d, W/d] -> [B, C, H, W] in [0, 1].

The layout is the original VQ-VAE's (van den Oord et al. 2017, §4.1): strided 4x4 convolutions do all the
down-sampling, the residual blocks work at the token resolution only, and transposed 4x4 convolutions
up-sample. Keeping the full-resolution stages to a single convolution each makes a step several times
cheaper than residual blocks at every resolution, which is what matters on a CPU budget; GroupNorm in the
residual blocks is what lets the narrow, norm-free stem train at lr 2e-3 (without it the model sits at
the mean image for hundreds of steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io.components import ComponentConfig

from ..layers import ResBlock, norm
from ..metrics import psnr
from ..quantizers import build_quantizer
from ..registry import AUTOENCODERS
from ..types import TokenizerOutput

if TYPE_CHECKING:
    from ..config import TokenizerConfig


def stage_widths(hidden: int, levels: int, max_mult: int = 2) -> list[int]:
    """Channels after each stride-2 stage: hidden, 2*hidden, then capped at ``max_mult * hidden``."""
    return [hidden * min(2**i, max_mult) for i in range(levels)]


class ImageEncoder(nn.Module):
    """[B, cin, H, W] -> [B, cout, H / 2**levels, W / 2**levels]."""

    def __init__(self, cin: int, cout: int, hidden: int, levels: int, res_blocks: int):
        super().__init__()
        widths = stage_widths(hidden, levels)
        layers: list[nn.Module] = []
        prev = cin
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(prev, w, 4, stride=2, padding=1))
            if i < levels - 1:
                layers.append(nn.SiLU())
            prev = w
        if levels == 0:
            layers.append(nn.Conv2d(cin, hidden, 3, padding=1))
            prev = hidden
        layers += [ResBlock(2, prev) for _ in range(res_blocks)]
        layers += [norm(prev), nn.SiLU(), nn.Conv2d(prev, cout, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImageDecoder(nn.Module):
    """[B, cin, h, w] -> [B, cout, h * 2**levels, w * 2**levels] (logits; the caller applies the sigmoid)."""

    def __init__(self, cin: int, cout: int, hidden: int, levels: int, res_blocks: int):
        super().__init__()
        widths = stage_widths(hidden, levels)[::-1] or [hidden]
        layers: list[nn.Module] = [nn.Conv2d(cin, widths[0], 3, padding=1)]
        layers += [ResBlock(2, widths[0]) for _ in range(res_blocks)]
        layers += [norm(widths[0]), nn.SiLU()]
        for i in range(levels):
            nxt = widths[i + 1] if i + 1 < levels else cout
            layers.append(nn.ConvTranspose2d(widths[i], nxt, 4, stride=2, padding=1))
            if i + 1 < levels:
                layers.append(nn.SiLU())
        if levels == 0:
            layers.append(nn.Conv2d(widths[0], cout, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class VQVAEConfig(ComponentConfig):
    """The 2017 VQ-VAE layout (see the module docstring): the small, fast choice for digits."""

    downsample: int = 4  # input-to-token factor per axis (a power of two)
    hidden_channels: int = 32  # width of the first conv stage
    num_res_blocks: int = 2  # residual blocks at the token resolution

    def finalize(self, parent: Any) -> None:
        ds = int(self.downsample)
        if ds < 1 or ds & (ds - 1):
            raise ValueError(f"downsample must be a power of two >= 1, got {ds}")
        self.downsample = ds
        if parent.image_size % ds:
            raise ValueError(f"image_size {parent.image_size} is not divisible by downsample {ds}")


class ImageTokenGrid:
    """What the image families share: a token grid of H/d x W/d, and encoding inputs in [0, 1] as [-1, 1]."""

    config: TokenizerConfig
    quantizer: nn.Module
    encoder: nn.Module

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w = input_shape[-2:]
        d = self.config.downsample
        return (h // d, w // d)

    def _encode_latent(self, x: Tensor) -> Tensor:
        """Image float [B, C, H, W] in [0, 1] -> the encoder's output [B, in_dim, H/d, W/d]."""
        return self.encoder(x * 2 - 1)

    def encode(self, x: Tensor) -> Tensor:
        """x: float32 [B, C, H, W] in [0, 1] -> codes int64 [B, H/d, W/d] ([B, H/d, W/d, q] for rvq / rfsq)."""
        return self.quantizer(self._encode_latent(x)).codes


@AUTOENCODERS.register("vqvae", config=VQVAEConfig)
class ImageAutoencoder(ImageTokenGrid, nn.Module):
    """Convolutional encoder/decoder around a quantizer (VQ-VAE layout, see the module docstring)."""

    modality = "image"

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        levels = int(math.log2(config.downsample))
        self.quantizer = build_quantizer(config)
        self.encoder = ImageEncoder(config.channels, self.quantizer.in_dim, config.hidden_channels, levels,
                                    config.num_res_blocks)
        self.decoder = ImageDecoder(self.quantizer.out_dim, config.channels, config.hidden_channels, levels,
                                    config.num_res_blocks)

    def decode(self, codes: Tensor) -> Tensor:
        """codes int64 [B, h, w] (rvq / rfsq: [B, h, w, q'], q' <= q) -> float32 [B, C, h*d, w*d] in [0, 1]."""
        return torch.sigmoid(self.decoder(self.quantizer.codes_to_latent(codes)))

    def forward(self, x: Tensor) -> TokenizerOutput:
        q = self.quantizer(self.encoder(x * 2 - 1))
        logits = self.decoder(q.quantized)
        recon = torch.sigmoid(logits)
        # Bernoulli likelihood of each pixel (targets in [0, 1], so grey levels are fine): unlike MSE through
        # the sigmoid, its gradient (recon - x) does not vanish on saturated pixels, which on mostly-black
        # digits makes the first few hundred steps several dB better.
        rec_loss = F.binary_cross_entropy_with_logits(logits, x)
        mse = F.mse_loss(recon.detach(), x)
        metrics = {"mse": mse, "psnr": psnr(recon.detach(), x), **q.metrics}
        return TokenizerOutput(recon=recon, codes=q.codes, loss=rec_loss + q.loss, metrics=metrics)
