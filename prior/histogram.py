"""Histogram prior: an independent categorical per position (one table per class when conditional).

The baseline every bits/dim number is compared against. ``fit`` sets the tables to Laplace-smoothed
counts (the closed-form maximum-likelihood estimate with add-alpha smoothing); the logits are also a
parameter, so the generic gradient training loop works on it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqgen_io.components import ComponentConfig

from .config import ARCHS, PriorConfig
from .net import PriorNet


@dataclass
class HistogramConfig(ComponentConfig):
    """Independent per-position token counts."""

    laplace_alpha: float = 1.0  # add-alpha (Laplace) smoothing of the per-position count tables


@ARCHS.register("histogram", config=HistogramConfig)
class HistogramNet(PriorNet):
    variable_length = True  # position i's table does not depend on anything, so a prefix is fine
    supports_cache = True  # a "step" is a table lookup: O(V) per position instead of a prefix forward
    fitted_by_counting = True  # train-prior calls ``fit`` instead of the gradient loop

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        tables = max(1, config.num_classes + 1) if config.num_classes else 1  # + null label
        self.logits = nn.Parameter(torch.zeros(tables, config.seq_len, config.vocab_size))

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        idx = labels if labels is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.logits[idx, : x.shape[1]]  # [B, L', V]

    def init_cache(self, batch_size: int, device: torch.device) -> dict:
        return {}  # nothing to carry: the tables do not look at earlier tokens

    def step(self, cache: dict, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        idx = labels if labels is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.logits[idx, pos]  # [B, V]

    def reorder_cache(self, cache: dict, index: Tensor) -> None:
        """Nothing to keep: the cache is empty (beam search)."""

    def _counts(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """int64 [tables, L, V]: how often each token sits at each position, per class (rows labelled k) and, for a
        conditional prior, over every row (the null-label table). x: int64 [N, L]; labels: int64 [N] or None (the
        class tables then count nothing)."""
        V, L, K = self.config.vocab_size, self.config.seq_len, self.config.num_classes
        if x.dim() != 2 or x.shape[1] != L or x.dtype.is_floating_point:
            raise ValueError(f"fit expects integer tokens [N, {L}], got {x.dtype} {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() >= V):
            raise ValueError(f"tokens must lie in [0, {V})")
        x = x.long().to(self.logits.device)
        cell = torch.arange(L, device=x.device) * V + x  # [N, L]: position * V + token
        every = torch.bincount(cell.reshape(-1), minlength=L * V).view(1, L, V)
        if not K:
            return every
        groups = torch.zeros(K, L, V, dtype=torch.long, device=x.device)
        if labels is not None:
            labels = labels.long().to(x.device)
            ok = (labels >= 0) & (labels < K)  # rows of another label are counted in the null table only
            keyed = (labels[ok, None] * (L * V) + cell[ok]).reshape(-1)
            groups = torch.bincount(keyed, minlength=K * L * V).view(K, L, V)
        return torch.cat([groups, every])

    def _set_tables(self, counts: Tensor) -> None:
        """The tables log((count + alpha) / (n + alpha V)) from int64 counts [tables, L, V]."""
        V, a = self.config.vocab_size, self.config.laplace_alpha
        counts = counts.double()
        self.logits.copy_(torch.log((counts + a) / (counts.sum(-1, keepdim=True) + a * V)).float())

    @torch.no_grad()
    def fit(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Set the tables to log((count + alpha) / (n + alpha V)). x: int64 [N, L]; labels: int64 [N] or None.
        The null-label table (conditional priors) is fitted on all data."""
        self._set_tables(self._counts(x, labels))

    @torch.no_grad()
    def fit_chunks(self, chunks: Iterable[tuple[Tensor, Tensor | None]]) -> None:
        """``fit`` on the rows of every chunk (x int64 [n, L], labels int64 [n] or None) without holding them
        together: the integer counts are summed chunk by chunk, so the tables are exactly ``fit``'s on their
        concatenation, and memory is the tables' whatever the number of rows."""
        total = None
        for x, labels in chunks:
            c = self._counts(x, labels)
            total = c if total is None else total.add_(c)
        if total is None:
            raise ValueError("fit_chunks: no grids to count (no chunks)")
        self._set_tables(total)
