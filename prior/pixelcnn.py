"""Gated PixelCNN prior (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks remove the blind spot of masked convolutions (§2.2, Fig. 1): the *vertical* stack at row r
sees rows <= r (every column within its widening window), and is fed to the *horizontal* stack only
after a one-row down shift, so the horizontal stack at (r, c) sees all of rows < r (within reach) plus
row r's columns < c. The logits come from the horizontal stack. Every layer uses the gated unit
``tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h)`` (§2.2 Eq. 4, class conditioning §2.3 with ``h``
the label embedding), the horizontal stack has residual connections after the first layer (§2.2).

The causal windows are produced by asymmetric zero padding of unmasked convolutions (no weight masks):
vertical kernel ``(k // 2 + 1, k)`` padded on top and both sides; horizontal kernel ``(1, k // 2 + 1)``
padded on the left, with the first layer's input shifted one column right so it excludes the current
token (the paper's mask A). The first layer uses a wider kernel (7, as the paper's 7x7 first layer).
A 1-D grid of length L is a (1, L) image: the vertical stack then only feeds zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PriorConfig
from .net import PriorNet


def _down_shift(x: Tensor) -> Tensor:
    """x [B, C, H, W] -> row r holds row r - 1 (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _right_shift(x: Tensor) -> Tensor:
    """x [B, C, H, W] -> column c holds column c - 1 (zeros in column 0)."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


class _GatedLayer(nn.Module):
    """One gated layer of both stacks (Fig. 2 of the paper). v, h: float [B, C, H, W]."""

    def __init__(self, channels: int, kernel: int, first: bool, cond_dim: int):
        super().__init__()
        C, k = channels, kernel
        self.k, self.first = k, first
        self.v_conv = nn.Conv2d(C, 2 * C, (k // 2 + 1, k))  # rows r - k//2 .. r, columns c - k//2 .. c + k//2
        self.h_conv = nn.Conv2d(C, 2 * C, (1, k // 2 + 1))  # columns c - k//2 .. c
        self.v_to_h = nn.Conv2d(2 * C, 2 * C, 1)  # the vertical -> horizontal link (after the down shift)
        self.h_out = nn.Conv2d(C, C, 1)
        self.cond = nn.Linear(cond_dim, 4 * C, bias=False) if cond_dim else None  # V h for both stacks

    @staticmethod
    def _gate(a: Tensor) -> Tensor:
        f, g = a.chunk(2, 1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        p = self.k // 2
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # [B, 2C, H, W], sees rows <= r
        h_in = _right_shift(h) if self.first else h  # mask A: the first layer must not see the current token
        h_pre = self.h_conv(F.pad(h_in, (p, 0, 0, 0))) + self.v_to_h(_down_shift(v_pre))  # rows < r only
        if self.cond is not None:
            cv, ch = self.cond(cond)[:, :, None, None].chunk(2, 1)
            v_pre, h_pre = v_pre + cv, h_pre + ch
        h_new = self.h_out(self._gate(h_pre))
        # no residual in the first layer: its input holds the current token (§2.2)
        return self._gate(v_pre), h_new if self.first else h + h_new


class GatedPixelCNN(PriorNet):
    """p(grid) over a (H, W) grid (1-D shapes are (1, L)), read in raster order.

    forward: x int64 [B, L] (the whole grid) in [0, V), labels int64 [B] in [0, num_classes] or None ->
    logits float [B, L, V].
    """

    variable_length = False
    supports_cache = False

    def __init__(self, config: PriorConfig, kernel: int = 3, first_kernel: int = 7):
        super().__init__(config)
        c = config
        C = c.pixelcnn_channels
        self.grid = tuple(c.shape) if len(c.shape) == 2 else (1, c.shape[0])
        self.embed = nn.Embedding(c.vocab_size, C)
        self.label_embed = nn.Embedding(c.num_classes + 1, C) if c.num_classes else None
        cond_dim = C if c.num_classes else 0
        self.layers = nn.ModuleList(
            _GatedLayer(C, first_kernel if i == 0 else kernel, i == 0, cond_dim) for i in range(c.pixelcnn_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, c.vocab_size, 1))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        B, L = x.shape
        H, W = self.grid
        if L != H * W:
            raise ValueError(f"GatedPixelCNN needs whole grids of {H * W} tokens, got {L}")
        e = self.embed(x).reshape(B, H, W, -1).permute(0, 3, 1, 2)  # [B, C, H, W]
        cond = self.label_embed(labels) if (labels is not None and self.label_embed is not None) else None
        v = h = e
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h).permute(0, 2, 3, 1).reshape(B, L, -1)  # [B, L, V]
