"""``resnet``: the image autoencoder of VQGAN / LlamaGen / MAGVIT, sized for a CPU budget.

[B, C, H, W] in [0, 1] -> tokens [B, H/d, W/d] -> [B, C, H, W] in [0, 1], for any H and W divisible by d.

Residual blocks with GroupNorm at every resolution (``num_res_blocks`` each), channel multipliers per resolution
(``channel_mult``), optional self-attention at the token resolution, and up-sampling by nearest-neighbour
interpolation followed by a 3x3 convolution: every output pixel sees the same kernel taps, so there is no
checkerboard (a stride-2 transposed convolution overlaps its 4x4 kernel unevenly, Odena et al. 2016). Fully
convolutional (attention included), so one model tokenizes any image size.

The reconstruction loss is chosen for photographs: L1 (and optionally L2) on pixels, ``1 - MS-SSIM`` (structure at
several scales, what a person notices), and an L1 on the 2-D spectrum's magnitudes (high frequencies that pixel
losses average away). None needs pretrained weights. The adversarial term (a PatchGAN discriminator) is trained by
``pipelines`` around this model; see ``tokenizers_vq/discriminator.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io.components import ADDED_LATER, ComponentConfig

from ..layers import ResBlock, norm
from ..metrics import ms_ssim, psnr
from ..quantizers import build_quantizer
from ..registry import AUTOENCODERS
from ..types import TokenizerOutput
from .vqvae import ImageTokenGrid

if TYPE_CHECKING:
    from ..config import TokenizerConfig


class SelfAttention2d(nn.Module):
    """x + proj(attention(norm(x))) over the H*W positions, one head; any H, W. [B, C, H, W] -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity: attention is added, not imposed
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # [B, HW, C] each
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def _widths(hidden: int, mult: list[int]) -> list[int]:
    return [hidden * m for m in mult]


