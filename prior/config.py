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
CODEBOOK_PATTERNS = ("flatten", "delay")
DELAY_ARCHS = ("transformer",)  # archs with a codebook_pattern="delay" net (prior.transformer.DelayTransformerNet)


# Fields added after priors were first saved, with the default that reproduces the earlier behaviour.
LATER_FIELDS = {"num_codebooks": 1, "codebook_pattern": "flatten", "made_ensemble": 1,
                "made_connectivity_agnostic": False, "made_num_masks": 0, "output": "softmax", "logistic_mixtures": 5}


@dataclass
class PriorConfig(JsonConfig):
    """A prior over integer grids of ``shape`` with values in ``[0, vocab_size)``, read in raster order.

    Defaults give a working (small) model for any grid, down to a 2x3 grid with a 3-token vocabulary.

    Residual-quantizer tokens carry a trailing codebook axis: ``shape`` is the whole grid, (t, q) for audio
    or (h, w, q) for images, with ``num_codebooks`` = q = ``shape[-1]``. ``codebook_pattern="flatten"``
    reads it in raster order (time-major, codebook-minor; every arch); ``"delay"`` is MusicGen's delay
    pattern (Copet et al. 2023, section 2.2; ``prior.codebooks``): all q codebooks of a step in parallel.
    """

    class_name: ClassVar[str] = "Prior"

    arch: str = "transformer"  # one of ARCHS
    vocab_size: int = 512  # tokens are in [0, vocab_size)
    shape: tuple[int, ...] = (8, 8)  # token grid: (h, w) for images, (t,) for audio; (t, q) / (h, w, q) with codebooks
    num_classes: int = 0  # 0 = unconditional; else p(grid | label) with labels in [0, num_classes)
    num_codebooks: int = 1  # q: > 1 = the last axis of shape is the codebook axis (residual quantizers)
    codebook_pattern: str = "flatten"  # "flatten" (raster over the whole grid) | "delay" (MusicGen; DELAY_ARCHS)
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
        if len(self.shape) > 3:
            raise ValueError(f"grids of 1 to 3 axes are supported, got shape {self.shape}")
        if self.num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1, got {self.num_codebooks}")
        if (self.num_codebooks > 1 or len(self.shape) == 3) and (
                len(self.shape) < 2 or self.shape[-1] != self.num_codebooks):
            raise ValueError(
                f"with num_codebooks={self.num_codebooks} the last axis of shape is the codebook axis and must equal "
                f"it, (t, {self.num_codebooks}) or (h, w, {self.num_codebooks}); got shape {self.shape} (3-axis grids "
                "are (h, w, q) token grids of residual quantizers)")
        if self.codebook_pattern not in CODEBOOK_PATTERNS:
            raise ValueError(f"codebook_pattern must be one of {CODEBOOK_PATTERNS}, got {self.codebook_pattern!r}")
        if self.codebook_pattern == "delay" and self.arch not in DELAY_ARCHS:
            raise ValueError(f"codebook_pattern='delay' is implemented for arch in {DELAY_ARCHS}, not "
                             f"{self.arch!r}; use codebook_pattern='flatten' (every arch) or arch='transformer'")
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
            self.stride = self.plane[1] if len(self.shape) >= 2 else max(1, math.isqrt(self.seq_len))
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

    def identity_dict(self) -> dict:
        """``to_dict()`` without the fields added after format 1 shipped while they are at their defaults, so that
        priors saved before them keep their fingerprint (compressed files and prior folders record it)."""
        d = self.to_dict()
        for name, default in LATER_FIELDS.items():
            if d.get(name) == default:
                d.pop(name, None)
        return d

    @property
    def seq_len(self) -> int:
        """Number of positions L = prod(shape)."""
        return math.prod(self.shape)

    @property
    def plane(self) -> tuple[int, int]:
        """The grid as a 2-D picture (rows, row length) for archs that need one: (h, w * q) for (h, w, q)
        (a cell's codebooks side by side, so raster order is unchanged), shape for 2 axes, (1, L) for 1 axis."""
        if len(self.shape) == 1:
            return 1, self.shape[0]
        return self.shape[0], math.prod(self.shape[1:])

    @property
    def num_steps(self) -> int:
        """Time steps T of the codebook grid: seq_len / num_codebooks (the delay pattern has T + q - 1 steps)."""
        return self.seq_len // self.num_codebooks
