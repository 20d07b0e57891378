"""Histogram prior: an independent categorical per position (one table per class when conditional).

The baseline every bits/dim number is compared against. ``fit`` sets the tables to Laplace-smoothed
counts (the closed-form maximum-likelihood estimate with add-alpha smoothing); the logits are also a
parameter, so the generic gradient training loop works on it too.
"""

from __future__ import annotations

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

    @torch.no_grad()
    def fit(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Set the tables to log((count + alpha) / (n + alpha V)). x: int64 [N, L]; labels: int64 [N] or None.
        The null-label table (conditional priors) is fitted on all data."""
        V, a = self.config.vocab_size, self.config.laplace_alpha
        onehot_counts = lambda rows: torch.nn.functional.one_hot(rows, V).sum(0).double()  # noqa: E731
        tables = []
        groups = range(self.config.num_classes) if self.config.num_classes else [None]
        for k in groups:
            rows = x if k is None else x[labels == k]
            counts = onehot_counts(rows) if len(rows) else torch.zeros(x.shape[1], V, dtype=torch.float64)
            tables.append(counts)
        if self.config.num_classes:
            tables.append(onehot_counts(x))
        counts = torch.stack(tables)
        self.logits.copy_(torch.log((counts + a) / (counts.sum(-1, keepdim=True) + a * V)).float())
