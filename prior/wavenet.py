"""WaveNet prior (van den Oord et al. 2016) with fast generation (Paine et al. 2016).

Tokens are embedded, shifted right by one (a learned start vector, or the label embedding, fills
position 0) and passed through a causal convolution of width 2 followed by ``n_cycles`` stacks of
dilated causal convolutions (dilations 1, 2, ..., 2**(dilation_cycle-1)) with gated units
``tanh(W_f * h + V_f c) * sigmoid(W_g * h + V_g c)`` (§2.3, global conditioning on the label ``c``),
residual and skip connections (§2.4) and a ReLU-1x1-ReLU-1x1 output head.

Each width-2 causal convolution with dilation d is written as one linear map of ``[h[t - d], h[t]]``,
in channels-last layout, so the full-sequence forward and the one-token step run the same arithmetic
(a matmul over the same concatenated input) and agree to float rounding.

Fast generation (Paine et al. 2016, "Fast Wavenet Generation Algorithm", §3): a layer with dilation d
only needs its own input from d steps ago, so each layer keeps a queue of its last d inputs (here a
preallocated ring buffer ``[B, d, C]`` indexed by ``t mod d``); one new token then costs one matmul per
layer, O(layers), instead of recomputing the whole receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io.components import ComponentConfig

from .config import ARCHS, PriorConfig
from .net import PriorNet


def _delay(h: Tensor, d: int) -> Tensor:
    """h float [B, L, C] -> h[:, t - d] at each t (zeros for t < d): the causal zero padding."""
    return F.pad(h, (0, 0, d, 0))[:, : h.shape[1]]


class _GatedResidualLayer(nn.Module):
    """One dilated layer: width-2 causal conv -> gated unit -> residual 1x1 conv (§2.3-2.4).

    The skip 1x1 convs of all layers are summed, so they are applied together in ``WaveNet.skip`` as one
    1x1 conv on the concatenated gate outputs (the same sum, one matmul instead of one per layer)."""

    def __init__(self, channels: int, dilation: int, cond_dim: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Linear(2 * channels, 2 * channels)  # kernel [h[t-d], h[t]] -> (filter, gate)
        self.cond = nn.Linear(cond_dim, 2 * channels, bias=False) if cond_dim else None  # V_f c, V_g c
        self.res = nn.Linear(channels, channels)

    def gate(self, past: Tensor, now: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """past, now float [..., C] (inputs at t - d and t); cond float [..., 2C] or None ->
        (residual output [..., C], gate output z [..., C] for the skip connection)."""
        a = self.conv(torch.cat([past, now], -1))
        if cond is not None:
            a = a + cond
        f, g = a.chunk(2, -1)
        z = torch.tanh(f) * torch.sigmoid(g)
        return now + self.res(z), z


@dataclass
class WaveNetCache:
    """Fast-generation state: per dilated layer a ring buffer of its last ``d`` inputs.

    first: float [B, C] (the width-2 input conv's previous input); queues[i]: float [B, d_i, C], slot
    ``t mod d_i`` holds layer i's input at step t (zero until written = the causal zero padding).
    """

    first: Tensor
    queues: list[Tensor]
    cond: list[Tensor | None]  # per layer V c, computed once at pos 0 (labels are fixed while decoding)
    pos: int = 0


@dataclass
class WaveNetConfig(ComponentConfig):
    """Stacks of dilated causal convolutions with gated units (van den Oord et al. 2016)."""

    residual_channels: int = 64  # channels of the residual stream
    skip_channels: int = 64  # channels of the skip connections
    dilation_cycle: int = 10  # layers per cycle, dilations 1, 2, ..., 2**(cycle-1)
    n_cycles: int = 1  # cycles; receptive field = n_cycles * (2**dilation_cycle - 1) + 2


@ARCHS.register("wavenet", config=WaveNetConfig)
class WaveNet(PriorNet):
    """p(x) = prod_i p(x_i | x_{i-R..i-1} [, label]) with R = ``receptive_field``.

    forward: x int64 [B, L'] in [0, V) (any L' <= L), labels int64 [B] in [0, num_classes] or None ->
    logits float [B, L', V].
    """

    variable_length = True
    supports_cache = True

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        c = config
        C, S = c.residual_channels, c.skip_channels
        self.embed = nn.Embedding(c.vocab_size, C)
        # position 0 sees no token: a learned start vector (plus the label embedding when conditional)
        self.start = nn.Parameter(torch.zeros(C))
        self.label_embed = nn.Embedding(c.num_classes + 1, C) if c.num_classes else None
        cond_dim = C if c.num_classes else 0
        self.input_conv = nn.Linear(2 * C, C)  # the initial causal conv of width 2 (§2.1, Fig. 2)
        self.dilations = [2**i for _ in range(c.n_cycles) for i in range(c.dilation_cycle)]
        self.layers = nn.ModuleList(_GatedResidualLayer(C, d, cond_dim) for d in self.dilations)
        self.skip = nn.Linear(C * len(self.dilations), S)  # all layers' skip 1x1 convs, summed
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(S, S), nn.ReLU(), nn.Linear(S, c.vocab_size))

    @property
    def receptive_field(self) -> int:
        """Number of previous tokens the logits at position i can see: x[i - R : i].

        1 (the right shift) + 1 (input conv) + sum of dilations = n_cycles * (2**dilation_cycle - 1) + 2.
        """
        return sum(self.dilations) + 2

    def _start(self, labels: Tensor | None, batch: int) -> Tensor:
        s = self.start.expand(batch, -1)
        return s + self.label_embed(labels) if labels is not None else s  # [B, C]

    def _conds(self, labels: Tensor | None) -> list[Tensor | None]:
        if labels is None or self.label_embed is None:
            return [None] * len(self.layers)
        e = self.label_embed(labels)  # [B, C]
        return [layer.cond(e) for layer in self.layers]  # each [B, 2C]

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        B, L = x.shape
        # shift right: input at t is the embedding of x[t-1]; t = 0 gets the start vector
        h = torch.cat([self._start(labels, B)[:, None], self.embed(x[:, :-1])], 1)  # [B, L, C]
        h = self.input_conv(torch.cat([_delay(h, 1), h], -1))
        zs = []
        for layer, cond in zip(self.layers, self._conds(labels)):
            h, z = layer.gate(_delay(h, layer.dilation), h, None if cond is None else cond[:, None])
            zs.append(z)
        return self.head(self.skip(torch.cat(zs, -1)))  # [B, L, V]

    # ------------------------------------------------------------------ fast generation
    def init_cache(self, batch_size: int, device: torch.device) -> WaveNetCache:
        C = self.config.residual_channels
        dtype = self.start.dtype
        return WaveNetCache(first=torch.zeros(batch_size, C, device=device, dtype=dtype),
                            queues=[torch.zeros(batch_size, d, C, device=device, dtype=dtype) for d in self.dilations],
                            cond=[])

    def step(self, cache: WaveNetCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits float [B, V] for position ``pos``, reading only x[:, pos - 1] (older tokens live in the
        queues). Must be called for pos = 0, 1, 2, ... in order."""
        if pos != cache.pos:
            raise ValueError(f"WaveNet.step must be called for consecutive positions: expected {cache.pos}, got {pos}")
        B = x.shape[0]
        if pos == 0:
            cache.cond = self._conds(labels)
            h = self._start(labels, B)
        else:
            h = self.embed(x[:, pos - 1])  # [B, C]
        prev, cache.first = cache.first, h
        h = self.input_conv(torch.cat([prev, h], -1))
        zs = []
        for layer, queue, cond in zip(self.layers, cache.queues, cache.cond):
            slot = pos % layer.dilation
            # queue[:, slot] holds this layer's input at pos - d (zeros while pos < d); the gate's cat
            # copies it before the slot is overwritten with the input at pos
            h_next, z = layer.gate(queue[:, slot], h, cond)
            queue[:, slot] = h
            h = h_next
            zs.append(z)
        cache.pos = pos + 1
        return self.head(self.skip(torch.cat(zs, -1)))  # [B, V]

    def reorder_cache(self, cache: WaveNetCache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B'] of the queues and the label terms (beam search)."""
        cache.first = cache.first[index]
        cache.queues = [q[index] for q in cache.queues]
        cache.cond = [None if c is None else c[index] for c in cache.cond]
