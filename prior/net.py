"""``PriorNet``: the internal protocol every architecture implements (flat raster sequences in, logits out)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .config import PriorConfig


class PriorNet(nn.Module):
    """Internal protocol for one architecture.

    ``forward(x, labels)``: x int64 [B, L'] in [0, V) with L' = L, or any L' <= L when
    ``variable_length`` is True; labels int64 [B] in [0, num_classes] (num_classes = null label) or None
    when unconditional -> logits float [B, L', V]. The logits at position i depend only on x[:, :i] and
    the label.

    Incremental decoding (optional, ``supports_cache``): ``init_cache(batch_size, device)`` returns a
    state; ``step(cache, x, pos, labels)`` returns the logits [B, V] for position ``pos`` given the buffer
    ``x`` [B, L] whose positions < pos are filled (positions >= pos are garbage and must not be read).
    Steps are called for pos = 0, 1, ..., L-1 in order, or in ``decode_order`` when the net sets one
    (then "filled" means the positions before pos in that order). ``reorder_cache(cache, index)`` keeps
    batch rows ``index`` of the state (beam search). ``prior.decoding.Decoder`` is the one loop that calls
    these.

    Capabilities are class attributes (an instance may override one, as a random-order MADE turns off
    ``supports_cache``); callers read them, never probe for methods.
    """

    name: ClassVar[str] = ""  # the registered architecture name (set by ``ARCHS.register``)
    config_class: ClassVar[type] = type(None)  # its config section dataclass (set by ``ARCHS.register``)
    delay_net: ClassVar[type[PriorNet] | None] = None  # the net codebook_pattern="delay" builds (MusicGen), if any
    attention_impls: ClassVar[tuple[str, ...]] = ()  # attention kernels ``impl`` may name (sparse Transformer)
    variable_length: bool = False  # True: ``forward`` takes any raster prefix x[:, :L'] (L' <= L)
    fitted_by_counting: bool = False  # True: ``fit(tokens [N, L], labels [N] | None)`` is its training (closed form)
    supports_cache: bool = False  # True: ``init_cache`` / ``step`` / ``reorder_cache`` decode incrementally
    # The order in which decoding fills positions: None = raster. A net that factorises p(x) in another
    # order (a MADE with a random ordering) sets an int64 [L] permutation; decoding then runs the full
    # forward on the whole buffer at each step (prefixes assume raster order), or ``step`` in that order
    # when ``supports_cache`` (a random-order MADE sets it False; the delay-pattern Transformer True).
    decode_order: Tensor | None = None
    # How many previous tokens position i's logits can see (x[i - R : i]); None: all of them.
    receptive_field: int | None = None

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config

    def sequence_log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor | None:
        """x int64 [B, L] -> log p(x) float [B] when the net's likelihood is not the product of ``forward``'s
        conditionals (an order-agnostic MADE's ensemble); None (the default): ``Prior`` sums those."""
        return None

    def fit(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Closed-form training of a count-based net (``fitted_by_counting``): x int64 [N, L] in [0, V),
        labels int64 [N] in [0, num_classes) or None. Other nets are trained by gradient descent."""
        raise NotImplementedError(
            f"{type(self).__name__} (arch={self.config.arch!r}) is trained by gradient descent, not fitted "
            "by counting (fitted_by_counting is False): train it with `vqgen train-prior` / Prior.loss")

    def fit_chunks(self, chunks: Iterable[tuple[Tensor, Tensor | None]]) -> None:
        """``fit`` on the concatenation of chunks (x int64 [n, L], labels int64 [n] or None, the same for every
        chunk). This default concatenates them (memory: all of them); count-based nets override it to count chunk
        by chunk."""
        chunks = list(chunks)
        if not chunks:
            raise ValueError("fit_chunks: no grids to count (no chunks)")
        if len({lab is None for _, lab in chunks}) > 1:
            raise ValueError("fit_chunks: either every chunk has labels or none has")
        labels = None if chunks[0][1] is None else torch.cat([lab for _, lab in chunks])
        self.fit(torch.cat([x for x, _ in chunks]), labels)

    # ------------------------------------------------------------------ incremental decoding
    def init_cache(self, batch_size: int, device: torch.device) -> Any:
        """A fresh decoding state for ``batch_size`` sequences on ``device`` (``supports_cache`` nets)."""
        raise NotImplementedError(f"{type(self).__name__} has no decoding cache (supports_cache is False)")

    def step(self, cache: Any, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits float [B, V] for position ``pos`` (see the class docstring; ``supports_cache`` nets)."""
        raise NotImplementedError(f"{type(self).__name__} has no decoding cache (supports_cache is False)")

    def reorder_cache(self, cache: Any, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B'] (values in [0, B)) of ``cache``, in place (beam search). Every
        net with ``supports_cache`` implements it; a net without a cache never has one to reorder."""
        raise NotImplementedError(
            f"{type(self).__name__} has no reorder_cache: a net with supports_cache must implement it (beam "
            "search keeps the surviving rows of the cache); decode with use_cache=False meanwhile")
