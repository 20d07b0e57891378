"""MADE prior (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation").

A one-hot grid (L * V inputs) goes through an MLP whose weights are multiplied by binary masks so that
the V output logits of position p only depend on the inputs of positions earlier in a fixed ordering
(§4): every unit k gets a degree m(k); input units of position p have degree o(p) (its rank in the
ordering, 1..L); hidden units have degrees in [0, L - 1]; a hidden weight k <- j exists iff
m(k) >= m(j) (Eq. 12), an output weight from hidden unit k to position p iff o(p) > m(k) (Eq. 13).
Hidden degrees are assigned deterministically (cycling through 0..L-1 rather than drawn at random, §4)
so that every degree is present whatever the width. The masks are derivable, so they are
non-persistent buffers. A label enters the first hidden layer through an unmasked embedding (it is
not one of the modelled variables, so every unit may see it).

Orderings: ``made_order="raster"`` (o(p) = p + 1) gives the raster factorisation every ``Prior`` decodes
in, and incremental decoding (the first layer's pre-activation is a sum over the inputs seen so far).
``made_order="random"`` uses a fixed permutation drawn from ``made_seed``: ``log_prob`` stays exact and
normalised (p(x) factorises in that order), but the raster conditionals p(x_i | x_<i) are not available,
so the net sets ``decode_order`` and ``Prior.sample`` fills positions in the MADE order instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PriorConfig
from .net import PriorNet


def made_order(config: PriorConfig) -> Tensor:
    """int64 [L]: order[p] = rank (0-based) of position p in the autoregressive ordering."""
    L = config.seq_len
    if config.made_order == "raster":
        return torch.arange(L)
    g = torch.Generator().manual_seed(config.made_seed)
    return torch.randperm(L, generator=g)


def made_degrees(config: PriorConfig) -> list[Tensor]:
    """Degrees of every layer's units: [inputs (L*V), hidden_1, ..., hidden_n, outputs (L*V)], each int64.

    Inputs and outputs of position p have degree o(p) = order[p] + 1 in 1..L; hidden unit k of a layer has
    degree k mod L in 0..L-1 (degree 0 units see only the label and the biases).
    """
    V = config.vocab_size
    io = (made_order(config) + 1).repeat_interleave(V)  # [L * V], position-major like the one-hot input
    hidden = [torch.arange(h) % config.seq_len for h in config.made_hidden]
    return [io, *hidden, io]


def made_masks(config: PriorConfig) -> list[Tensor]:
    """Binary float masks [out, in] for each linear layer (Germain et al. Eqs. 12-13)."""
    deg = made_degrees(config)
    masks = [(deg[i + 1][:, None] >= deg[i][None, :]).float() for i in range(len(deg) - 2)]
    masks.append((deg[-1][:, None] > deg[-2][None, :]).float())
    return masks


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed binary mask [out, in] (a non-persistent buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


@dataclass
class MADECache:
    """Incremental decoding state (raster order): the first hidden layer's pre-activation [B, H1]."""

    pre: Tensor
    pos: int = 0


class MADE(PriorNet):
    """Masked autoencoder over the one-hot grid.

    forward: x int64 [B, L'] in [0, V) (L' <= L; raster order only for L' < L, the rest is padded and
    cut off), labels int64 [B] in [0, num_classes] or None -> logits float [B, L', V].
    """

    variable_length = True

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        if not config.made_hidden:
            raise ValueError("made_hidden must list at least one hidden width, e.g. (256, 256)")
        L, V = config.seq_len, config.vocab_size
        self.raster = config.made_order == "raster"
        self.supports_cache = self.raster  # instance attribute: incremental decoding needs the raster order
        self.register_buffer("order", made_order(config), persistent=False)  # [L] rank of each position
        self.decode_order = None if self.raster else torch.argsort(self.order)  # positions by increasing rank
        sizes = [L * V, *config.made_hidden, L * V]
        self.layers = nn.ModuleList(MaskedLinear(sizes[i], sizes[i + 1], m) for i, m in enumerate(made_masks(config)))
        self.label_embed = nn.Embedding(config.num_classes + 1, sizes[1]) if config.num_classes else None

    def _hidden_out(self, pre: Tensor) -> Tensor:
        """First-layer pre-activation [B, H1] -> output logits [B, L*V]."""
        h = torch.relu(pre)
        for layer in self.layers[1:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)

    def _label_term(self, labels: Tensor | None) -> Tensor | float:
        return self.label_embed(labels) if (labels is not None and self.label_embed is not None) else 0.0

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        B, Lp = x.shape
        L, V = self.config.seq_len, self.config.vocab_size
        if Lp < L:
            if not self.raster:
                raise ValueError(
                    "a MADE with made_order='random' has no raster-order conditionals, so it cannot score a "
                    f"prefix of {Lp} < {L} tokens; pass whole grids (Prior.sample decodes in the MADE order)")
            x = F.pad(x, (0, L - Lp))  # positions >= Lp cannot influence logits < Lp (raster masks)
        onehot = F.one_hot(x, V).float().reshape(B, L * V)
        pre = self.layers[0](onehot) + self._label_term(labels)
        return self._hidden_out(pre).reshape(B, L, V)[:, :Lp]

    # ------------------------------------------------------------------ incremental decoding (raster order)
    def init_cache(self, batch_size: int, device: torch.device) -> MADECache:
        if not self.raster:
            raise ValueError("incremental decoding needs made_order='raster' (Prior.sample handles other orders)")
        first = self.layers[0]
        return MADECache(pre=first.bias.detach().expand(batch_size, -1).clone().to(device))

    def step(self, cache: MADECache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits [B, V] for position ``pos``: adds x[:, pos-1]'s column of the masked first-layer weight to
        the running pre-activation (O(H1) instead of O(L V H1)), then runs the rest of the MLP, computing
        only position ``pos``'s V outputs."""
        if pos != cache.pos:
            raise ValueError(f"MADE.step must be called for consecutive positions: expected {cache.pos}, got {pos}")
        V = self.config.vocab_size
        if pos == 0:
            cache.pre = cache.pre + self._label_term(labels)
        else:
            w = self.layers[0].masked_weight()  # [H1, L*V]
            cache.pre = cache.pre + w[:, (pos - 1) * V + x[:, pos - 1]].T  # [B, H1]
        h = torch.relu(cache.pre)
        for layer in self.layers[1:-1]:
            h = torch.relu(layer(h))
        out = self.layers[-1]
        cache.pos = pos + 1
        rows = slice(pos * V, (pos + 1) * V)
        return F.linear(h, out.masked_weight()[rows], out.bias[rows])  # [B, V]


def sample_made(prior: Any, n: int, **kwargs) -> Tensor:
    """Draw ``n`` grids int64 [n, *shape] from a MADE prior in its own ordering (any ``made_order``): the same
    as ``prior.sample(n, **kwargs)``, which follows ``MADE.decode_order``. Kept for callers that want the
    MADE order made explicit."""
    if not isinstance(prior.net, MADE):
        raise ValueError(f"sample_made needs a MADE prior, got arch={prior.config.arch!r}")
    return prior.sample(n, **kwargs)
