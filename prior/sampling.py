"""Small pure functions for decoding (gpt-fast ``generate.py`` style): ``Prior.sample`` is a few lines
around these and ``prior.decoding.Decoder``, so the hot path stays visible and compilable."""

from __future__ import annotations

import torch
from torch import Tensor


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, cfg_scale: float | None) -> None:
    """Raise ``ValueError`` for settings outside their ranges."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if cfg_scale is not None and not cfg_scale >= 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")


def logits_to_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> Tensor:
    """logits float [B, V] -> probabilities float32 [B, V] after temperature, top-k and top-p filtering.

    temperature 0 puts all mass on the argmax (greedy). top-p keeps the smallest set of most likely tokens
    whose mass reaches p (Holtzman et al. 2020), always at least one token.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    if temperature != 1.0:  # x / 1.0 == x exactly: skipping it changes no token, and saves one op per step
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches p
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample_from_probs(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """probs float [B, V] -> int64 [B], by inverse-CDF with one uniform draw per row.

    One draw per row whatever the distribution keeps the random stream aligned between cached and
    uncached decoding, so both give the same tokens for the same generator.
    """
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device if generator is None else generator.device)
    u = u.to(probs.device)
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[:, -1:].clamp_min(1e-30)
    idx = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return idx.clamp(max=probs.shape[-1] - 1)
