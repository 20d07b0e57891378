"""The one position-by-position decoding loop (gpt-fast ``generate.py`` style: a state and a few small steps).

Sampling (``Prior.sample``), beam search (``prior.beam_search``) and the range coder
(``pipelines.likelihood.compress``) all walk a prior's positions through a ``Decoder``:

* ``Decoder(net, batch_size, labels, device=..., use_cache=...)``: the state. A token buffer x int64 [B, L]
  (zeros), the positions in decode order (raster, or the net's ``decode_order``: the delay pattern, a
  random-order MADE) and, when ``use_cache`` and the net ``supports_cache``, the net's cache (``init_cache``).
  There is no prompt: decoding starts from the empty prefix.
* ``logits(pos)``: the logits float [B, V] of the next position: the cached ``net.step``; without a cache a
  full forward on the raster prefix x[:, :pos + 1] (``variable_length`` nets in raster order) or on the whole
  buffer (fixed-length nets, other orders), of which position ``pos`` is kept.
* ``accept(pos, tokens)``: write the chosen tokens int64 [B] at ``pos``.
* ``reorder(rows)``: keep batch rows ``rows`` of the buffer, the labels and the cache (beam search).
* ``run(choose)``: walk every position: ``choose(pos, logits)`` returns the tokens to accept.

The range coder needs encoder and decoder to compute bit-identical logits, and files written before this
module existed must still decode: the sequence of tensor operations here (cache calls, full-forward inputs)
is exactly the one the three loops used to run, and must stay so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .net import PriorNet

Choose = Callable[[int, Tensor], Tensor]  # (pos, logits float [B, V]) -> tokens int64 [B] to accept at pos


class Decoder:
    """One left-to-right pass of ``net`` over ``batch_size`` sequences of ``net.config.seq_len`` tokens.

    labels: int64 [batch_size] in [0, num_classes] (num_classes = the null label) or None (unconditional),
    on ``device``; ``use_cache=False`` forces the uncached path (a full forward per position) even for a net
    that ``supports_cache``. Attributes: ``x`` int64 [B, L] (the buffer; positions not yet accepted are 0),
    ``positions`` (decode order, a list of L ints), ``cache`` (the net's state, or None).
    """

    def __init__(self, net: PriorNet, batch_size: int, labels: Tensor | None = None, *,
                 device: torch.device | str | None = None, use_cache: bool = True):
        L = net.config.seq_len
        device = torch.device("cpu") if device is None else torch.device(device)
        order = net.decode_order
        self.net, self.labels = net, labels
        self.x = torch.zeros(batch_size, L, dtype=torch.long, device=device)
        self.positions: Sequence[int] = range(L) if order is None else order.tolist()
        # a prefix is a raster prefix: in another decode order the earlier positions are not x[:, :pos]
        self.prefix = net.variable_length and order is None
        self.cache: Any = net.init_cache(batch_size, device) if (use_cache and net.supports_cache) else None

    @property
    def cached(self) -> bool:
        """Whether ``logits`` steps the net's cache (else: a full forward per position)."""
        return self.cache is not None

    def logits(self, pos: int) -> Tensor:
        """Logits float [B, V] for position ``pos``; every position before it in decode order is accepted."""
        if self.cache is not None:
            return self.net.step(self.cache, self.x, pos, self.labels)
        inp = self.x[:, : pos + 1] if self.prefix else self.x
        return self.net(inp, self.labels)[:, pos]

    def accept(self, pos: int, tokens: Tensor) -> None:
        """Write tokens int64 [B] in [0, V) at position ``pos``."""
        self.x[:, pos] = tokens

    def reorder(self, rows: Tensor) -> None:
        """Keep batch rows ``rows`` int64 [B'] (values in [0, B), repeats allowed) of the buffer, the labels
        and the cache: row i continues old row rows[i] (beam search's surviving prefixes)."""
        self.x = self.x[rows]
        if self.labels is not None:
            self.labels = self.labels[rows]
        if self.cache is not None:
            self.net.reorder_cache(self.cache, rows)

    def run(self, choose: Choose, progress: bool = False, desc: str = "decoding") -> Tensor:
        """Walk every position in decode order, accepting ``choose(pos, logits)`` at each; returns ``x``
        int64 [B, L] (``choose`` may call ``reorder`` before returning, as beam search does)."""
        for pos in tqdm(self.positions, desc=desc, disable=not progress, leave=False):
            self.accept(pos, choose(pos, self.logits(pos)))
        return self.x


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``module`` in eval mode (dropout off: the same function at every step, and on
    both ends of the range coder), then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
