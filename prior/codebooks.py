"""Codebook patterns for residual-quantizer token grids (t, q): how q parallel codebooks become one sequence.

MusicGen (Copet et al. 2023, section 2.2) compares interleaving patterns. Two are offered here:

* ``"flatten"``: raster order over the whole grid (time-major, codebook-minor): t * q positions, one
  token per step; any arch works, since it is just the ordinary raster order over the grid.
* ``"delay"``: codebook k is shifted right by k steps, so step s holds (x[s, 0], x[s-1, 1], ..., x[s-q+1, q-1])
  with a pad where s - k is outside [0, t): t + q - 1 steps, all q codebooks of a step predicted in parallel
  given the earlier steps. p(x) = prod_s prod_k p(x[s-k, k] | steps < s) is still an exact normalised
  autoregressive factorisation, in the order of ``delay_order`` (by step, then codebook).

These are pure functions on tensors; ``prior.transformer.DelayTransformerNet`` uses them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def delay_pattern(tokens: Tensor, pad: int) -> Tensor:
    """tokens [B, t, q] (any dtype) -> delayed [B, t + q - 1, q] with out[:, s, k] = tokens[:, s - k, k] where
    0 <= s - k < t, else ``pad`` (the empty marker, e.g. vocab_size for int64 tokens in [0, vocab_size))."""
    if tokens.dim() != 3:
        raise ValueError(f"delay_pattern expects tokens [B, t, q], got shape {tuple(tokens.shape)}")
    B, t, q = tokens.shape
    out = tokens.new_full((B, t + q - 1, q), pad)
    for k in range(q):  # q is small (<= 32): one strided copy per codebook
        out[:, k: k + t, k] = tokens[:, :, k]
    return out


def undelay(delayed: Tensor, t: int | None = None) -> Tensor:
    """Inverse of ``delay_pattern``: delayed [B, S, q, *rest] -> [B, t, q, *rest] with out[:, i, k] =
    delayed[:, i + k, k]; t = S - q + 1 by default. Works on tokens and on per-step outputs alike (logits
    [B, S, q, V] -> [B, t, q, V]); pad positions are dropped."""
    if delayed.dim() < 3:
        raise ValueError(f"undelay expects [B, S, q, ...], got shape {tuple(delayed.shape)}")
    S, q = delayed.shape[1], delayed.shape[2]
    t = S - q + 1 if t is None else t
    if t < 1 or t + q - 1 != S:
        raise ValueError(f"undelay: {S} steps of {q} codebooks is not t + q - 1 steps for t = {t}")
    return torch.stack([delayed[:, k: k + t, k] for k in range(q)], 2)


def delay_order(t: int, q: int) -> Tensor:
    """The delay factorisation's order over the flat (time-major) grid: int64 [t * q], the positions i * q + k
    sorted by step s = i + k, then codebook k (every position's conditioning steps come before it)."""
    i, k = torch.meshgrid(torch.arange(t), torch.arange(q), indexing="ij")
    key = ((i + k) * q + k).reshape(-1)  # unique per position: step-major, codebook-minor
    return torch.argsort(key)


def step_sources(t: int, q: int) -> Tensor:
    """int64 [t + q - 1, q]: the flat grid position (i * q + k) codebook k reads at step s, or -1 for a pad."""
    s = torch.arange(t + q - 1)[:, None]
    k = torch.arange(q)[None]
    i = s - k
    return torch.where((i >= 0) & (i < t), i * q + k, -1)
