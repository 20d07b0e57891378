"""`PriorConfig`: one JSON-round-tripping dataclass for every autoregressive prior."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from vqgen_io import JsonConfig

from .heads import OUTPUTS

FORMAT_VERSION = 1
ARCHS = ("transformer", "sparse_transformer", "wavenet", "pixelcnn", "made", "lstm", "histogram", "ngram")
MIXTURE_ARCHS = ("transformer", "sparse_transformer", "pixelcnn")  # archs with output="logistic_mixture"


@dataclass
class PriorConfig(JsonConfig):
    """A prior over integer grids of ``shape`` with values in ``[0, vocab_size)``, read in raster order.

    Defaults give a working (small) model for any grid, down to a 2x3 grid with a 3-token vocabulary.
    """

    class_name: ClassVar[str] = "Prior"

    arch: str = "transformer"  # one of ARCHS
    vocab_size: int = 512  # tokens are in [0, vocab_size)
    shape: tuple[int, ...] = (8, 8)  # token grid: (h, w) for images, (t,) for audio
    num_classes: int = 0  # 0 = unconditional; else p(grid | label) with labels in [0, num_classes)
    label_dropout: float = 0.1  # classifier-free guidance: P(label -> null label) while training (conditional only)
    # --- transformer / sparse_transformer ---
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    # --- sparse_transformer (Child et al. 2019) ---
    attention: str = "strided"  # "strided" | "fixed"
    stride: int | None = None  # the paper's l; derived: the row width for 2-D grids, ~sqrt(L) for 1-D
    summary: int = 1  # the paper's c ("fixed" only): last c positions of each block are summaries
    # --- wavenet (van den Oord et al. 2016) ---
    residual_channels: int = 64
    skip_channels: int = 64
    dilation_cycle: int = 10  # layers per cycle: dilations 1, 2, ..., 2**(cycle-1)
    n_cycles: int = 1  # receptive field = n_cycles * (2**dilation_cycle - 1) + 2
    # --- pixelcnn (gated, van den Oord et al. 2016) ---
    pixelcnn_layers: int = 6
    pixelcnn_channels: int = 64
    # --- made (Germain et al. 2015) ---
    made_hidden: tuple[int, ...] = (256, 256)
    made_order: str = "raster"  # "raster" | "random" (a fixed permutation drawn from made_seed) | "agnostic"
    made_seed: int = 0
    made_ensemble: int = 1  # agnostic: log_prob = log mean of p over the first K orderings (sampling: the first)
    made_connectivity_agnostic: bool = False  # agnostic: hidden degrees drawn at random with each ordering too
    made_num_masks: int = 0  # agnostic training: 0 = a fresh ordering every update; N = cycle among N fixed ones
    # --- output head (prior/heads.py) ---
    output: str = "softmax"  # "softmax" | "logistic_mixture" (PixelCNN++; ordered vocabularies: raw pixels, mu-law)
    logistic_mixtures: int = 5  # logistic_mixture: K components per position
    # --- lstm ---
    lstm_hidden: int = 128
    lstm_layers: int = 2
    # --- histogram ---
    laplace_alpha: float = 1.0  # add-alpha (Laplace) smoothing of the per-position count tables
    # --- ngram (count-based, local parents; see prior/ngram.py) ---
    ngram_order: int = 3  # parents: the k nearest causal neighbours (the k previous tokens for 1-D or "raster")
    ngram_template: str = "jbig"  # 2-D grids: "jbig" (causal neighbourhood, nearest first, <= 14) | "raster"
    ngram_smoothing: str = "kneser_ney"  # "kneser_ney" | "witten_bell" (back-off) | "add_alpha" (top context only)
    ngram_alpha: float = 0.5  # add_alpha: pseudo-count per token
    ngram_discount: float | None = None  # kneser_ney: absolute discount in (0, 1]; None = n1 / (n1 + 2 n2) per level
    ngram_position: bool = False  # the position itself as the last (most specific) parent
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        self.shape = tuple(int(s) for s in self.shape)
        self.made_hidden = tuple(int(s) for s in self.made_hidden)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {self.shape}")
        if len(self.shape) > 2:
            raise ValueError(f"grids of 1 or 2 axes are supported, got shape {self.shape}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.attention not in ("strided", "fixed"):
            raise ValueError(f"attention must be 'strided' or 'fixed', got {self.attention!r}")
        if self.stride is None:
            self.stride = self.shape[-1] if len(self.shape) == 2 else max(1, math.isqrt(self.seq_len))
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.attention == "fixed" and not 1 <= self.summary <= self.stride:
            raise ValueError(f"summary must be in [1, stride={self.stride}], got {self.summary}")
        if self.made_order not in ("raster", "random", "agnostic"):
            raise ValueError(f"made_order must be 'raster', 'random' or 'agnostic', got {self.made_order!r}")
        if self.made_ensemble < 1 or self.made_num_masks < 0 or (
                self.made_num_masks and self.made_ensemble > self.made_num_masks):
            raise ValueError(f"made_ensemble must be in [1, made_num_masks or inf), got {self.made_ensemble} "
                             f"(made_num_masks={self.made_num_masks})")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "logistic_mixture" and (self.arch not in MIXTURE_ARCHS or self.logistic_mixtures < 1):
            raise ValueError(f"output='logistic_mixture' needs arch in {MIXTURE_ARCHS} and logistic_mixtures >= 1, got "
                             f"arch={self.arch!r}, logistic_mixtures={self.logistic_mixtures}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"prior saved with format_version {self.format_version} > {FORMAT_VERSION}: upgrade vqgen")

    @property
    def seq_len(self) -> int:
        """Number of positions L = prod(shape)."""
        return math.prod(self.shape)
