"""Image autoencoder: [B, C, H, W] in [0, 1] -> tokens [B, H/d, W/d] -> [B, C, H, W] in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TokenizerConfig
from .layers import Decoder, Encoder
from .metrics import psnr
from .quantizers import build_quantizer
from .types import TokenizerOutput


class ImageAutoencoder(nn.Module):
    """Convolutional encoder/decoder with residual blocks around a quantizer (VQ-VAE layout)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        levels = int(math.log2(config.downsample))
        self.quantizer = build_quantizer(config)
        self.encoder = Encoder(2, config.channels, self.quantizer.in_dim, config.hidden_channels, levels,
                               config.num_res_blocks)
        self.decoder = Decoder(2, self.quantizer.out_dim, config.channels, config.hidden_channels, levels,
                               config.num_res_blocks)

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w = input_shape[-2:]
        d = self.config.downsample
        return (h // d, w // d)

    def encode(self, x: Tensor) -> Tensor:
        return self.quantizer(self.encoder(x * 2 - 1)).codes

    def decode(self, codes: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.quantizer.codes_to_latent(codes)))

    def forward(self, x: Tensor) -> TokenizerOutput:
        q = self.quantizer(self.encoder(x * 2 - 1))
        logits = self.decoder(q.quantized)
        recon = torch.sigmoid(logits)
        rec_loss = F.mse_loss(recon, x)
        metrics = {"mse": rec_loss.detach(), "psnr": psnr(recon.detach(), x), **q.metrics}
        return TokenizerOutput(recon=recon, codes=q.codes, loss=rec_loss + q.loss, metrics=metrics)
