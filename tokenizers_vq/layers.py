"""Convolutional building blocks shared by the image (2-D) and audio (1-D) autoencoders."""

from __future__ import annotations

from torch import Tensor, nn


def conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None) -> nn.Module:
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    return cls(cin, cout, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)


def norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: statistics must not depend on the batch (encode of one image == in a batch).
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))) , channel count preserved."""

    def __init__(self, dims: int, channels: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        pad = dilation * (kernel // 2)
        cls = nn.Conv2d if dims == 2 else nn.Conv1d
        self.block = nn.Sequential(
            norm(channels), nn.SiLU(), cls(channels, channels, kernel, padding=pad, dilation=dilation),
            norm(channels), nn.SiLU(), cls(channels, channels, kernel, padding=kernel // 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """[B, cin, *S] -> [B, cout, *S / 2**levels]: conv in, (res blocks, stride-2 conv) per level."""

    def __init__(self, dims: int, cin: int, cout: int, hidden: int, levels: int, res_blocks: int,
                 max_mult: int = 2, down_kernel: int = 4):
        super().__init__()
        chans = [hidden * min(2**i, max_mult) for i in range(levels + 1)]
        layers: list[nn.Module] = [conv(dims, cin, chans[0])]
        for i in range(levels):
            layers += [ResBlock(dims, chans[i]) for _ in range(res_blocks)]
            layers.append(conv(dims, chans[i], chans[i + 1], kernel=down_kernel, stride=2,
                               padding=(down_kernel - 2) // 2))
        layers += [ResBlock(dims, chans[-1]) for _ in range(res_blocks)]
        layers += [norm(chans[-1]), nn.SiLU(), conv(dims, chans[-1], cout, kernel=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """[B, cin, *s] -> [B, cout, *s * 2**levels]: mirror of ``Encoder`` with nearest upsampling + conv."""

    def __init__(self, dims: int, cin: int, cout: int, hidden: int, levels: int, res_blocks: int, max_mult: int = 2):
        super().__init__()
        chans = [hidden * min(2**i, max_mult) for i in range(levels + 1)][::-1]
        layers: list[nn.Module] = [conv(dims, cin, chans[0])]
        layers += [ResBlock(dims, chans[0]) for _ in range(res_blocks)]
        for i in range(levels):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(dims, chans[i], chans[i + 1])]
            layers += [ResBlock(dims, chans[i + 1]) for _ in range(res_blocks)]
        layers += [norm(chans[-1]), nn.SiLU(), conv(dims, chans[-1], cout)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
