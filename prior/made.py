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

Order-agnostic training (§4.2, Table 2): ``made_order="agnostic"`` draws a new ordering for every training
update (``made_num_masks=0``) or cycles among ``made_num_masks`` fixed ones; with
``made_connectivity_agnostic`` the hidden degrees are drawn too (m^1 uniform in [0, L-1], m^l uniform in
[min m^{l-1}, L-1]). Ordering k (k = 0, 1, ...) is derived from ``made_seed`` and k alone, so the
orderings need not be saved. Each masked layer also receives its mask as input, (U ⊙ M) 1 with a learnt U,
so the network knows which ordering it is asked for (the paper's mask conditioning). At evaluation
``log_prob`` is the ensemble log (1/K) sum_k p_k(x) over orderings 0..K-1 (``made_ensemble``): a mixture
of K normalised distributions, so still normalised; ``forward`` (eval mode) and sampling use ordering 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io.components import ComponentConfig

from .config import ARCHS, PriorConfig
from .net import PriorNet


def made_order(config: PriorConfig) -> Tensor:
    """int64 [L]: order[p] = rank (0-based) of position p in the autoregressive ordering (for "agnostic":
    ordering 0, the one sampling follows)."""
    L = config.seq_len
    if config.made_order == "raster":
        return torch.arange(L)
    if config.made_order == "agnostic":
        return agnostic_degrees(config, 0)[0][:: config.vocab_size] - 1
    g = torch.Generator().manual_seed(config.made_seed)
    return torch.randperm(L, generator=g)


def agnostic_seed(config: PriorConfig, k: int) -> int:
    """The generator seed of order-agnostic mask set k (k >= 0): a function of ``made_seed`` and k only."""
    return (config.made_seed * 1_000_003 + k + 1) % (1 << 62)


def agnostic_degrees(config: PriorConfig, k: int) -> list[Tensor]:
    """Degrees of order-agnostic mask set k, laid out as ``made_degrees``: inputs/outputs o_k(p) + 1 in 1..L
    from a random permutation; hidden degrees k' mod L, or with ``made_connectivity_agnostic`` drawn at
    random (first layer uniform in [0, L-1], later ones uniform in [min of the layer below, L-1])."""
    L, V = config.seq_len, config.vocab_size
    g = torch.Generator().manual_seed(agnostic_seed(config, k))
    io = (torch.randperm(L, generator=g) + 1).repeat_interleave(V)
    hidden, low = [], 0
    for h in config.made_hidden:
        if config.made_connectivity_agnostic:
            d = torch.randint(low, L, (h,), generator=g)
            low = int(d.min())
        else:
            d = torch.arange(h) % L
        hidden.append(d)
    return [io, *hidden, io]


def masks_from_degrees(deg: list[Tensor]) -> list[Tensor]:
    """Binary float masks [out, in] for each linear layer from the units' degrees (Eqs. 12-13)."""
    masks = [(deg[i + 1][:, None] >= deg[i][None, :]).float() for i in range(len(deg) - 2)]
    masks.append((deg[-1][:, None] > deg[-2][None, :]).float())
    return masks


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
    """Binary float masks [out, in] for each linear layer (Germain et al. Eqs. 12-13); for "agnostic" those of
    ordering 0 (the one ``forward`` in eval mode and sampling use)."""
    return masks_from_degrees(agnostic_degrees(config, 0) if config.made_order == "agnostic" else made_degrees(config))


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed binary mask [out, in] (a non-persistent buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor, mask: Tensor | None = None, mask_in: Tensor | None = None) -> Tensor:
        """x float [B, in] -> [B, out]; ``mask`` float [out, in] replaces the stored one (order-agnostic
        training); ``mask_in`` [out, in] adds the mask-conditioning term (mask_in ⊙ mask) 1."""
        m = self.mask if mask is None else mask
        out = F.linear(x, self.weight * m, self.bias)
        return out if mask_in is None else out + (mask_in * m).sum(1)


@dataclass
class MADECache:
    """Incremental decoding state (raster order): the first hidden layer's pre-activation [B, H1]."""

    pre: Tensor
    pos: int = 0


@dataclass
class MADEConfig(ComponentConfig):
    """Masked autoencoder for distribution estimation (Germain et al. 2015); see the module docstring."""

    made_hidden: tuple[int, ...] = (256, 256)  # hidden layer widths
    made_order: str = "raster"  # raster | random (a fixed permutation from made_seed) | agnostic (order-agnostic training, section 4.2)
    made_seed: int = 0  # the seed the orderings are drawn from
    made_ensemble: int = 1  # likelihood = log mean of p over the first K orderings (sampling uses the first)
    made_connectivity_agnostic: bool = False  # draw the hidden connectivity with each ordering too
    made_num_masks: int = 0  # 0 = a fresh ordering every update; N = cycle among N fixed ones

    def finalize(self, parent: Any) -> None:
        self.made_hidden = tuple(int(s) for s in self.made_hidden)
        if self.made_order not in ("raster", "random", "agnostic"):
            raise ValueError(f"made_order must be 'raster', 'random' or 'agnostic', got {self.made_order!r}")
        if self.made_ensemble < 1 or self.made_num_masks < 0 or (
                self.made_num_masks and self.made_ensemble > self.made_num_masks):
            raise ValueError(f"made_ensemble must be in [1, made_num_masks or inf), got {self.made_ensemble} "
                             f"(made_num_masks={self.made_num_masks})")


@ARCHS.register("made", config=MADEConfig)
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
        self.agnostic = config.made_order == "agnostic"
        self.supports_cache = self.raster  # instance attribute: incremental decoding needs the raster order
        self.register_buffer("order", made_order(config), persistent=False)  # [L] rank of each position
        self.decode_order = None if self.raster else torch.argsort(self.order)  # positions by increasing rank
        sizes = [L * V, *config.made_hidden, L * V]
        self.layers = nn.ModuleList(MaskedLinear(sizes[i], sizes[i + 1], m) for i, m in enumerate(made_masks(config)))
        self.label_embed = nn.Embedding(config.num_classes + 1, sizes[1]) if config.num_classes else None
        # order-agnostic: each layer's mask as an input (U ⊙ M) 1; zero init = plain MADE at the start
        self.mask_in = nn.ParameterList(nn.Parameter(torch.zeros(sizes[i + 1], sizes[i])) for i in range(len(sizes) - 1)
                                        ) if self.agnostic else None
        self._mask_sets: dict[tuple[int, str], list[Tensor]] = {}  # (k, device) -> masks of eval ordering k

    def _hidden_out(self, pre: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        """First-layer pre-activation [B, H1] -> output logits [B, L*V] (``masks``: another mask set's)."""
        h = torch.relu(pre)
        n = len(self.layers)
        for i in range(1, n):
            h = self.layers[i](h, None if masks is None else masks[i], self._mask_in(i))
            h = torch.relu(h) if i < n - 1 else h
        return h

    def _mask_in(self, i: int) -> Tensor | None:
        return None if self.mask_in is None else self.mask_in[i]

    def mask_set(self, k: int) -> list[Tensor]:
        """The masks float [out, in] of order-agnostic ordering k, on the weights' device (cached)."""
        dev = self.layers[0].weight.device
        key = (k, str(dev))
        if key not in self._mask_sets:
            if len(self._mask_sets) > 64:  # training draws fresh orderings: keep only a bounded few
                self._mask_sets.clear()
            self._mask_sets[key] = [m.to(dev) for m in masks_from_degrees(agnostic_degrees(self.config, k))]
        return self._mask_sets[key]

    def _training_masks(self) -> list[Tensor]:
        """A mask set for one training update: a fresh ordering, or one of ``made_num_masks`` in turn."""
        n = self.config.made_num_masks
        k = int(torch.randint(n, ())) if n else int(torch.randint(1 << 30, (), dtype=torch.long)) + (1 << 20)
        if n:
            return self.mask_set(k)
        dev = self.layers[0].weight.device
        return [m.to(dev) for m in masks_from_degrees(agnostic_degrees(self.config, k))]

    def logits_for(self, x: Tensor, labels: Tensor | None, masks: list[Tensor] | None) -> Tensor:
        """Whole grids x int64 [B, L] -> logits float [B, L, V] under the mask set ``masks`` (None: the stored
        ones, ordering 0)."""
        B, L, V = x.shape[0], self.config.seq_len, self.config.vocab_size
        onehot = F.one_hot(x, V).float().reshape(B, L * V)
        pre = self.layers[0](onehot, None if masks is None else masks[0], self._mask_in(0)) + self._label_term(labels)
        return self._hidden_out(pre, masks).reshape(B, L, V)

    def sequence_log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor | None:
        """Order-agnostic ensemble: x int64 [B, L] -> float [B], log (1/K) sum_{k<K} p_k(x) over orderings
        0..K-1 (K = ``made_ensemble``; normalised, a mixture of normalised models). None for other orders
        (the product of ``forward``'s conditionals is the likelihood)."""
        if not self.agnostic:
            return None
        K = self.config.made_ensemble
        lps = []
        for k in range(K):
            lp = torch.log_softmax(self.logits_for(x, labels, self.mask_set(k)).float(), -1)
            lps.append(lp.gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(1))
        return torch.logsumexp(torch.stack(lps), 0) - torch.log(torch.tensor(float(K)))

    def _label_term(self, labels: Tensor | None) -> Tensor | float:
        return self.label_embed(labels) if (labels is not None and self.label_embed is not None) else 0.0

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        Lp = x.shape[1]
        L = self.config.seq_len
        if Lp < L:
            if not self.raster:
                raise ValueError(
                    f"a MADE with made_order={self.config.made_order!r} has no raster-order conditionals, so it "
                    f"cannot score a prefix of {Lp} < {L} tokens; pass whole grids (Prior.sample decodes in the "
                    "MADE order)")
            x = F.pad(x, (0, L - Lp))  # positions >= Lp cannot influence logits < Lp (raster masks)
        # order-agnostic training: one random ordering per update (eval mode: ordering 0, the sampling order)
        masks = self._training_masks() if (self.agnostic and self.training) else None
        return self.logits_for(x, labels, masks)[:, :Lp]

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

    def reorder_cache(self, cache: MADECache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B'] of the running pre-activation (beam search)."""
        cache.pre = cache.pre[index]


def sample_made(prior: Any, n: int, **kwargs) -> Tensor:
    """Draw ``n`` grids int64 [n, *shape] from a MADE prior in its own ordering (any ``made_order``): the same
    as ``prior.sample(n, **kwargs)``, which follows ``MADE.decode_order``. Kept for callers that want the
    MADE order made explicit."""
    if not isinstance(prior.net, MADE):
        raise ValueError(f"sample_made needs a MADE prior, got arch={prior.config.arch!r}")
    return prior.sample(n, **kwargs)