class ResNetEncoder(nn.Module):
    """[B, cin, H, W] -> [B, cout, H / 2**L, W / 2**L], L = len(mult) - 1: conv in, then per resolution
    ``blocks`` residual blocks and (but the last) a stride-2 convolution to the next width; at the token
    resolution a residual block, optional attention, a residual block; GroupNorm, SiLU, 1x1 to ``cout``."""

    def __init__(self, cin: int, cout: int, hidden: int, mult: list[int], blocks: int, attention: bool):
        super().__init__()
        widths = _widths(hidden, mult)
        layers: list[nn.Module] = [nn.Conv2d(cin, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            layers += [ResBlock(2, w) for _ in range(blocks)]
            if i + 1 < len(widths):
                layers.append(nn.Conv2d(w, widths[i + 1], 4, stride=2, padding=1))
        layers.append(ResBlock(2, widths[-1]))
        if attention:
            layers += [SelfAttention2d(widths[-1]), ResBlock(2, widths[-1])]
        layers += [norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cout, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResNetDecoder(nn.Module):
    """[B, cin, h, w] -> [B, cout, h * 2**L, w * 2**L]: the encoder's mirror, up-sampling by nearest-neighbour
    interpolation + 3x3 convolution. Output unbounded (the image in [0, 1] is its clamp)."""

    def __init__(self, cin: int, cout: int, hidden: int, mult: list[int], blocks: int, attention: bool):
        super().__init__()
        widths = _widths(hidden, mult)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cin, widths[0], 3, padding=1), ResBlock(2, widths[0])]
        if attention:
            layers += [SelfAttention2d(widths[0]), ResBlock(2, widths[0])]
        for i, w in enumerate(widths):
            layers += [ResBlock(2, w) for _ in range(blocks)]
            if i + 1 < len(widths):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, widths[i + 1], 3, padding=1)]
        layers += [norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cout, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> nn.Conv2d:
        """The output convolution (whose weight's gradients set the adversarial weight, Esser et al. 2021)."""
        return self.net[-1]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def spectral_l1(x: Tensor, y: Tensor) -> Tensor:
    """Mean L1 between the magnitudes of the orthonormal 2-D FFTs of x and y (float [B, C, H, W]): the error
    at each spatial frequency counted once, so fine detail weighs as much as the mean colour."""
    fx, fy = torch.fft.rfft2(x.float(), norm="ortho"), torch.fft.rfft2(y.float(), norm="ortho")
    return (fx.abs() - fy.abs()).abs().mean()


@dataclass
class ResNetConfig(ComponentConfig):
    """Residual blocks at every resolution, optional attention, interpolation up-sampling (see the module)."""

    downsample: int = 4  # input-to-token factor per axis (a power of two): one resolution per factor of 2
    patch_size: int = field(default=1, metadata=ADDED_LATER)  # pixel-unshuffle the input into p x p patches first (and pixel-shuffle the output): the network starts at 1/p resolution, p^2 x fewer positions (a power of two dividing downsample)
    hidden_channels: int = 16  # width of the first (finest) resolution the network runs at
    channel_mult: list[int] | None = None  # width of each resolution as a multiple of hidden_channels, finest first, log2(downsample / patch_size) + 1 entries (default 1, 2, 4, 4, ...)
    num_res_blocks: int = 1  # residual blocks at each resolution
    attention: bool = False  # self-attention at the token resolution (costs (H*W/d^2)^2 per image)
    l1_weight: float = 1.0  # weight of the pixel L1 loss
    l2_weight: float = 0.0  # weight of the pixel MSE loss
    ms_ssim_weight: float = 0.2  # weight of 1 - MS-SSIM (structure at several scales)
    spectral_weight: float = 0.0  # weight of the L1 between 2-D spectrum magnitudes (fine detail)
    # (the adversarial loss lives with its discriminator: `--disc-weight` of train-tokenizer)

    def finalize(self, parent: Any) -> None:
        ds = int(self.downsample)
        if ds < 1 or ds & (ds - 1):
            raise ValueError(f"downsample must be a power of two >= 1, got {ds}")
        self.downsample = ds
        p = int(self.patch_size)
        if p < 1 or p & (p - 1) or ds % p:
            raise ValueError(f"patch_size must be a power of two dividing downsample {ds}, got {p}")
        self.patch_size = p
        levels = int(math.log2(ds // p))
        if self.channel_mult is None:
            self.channel_mult = [min(2**i, 4) for i in range(levels + 1)]
        self.channel_mult = [int(m) for m in self.channel_mult]
        if len(self.channel_mult) != levels + 1 or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult needs log2(downsample / patch_size) + 1 = {levels + 1} positive entries "
                             f"(one per resolution, finest first), got {self.channel_mult}")
        if self.hidden_channels < 1 or self.num_res_blocks < 0:
            raise ValueError("hidden_channels must be >= 1 and num_res_blocks >= 0")
        if min(self.l1_weight, self.l2_weight, self.ms_ssim_weight, self.spectral_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if parent.image_size % ds:
            raise ValueError(f"image_size {parent.image_size} is not divisible by downsample {ds}")


@AUTOENCODERS.register("resnet", config=ResNetConfig)
class ResNetAutoencoder(ImageTokenGrid, nn.Module):
    """Encoder / quantizer / decoder of the ``resnet`` family (see the module docstring)."""

    modality = "image"
    supports_adversarial = True  # forward gives raw and rec_loss; decoder.last_layer for the adaptive weight

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.quantizer = build_quantizer(config)
        args = (config.hidden_channels, list(config.channel_mult), config.num_res_blocks, config.attention)
        self.patch = int(config.patch_size)
        pixels = config.channels * self.patch**2  # values per position once the input is cut into patches
        self.encoder = ResNetEncoder(pixels, self.quantizer.in_dim, *args)
        self.decoder = ResNetDecoder(self.quantizer.out_dim, pixels, *args)

    def _encode_latent(self, x: Tensor) -> Tensor:
        """Image float [B, C, H, W] in [0, 1] -> the encoder's output [B, in_dim, H/d, W/d]."""
        x = x * 2 - 1
        return self.encoder(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)

    def _image(self, latent: Tensor) -> Tensor:
        """Decoder output (unbounded, [-1, 1] scale) -> image float [B, C, H, W] around [0, 1] (not clamped)."""
        out = self.decoder(latent)
        return (F.pixel_shuffle(out, self.patch) if self.patch > 1 else out) * 0.5 + 0.5

    def decode(self, codes: Tensor) -> Tensor:
        """codes int64 [B, h, w] (rvq / rfsq: [B, h, w, q'], q' <= q) -> float32 [B, C, h*d, w*d] in [0, 1]."""
        return self._image(self.quantizer.codes_to_latent(codes)).clamp(0, 1)

    def reconstruction_loss(self, recon: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted pixel / MS-SSIM / spectral loss of ``recon`` (unclamped) against ``x``, and its terms."""
        c = self.config
        terms: dict[str, Tensor] = {}
        if c.l1_weight:
            terms["l1"] = (recon - x).abs().mean()
        if c.l2_weight:
            terms["l2"] = (recon - x).pow(2).mean()
        if c.ms_ssim_weight:
            terms["ms_ssim_loss"] = 1 - ms_ssim(recon.float().clamp(0, 1), x.float())
        if c.spectral_weight:
            terms["spectral"] = spectral_l1(recon, x)
        weights = {"l1": c.l1_weight, "l2": c.l2_weight, "ms_ssim_loss": c.ms_ssim_weight,
                   "spectral": c.spectral_weight}
        total = sum((weights[k] * v for k, v in terms.items()), torch.zeros((), device=x.device))
        return total, {k: v.detach() for k, v in terms.items()}

    def forward(self, x: Tensor) -> TokenizerOutput:
        q = self.quantizer(self._encode_latent(x))
        raw = self._image(q.quantized)
        rec_loss, terms = self.reconstruction_loss(raw, x)
        recon = raw.clamp(0, 1)
        metrics = {"mse": F.mse_loss(recon.detach(), x), "psnr": psnr(recon.detach(), x),
                   "rec_loss": rec_loss.detach(), **terms, **q.metrics}
        # raw: the unclamped image, what a discriminator judges (gradients also where the clamp would stop them)
        return TokenizerOutput(recon=recon, codes=q.codes, loss=rec_loss + q.loss, metrics=metrics, raw=raw,
                               rec_loss=rec_loss)
