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

Fast generation (in the spirit of Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models", which caches each layer's past activations instead of recomputing the whole
receptive field): the vertical stack's output at row r depends only on rows < r (after the down shift),
so it is computed once per row, for all layers and the whole row, when the row above is complete: each
layer keeps the last ``k // 2 + 1`` rows of its vertical input (O(W) work per row, O(1) amortised per
position). The horizontal stack at (r, c) needs, per layer, only its own inputs at columns c - k//2 .. c
of the current row: each layer keeps the current row's horizontal inputs computed so far, so one new
position costs one small matmul per layer plus the head, instead of a forward over the whole grid. The
cached logits equal the full forward's to float rounding (same weights, the 1x1 and 1xk convolutions
written as matmuls on channels-last vectors).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ARCHS, PriorConfig
from .heads import OutputHeadConfig, head_size, head_to_logits
from .net import PriorNet


def _down_shift(x: Tensor) -> Tensor:
    """x [B, C, H, W] -> row r holds row r - 1 (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _right_shift(x: Tensor) -> Tensor:
    """x [B, C, H, W] -> column c holds column c - 1 (zeros in column 0)."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


class _GatedLayer(nn.Module):
    """One gated layer of both stacks (Fig. 2 of the paper). v, h: float [B, C, H, W]."""

    def __init__(self, channels: int, kernel: int, first: bool, cond_dim: int, dropout: float = 0.0):
        super().__init__()
        C, k = channels, kernel
        self.k, self.first = k, first
        self.v_conv = nn.Conv2d(C, 2 * C, (k // 2 + 1, k))  # rows r - k//2 .. r, columns c - k//2 .. c + k//2
        self.h_conv = nn.Conv2d(C, 2 * C, (1, k // 2 + 1))  # columns c - k//2 .. c
        self.v_to_h = nn.Conv2d(2 * C, 2 * C, 1)  # the vertical -> horizontal link (after the down shift)
        self.h_out = nn.Conv2d(C, C, 1)
        self.cond = nn.Linear(cond_dim, 4 * C, bias=False) if cond_dim else None  # V h for both stacks
        self.drop = nn.Dropout(dropout)  # on the residual branch (PixelCNN++): small datasets overfit without it

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
        h_new = self.h_out(self.drop(self._gate(h_pre)))
        # no residual in the first layer: its input holds the current token (§2.2)
        return self._gate(v_pre), h_new if self.first else h + h_new


def _as_linear(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    """A (1, kw) convolution as a linear map of the channels-last window ``[kw, C_in]`` flattened:
    weight [C_out, C_in, 1, kw] -> [C_out, kw * C_in] (the window's column-major-in-time layout)."""
    w = conv.weight
    return w[:, :, 0].permute(0, 2, 1).reshape(w.shape[0], -1), conv.bias


@dataclass
class PixelCNNCache:
    """Fast-generation state of ``GatedPixelCNN`` for one batch, valid for positions decoded in order.

    v_in[i]: float [B, C, p_i + 1, W + 2 p_i]: layer i's vertical input (zero padded on both sides) for
    the last p_i + 1 completed rows (zeros above the grid), p_i = k_i // 2.
    v_h[i]: float [W, B, 2C]: the vertical stack's contribution to layer i's horizontal pre-activation for
    the current row (v_to_h of the row above, plus the label term and h_conv's bias), column first so each
    pixel's slice is contiguous.
    h_in[i]: float [B, p_i + W, C]: layer i's horizontal inputs of the current row, left padded with p_i
    zeros (column c at index p_i + c).
    lin, head: the 1 x k and 1 x 1 convolutions as (weight, bias) of matmuls on channels-last vectors,
    derived from the weights when the cache is made (the weights must not change while decoding).
    """

    v_in: list[Tensor]
    v_h: list[Tensor]
    h_in: list[Tensor]
    lin: list[dict[str, tuple[Tensor, Tensor | None]]]
    head: list[tuple[Tensor, Tensor | None]]
    cond: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)  # per layer (cv [B,2C], ch [B,2C])
    pos: int = 0


@dataclass
class PixelCNNConfig(OutputHeadConfig):
    """Gated PixelCNN with vertical and horizontal stacks (van den Oord et al. 2016)."""

    pixelcnn_layers: int = 6  # gated layers
    pixelcnn_channels: int = 64  # channels
    dropout: float = 0.0  # dropout on each layer's output while training


@ARCHS.register("pixelcnn", config=PixelCNNConfig)
class GatedPixelCNN(PriorNet):
    """p(grid) over a (H, W) grid (1-D shapes are (1, L), (h, w, q) ones (h, w * q)), read in raster order.

    forward: x int64 [B, L] (the whole grid) in [0, V), labels int64 [B] in [0, num_classes] or None ->
    logits float [B, L, V].
    """

    variable_length = False
    supports_cache = True

    def __init__(self, config: PriorConfig, kernel: int = 3, first_kernel: int = 7):
        super().__init__(config)
        c = config
        C = c.pixelcnn_channels
        self.grid = c.plane  # (H, W); 1-D: (1, L); (h, w, q) codebook grids: (h, w * q), raster order unchanged
        self.embed = nn.Embedding(c.vocab_size, C)
        self.label_embed = nn.Embedding(c.num_classes + 1, C) if c.num_classes else None
        cond_dim = C if c.num_classes else 0
        self.layers = nn.ModuleList(
            _GatedLayer(C, first_kernel if i == 0 else kernel, i == 0, cond_dim, c.dropout) for i in range(c.pixelcnn_layers))
        out = head_size(c.output, c.vocab_size, c.logistic_mixtures)  # V logits or 3K mixture parameters
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, out, 1))

    def _logits(self, out: Tensor) -> Tensor:
        """The head's output [..., V or 3K] -> logits [..., V] (``config.output``; prior/heads.py)."""
        return head_to_logits(out, self.config.output, self.config.vocab_size)

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
        return self._logits(self.head(h).permute(0, 2, 3, 1).reshape(B, L, -1))  # [B, L, V]

    # ------------------------------------------------------------------ fast generation
    def init_cache(self, batch_size: int, device: torch.device) -> PixelCNNCache:
        H, W = self.grid
        C = self.config.pixelcnn_channels
        dtype = self.embed.weight.dtype
        B = batch_size
        v_in, v_h, h_in, lin = [], [], [], []
        for layer in self.layers:
            p = layer.k // 2
            v_in.append(torch.zeros(B, C, p + 1, W + 2 * p, device=device, dtype=dtype))
            v_h.append(torch.zeros(W, B, 2 * C, device=device, dtype=dtype))
            h_in.append(torch.zeros(B, p + W, C, device=device, dtype=dtype))
            lin.append({"h_conv": _as_linear(layer.h_conv), "h_out": _as_linear(layer.h_out),
                        "v_to_h": _as_linear(layer.v_to_h)})
        head = [_as_linear(m) for m in self.head if isinstance(m, nn.Conv2d)]
        return PixelCNNCache(v_in=v_in, v_h=v_h, h_in=h_in, lin=lin, head=head)

    def _new_row(self, cache: PixelCNNCache, x: Tensor, r: int) -> None:
        """Start row r: push row r - 1 (complete) through the vertical stack of every layer and store each
        layer's vertical -> horizontal term for row r; clear the horizontal row buffers."""
        W = self.grid[1]
        B = x.shape[0]
        for buf in cache.h_in:
            buf.zero_()
        if r == 0:  # the down shift feeds zeros to row 0: v_to_h(0) = its bias
            for i, lin in enumerate(cache.lin):
                w = lin["v_to_h"][0]
                self._store_v_h(cache, i, torch.zeros(W, B, w.shape[1], device=x.device, dtype=w.dtype))
            return
        v = self.embed(x[:, (r - 1) * W: r * W]).permute(0, 2, 1)  # [B, C, W]: v_0 of row r - 1
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            p = layer.k // 2
            rows = cache.v_in[i]
            rows = cache.v_in[i] = torch.cat([rows[:, :, 1:], F.pad(v, (p, p))[:, :, None]], 2)
            v_pre = layer.v_conv(rows)[:, :, 0]  # [B, 2C, W]: row r - 1, sees rows <= r - 1
            self._store_v_h(cache, i, v_pre.permute(2, 0, 1))
            cond = cache.cond[i]
            if i < last:  # the last layer's vertical output feeds nothing
                v = layer._gate(v_pre if cond is None else v_pre + cond[0][:, :, None])  # [B, C, W]

    @staticmethod
    def _store_v_h(cache: PixelCNNCache, i: int, v_pre: Tensor) -> None:
        """v_pre float [W, B, 2C]: layer i's vertical pre-activation of the row above -> ``cache.v_h[i]``, the
        row's per-pixel constant of the horizontal pre-activation: v_to_h(v_pre) + label term + h_conv bias."""
        w, b = cache.lin[i]["v_to_h"]
        vh = F.linear(v_pre, w, b)
        cond = cache.cond[i]
        if cond is not None:
            vh = vh + cond[1]
        hb = cache.lin[i]["h_conv"][1]
        cache.v_h[i] = (vh if hb is None else vh + hb).contiguous()

    def step(self, cache: PixelCNNCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits float [B, V] for position ``pos``, reading only x[:, pos - 1] and, at the start of a row,
        the row above (older activations live in the cache). Must be called for pos = 0, 1, 2, ... in order."""
        if pos != cache.pos:
            raise ValueError(f"GatedPixelCNN.step must be called for consecutive positions: expected {cache.pos}, "
                             f"got {pos}")
        W = self.grid[1]
        r, c = divmod(pos, W)
        if pos == 0:
            cond = self.label_embed(labels) if (labels is not None and self.label_embed is not None) else None
            cache.cond = [None if (cond is None or layer.cond is None) else layer.cond(cond).chunk(2, -1)
                          for layer in self.layers]
        if c == 0:
            self._new_row(cache, x, r)
        # layer 0's horizontal input at column c is the right-shifted embedding: token (r, c - 1), zero at c = 0
        B, C = x.shape[0], self.config.pixelcnn_channels
        h = self.embed(x[:, pos - 1]) if c > 0 else cache.h_in[0].new_zeros(B, C)
        for i, layer in enumerate(self.layers):
            p = layer.k // 2
            buf = cache.h_in[i]
            buf[:, p + c] = h
            # the 1 x (p + 1) convolution over columns c - p .. c as one matmul on the flattened window
            a = torch.addmm(cache.v_h[i][c], buf[:, c: c + p + 1].reshape(B, -1), cache.lin[i]["h_conv"][0].t())
            f, g = a.chunk(2, -1)
            w, b = cache.lin[i]["h_out"]
            h_new = F.linear(torch.tanh(f) * torch.sigmoid(g), w, b)
            h = h_new if layer.first else h + h_new
        (w1, b1), (w2, b2) = cache.head
        cache.pos = pos + 1
        return self._logits(F.linear(F.relu(F.linear(F.relu(h), w1, b1)), w2, b2))  # [B, V]

    def reorder_cache(self, cache: PixelCNNCache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B'] of every buffer (beam search)."""
        cache.v_in = [t[index] for t in cache.v_in]
        cache.v_h = [t[:, index] for t in cache.v_h]
        cache.h_in = [t[index] for t in cache.h_in]
        cache.cond = [None if c is None else (c[0][index], c[1][index]) for c in cache.cond]
