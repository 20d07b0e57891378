"""`PriorConfig`: the fields every prior shares plus the chosen architecture's own section.

Each architecture is one file in ``prior/`` that declares its config dataclass and registers its net under its name
in ``ARCHS`` (``@ARCHS.register("made", config=MADEConfig)``); saved as ``{"arch": "made", "net": {...}}``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

from vqgen_io.components import ComponentConfig, Registry, SectionedConfig

FORMAT_VERSION = 2  # 2: architecture fields in their own section ("net"); 1: one flat dataclass (prior/legacy.py)
ARCHS = Registry("prior architecture", "prior")  # every module of prior/ is imported to find them
CODEBOOK_PATTERNS = ("flatten", "delay")
DATA = {"flag": False}  # field metadata: set from the data (or the file), not by a command-line flag


@dataclass(init=False)
class PriorConfig(SectionedConfig):
    """A prior over integer grids of ``shape`` with values in ``[0, vocab_size)``, read in raster order.

    Defaults give a working (small) model for any grid, down to a 2x3 grid with a 3-token vocabulary. Keywords:
    the shared fields below, the architecture's section as ``net`` (a dict or its config), and the section's
    fields by name (``PriorConfig(arch="made", made_hidden=(64,))``; fields of other architectures are ignored).
    ``config.<field>`` reads the section too (``config.made_hidden``).

    Residual-quantizer tokens carry a trailing codebook axis: ``shape`` is the whole grid, (t, q) for audio
    or (h, w, q) for images, with ``num_codebooks`` = q = ``shape[-1]``. ``codebook_pattern="flatten"``
    reads it in raster order (time-major, codebook-minor; every arch); ``"delay"`` is MusicGen's delay
    pattern (Copet et al. 2023, section 2.2; ``prior.codebooks``): all q codebooks of a step in parallel.
    """

    class_name: ClassVar[str] = "Prior"
    SECTIONS: ClassVar[dict[str, tuple[str, Registry]]] = {"net": ("arch", ARCHS)}
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION

    arch: str = "transformer"  # the architecture: one of prior.ARCHS (transformer, sparse_transformer, wavenet, ...)
    # The grid fields come from the token folder a prior is trained on (metadata flag=False: no flag of their own)
    vocab_size: int = field(default=512, metadata=DATA)  # tokens are in [0, vocab_size)
    shape: tuple[int, ...] = field(default=(8, 8), metadata=DATA)  # token grid: (h, w) for images, (t,) for audio; (t, q) / (h, w, q) with codebooks
    num_classes: int = field(default=0, metadata=DATA)  # 0 = unconditional; else p(grid | label) with labels in [0, num_classes)
    num_codebooks: int = field(default=1, metadata=DATA)  # q: > 1 = the last axis of shape is the codebook axis (residual quantizers)
    codebook_pattern: str = "flatten"  # tokens with a codebook axis: flatten (raster over (t, q), any arch) | delay (MusicGen: all codebooks of a step at once; archs with a delay net)
    label_dropout: float = 0.1  # conditional priors: P(label -> null label) while training, for classifier-free guidance
    format_version: int = field(default=FORMAT_VERSION, metadata=DATA)  # the config.json layout (1: flat, 2: sections)
    net: ComponentConfig | None = None  # the architecture's own settings (its config dataclass)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
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
        if self.codebook_pattern == "delay" and ARCHS.get(self.arch).delay_net is None:
            delay = tuple(a for a in ARCHS if ARCHS.get(a).delay_net is not None)
            raise ValueError(f"codebook_pattern='delay' is implemented for arch in {delay}, not "
                             f"{self.arch!r}; use codebook_pattern='flatten' (every arch) or arch='transformer'")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 1 <= self.format_version <= FORMAT_VERSION:
            raise ValueError(f"prior saved with format_version {self.format_version} > {FORMAT_VERSION}: upgrade vqgen")

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


def supports(arch: str, field: str) -> bool:
    """Whether architecture ``arch``'s config has ``field`` (e.g. ``output``: it can use the logistic mixture)."""
    return field in {f.name for f in dataclasses.fields(ARCHS.config_class(arch))}


from .legacy import PRIOR_V1  # noqa: E402  (the format-1 reader needs ARCHS above)

PriorConfig.LEGACY = PRIOR_V1
