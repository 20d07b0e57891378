"""LSTM prior: token embedding, a start input, ``nn.LSTM`` and a linear head.

The input at position i is the embedding of x[i - 1]; position 0 gets a learned start vector. A label
(conditional priors) is embedded (``num_classes + 1`` rows, the last one the null label) and added to
every input, so the conditioning does not have to survive the whole sequence in the recurrent state.
Incremental decoding carries the LSTM state (h, c) in the cache: one LSTM step per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vqgen_io.components import ComponentConfig

from .config import ARCHS, PriorConfig
from .net import PriorNet


@dataclass
class LSTMCache:
    """(h, c): float [layers, B, hidden] each, the LSTM state after the inputs fed so far; None at start."""

    state: tuple[Tensor, Tensor] | None = None
    pos: int = 0


@dataclass
class LSTMConfig(ComponentConfig):
    """A stacked LSTM over the raster sequence."""

    lstm_hidden: int = 128  # width
    lstm_layers: int = 2  # layers


@ARCHS.register("lstm", config=LSTMConfig)
class LSTMNet(PriorNet):
    """forward: x int64 [B, L'] in [0, V) (any L' <= L), labels int64 [B] in [0, num_classes] or None ->
    logits float [B, L', V]."""

    variable_length = True
    supports_cache = True

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        E = H = config.lstm_hidden
        self.embed = nn.Embedding(config.vocab_size, E)
        self.start = nn.Parameter(torch.zeros(E))
        self.label_embed = nn.Embedding(config.num_classes + 1, E) if config.num_classes else None
        self.lstm = nn.LSTM(E, H, num_layers=config.lstm_layers, batch_first=True)
        self.head = nn.Linear(H, config.vocab_size)

    def _inputs(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """x int64 [B, L'] -> LSTM inputs float [B, L', E]: start, emb(x[0]), ..., emb(x[L'-2]) (+ label)."""
        B = x.shape[0]
        inp = torch.cat([self.start.expand(B, 1, -1), self.embed(x[:, :-1])], 1)
        if labels is not None and self.label_embed is not None:
            inp = inp + self.label_embed(labels)[:, None]
        return inp

    def _run_lstm(self, inp: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        # oneDNN has no bf16 LSTM kernel on CPUs without AVX512-BF16/AMX ("could not create a primitive
        # descriptor for the LSTM forward propagation primitive", seen on an AVX2 EPYC), so under CPU autocast
        # the recurrence runs in float32; the embeddings and the output head still follow autocast.
        if inp.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                if state is not None:
                    state = tuple(s.float() for s in state)
                return self.lstm(inp.float(), state)
        return self.lstm(inp, state)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        out, _ = self._run_lstm(self._inputs(x, labels))  # [B, L', H]
        return self.head(out)

    def init_cache(self, batch_size: int, device: torch.device) -> LSTMCache:
        return LSTMCache()

    def step(self, cache: LSTMCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits [B, V] for position ``pos``, reading only x[:, pos - 1]; pos = 0, 1, ... in order."""
        if pos != cache.pos:
            raise ValueError(f"LSTMNet.step must be called for consecutive positions: expected {cache.pos}, got {pos}")
        # _inputs on a length-1 window gives exactly position pos's input
        window = x[:, pos - 1: pos + 1] if pos > 0 else x[:, :1]
        inp = self._inputs(window, labels)[:, -1:]  # [B, 1, E]
        out, cache.state = self._run_lstm(inp, cache.state)
        cache.pos = pos + 1
        return self.head(out[:, 0])

    def reorder_cache(self, cache: LSTMCache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B'] of the (h, c) state (beam search)."""
        if cache.state is not None:
            cache.state = (cache.state[0][:, index], cache.state[1][:, index])
