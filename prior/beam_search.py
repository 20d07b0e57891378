"""Beam search for the most likely grid under a prior.

This is for finding a high-likelihood (MAP-like) grid, e.g. to inspect what a prior considers typical of
a class or to score a mode; it is *not* a way to draw creative samples: beam search output is
low-entropy and repetitive (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"), so
use ``Prior.sample`` (with temperature / top-k / top-p) for generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .decoding import evaluating

if TYPE_CHECKING:
    from .base import Prior


class BeamSearchOutput(NamedTuple):
    """tokens: int64 [n, *shape] in [0, vocab_size), the best grid per query; log_probs: float32 [n], its
    natural-log likelihood under the prior (the sum of per-position log-probabilities)."""

    tokens: Tensor
    log_probs: Tensor


@torch.no_grad()
def beam_search(prior: Prior, beam_size: int = 4, labels: Tensor | int | None = None, use_cache: bool = True,
                progress: bool = False) -> BeamSearchOutput:
    """Left-to-right beam search over the raster order (or the net's ``decode_order``: the delay pattern, a
    random-order MADE), keeping the ``beam_size`` most likely prefixes.

    labels: None (unconditional prior: one query, n = 1), an int (n = 1) or int64 [n] in [0, num_classes).
    With beam_size >= vocab_size ** (L - 1) every prefix is kept, so the result is the exact argmax; smaller
    beams give a lower bound on it. Works with any architecture through ``Prior.decoder``: with ``use_cache``
    a net that ``supports_cache`` decodes incrementally, its cache following the survivors
    (``PriorNet.reorder_cache``); the others recompute the prefix each step. Returns
    ``BeamSearchOutput(tokens [n, *shape], log_probs [n])``.
    """
    if int(beam_size) != beam_size or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size}")
    K, V, L = int(beam_size), prior.vocab_size, prior.config.seq_len
    device = prior.device
    n = 1 if labels is None or isinstance(labels, int) or torch.as_tensor(labels).dim() == 0 else len(labels)
    lab = prior.check_labels(labels, n, device)  # raises for labels to an unconditional prior and vice versa
    lab = lab.repeat_interleave(K) if lab is not None else None  # [n * K]: beam b of query q is row q * K + b

    scores = torch.full((n, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start, so the first step does not pick K copies of one token
    base = torch.arange(n, device=device)[:, None] * K

    def choose(pos: int, logits: Tensor) -> Tensor:
        nonlocal scores
        lp = torch.log_softmax(logits.float(), -1).view(n, K, V)
        cand = (scores[:, :, None] + lp).view(n, K * V)
        scores, idx = cand.topk(K, dim=-1)  # [n, K], sorted best first
        dec.reorder((base + idx // V).view(-1))  # each survivor continues its parent beam
        return (idx % V).view(-1)

    with evaluating(prior):
        dec = prior.decoder(n * K, lab, use_cache=use_cache)
        x = dec.run(choose, progress, "beam search")
    tokens = x.view(n, K, L)[:, 0].reshape(n, *prior.shape)
    return BeamSearchOutput(tokens, scores[:, 0])
