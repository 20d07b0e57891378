"""Codebook statistics over a dataset and the fixed-length bitrates of a codec, per codebook for residual
quantizers (rvq, rfsq), whose tokens carry a trailing codebook axis."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .metrics import code_histogram, code_perplexity, codebook_usage


class CodebookCounter:
    """Histograms of the codes seen, one per codebook.

    ``add`` takes int64 codes in [0, vocab_size): [B, *grid] for a single codebook, [B, *grid, q] for q codebooks
    (q = ``num_codebooks``; fewer trailing codebooks count towards the first ones only).
    """

    def __init__(self, vocab_size: int, num_codebooks: int = 1):
        self.vocab_size = int(vocab_size)
        self.num_codebooks = int(num_codebooks)
        self.counts = torch.zeros(self.num_codebooks, self.vocab_size, dtype=torch.long)

    def add(self, codes: Tensor) -> None:
        """Count a batch of codes (see the class docstring for shapes)."""
        if self.num_codebooks == 1:
            self.counts[0] += code_histogram(codes, self.vocab_size)
            return
        for i in range(min(codes.shape[-1], self.num_codebooks)):
            self.counts[i] += code_histogram(codes[..., i], self.vocab_size)

    def metrics(self) -> dict[str, float]:
        """``codebook_usage`` (fraction of codes used, in [0, 1]) and ``perplexity`` (exp entropy, in [1, vocab]):
        for several codebooks the worst codebook's, so a usage target holds for every codebook, plus each
        codebook's as ``codebook_usage_q{i}`` / ``perplexity_q{i}``."""
        usage = [codebook_usage(c) for c in self.counts]
        perplexity = [code_perplexity(c) for c in self.counts]
        res = {"codebook_usage": min(usage), "perplexity": min(perplexity)}
        if self.num_codebooks > 1:
            for i, (u, p) in enumerate(zip(usage, perplexity)):
                res[f"codebook_usage_q{i}"], res[f"perplexity_q{i}"] = u, p
        return res


def rate_metrics(codec: Any) -> dict[str, float]:
    """Fixed-length code sizes of ``codec`` (a ``Codec``): images ``bits_per_image`` (bits per training-size input),
    audio ``kbps`` (kbit/s), with every codebook; for q > 1 codebooks also ``bits_per_image_n{n}`` / ``kbps_n{n}``
    when decoding with the first n < q (quantizer dropout's lower bitrates)."""
    res: dict[str, float] = {}
    q = codec.num_codebooks
    for n in range(1, q + 1):
        suffix = "" if n == q else f"_n{n}"
        name, value = codec.modality.rate(codec, n)  # bits_per_image, or kbps for audio
        res[name + suffix] = value
    return res
