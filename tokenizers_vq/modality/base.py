"""The ``Modality`` base class and the registry of modalities by name.

A modality is what kind of signal a codec turns into tokens: its layout and value range, the sizes that fix
one input, how a file becomes a tensor and back, what a preview looks like, which reconstruction metrics apply,
how raw values become a token grid, and how its model card and ONNX graphs describe it. Everything that used to
be an ``if modality == "image"`` branch across the package lives in one subclass per modality (``image.py``,
``audio.py``); a new modality is one more subclass, registered with ``register_modality``, plus its data
readers.

A ``Modality`` stands in for its name: ``str(m)`` is the name, ``m == "image"`` compares names, and it hashes
as its name (so ``{"image": ...}[m]`` works). JSON records keep the plain name (``str(m)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..mulaw import check_range


class Modality:
    """One kind of input. Subclasses set the class attributes and implement the methods that raise
    ``NotImplementedError`` here; instances are singletons, looked up with ``get_modality(name)``."""

    name: ClassVar[str] = ""
    timed: ClassVar[bool] = False  # inputs run along time at a sample rate: frame rate, bitrate, crops
    input_ndim: ClassVar[int] = 0  # axes of one input: (C, H, W) -> 3, (T,) -> 1
    grid_ndim: ClassVar[int] = 0  # token-grid axes of one input before a codebook axis: (h, w) -> 2, (t,) -> 1
    value_range: ClassVar[tuple[float, float]] = (0.0, 1.0)  # what encode takes and decode returns
    range_hint: ClassVar[str] = ""  # the fix named when an input is out of range
    batch_layout: ClassVar[str] = ""  # the batch encode takes, in words: "[B, C, H, W]", "a waveform [B, T]"
    noun: ClassVar[str] = ""  # one input, with its article: "an image", "a waveform"
    file_suffix: ClassVar[str] = ""  # what ``write`` writes: ".png", ".wav"
    size_fields: ClassVar[tuple[str, ...]] = ()  # TokenizerConfig / DataSpec fields that fix one input's shape
    default_sizes: ClassVar[Mapping[str, int]] = {}  # those fields' defaults (tokenizers_vq.config)
    raw_levels: ClassVar[tuple[int, ...]] = ()  # the quantizations RawCodec offers
    eval_batch_size: ClassVar[int] = 128  # a batch that evaluates quickly without much memory on a CPU
    downsample_axes: ClassVar[str] = ""  # model card: where the downsampling factor applies ("per axis")
    trace_kwargs: ClassVar[Mapping[str, Any]] = {}  # extra arguments of the model's encode/decode when traced

    # ------------------------------------------------------------------ it stands in for its name
    default_autoencoder: ClassVar[str] = ""  # the autoencoder family a tokenizer gets when none is named

    def autoencoder_for(self, given: Mapping[str, Any]) -> str:
        """The family a ``TokenizerConfig`` chooses when none is named (``given``: its other keywords)."""
        return self.default_autoencoder

    def check_config(self, config: Any) -> None:
        """``ValueError`` when a ``TokenizerConfig``'s size fields cannot describe this modality's inputs."""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"get_modality({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Modality):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)  # equal to the name's hash, as __eq__ requires

    def __reduce__(self) -> tuple[Callable[[str], Modality], tuple[str]]:
        return get_modality, (self.name,)  # pickles and copies are the registered singleton

    # ------------------------------------------------------------------ shapes and sizes
    def input_shape(self, sizes: Any = None) -> tuple[int, ...]:
        """One input's shape from its size fields (``size_fields``), read as attributes (a ``TokenizerConfig``, a
        ``DataSpec``) or mapping keys; None: ``default_sizes``. Images (C, H, W), audio (T,)."""
        raise NotImplementedError

    def sizes(self, input_shape: Sequence[int], sample_rate: int | None = None) -> dict[str, int]:
        """The size fields one input of ``input_shape`` (at ``sample_rate``, timed modalities) fixes; the inverse
        of ``input_shape``."""
        raise NotImplementedError

    def _size(self, sizes: Any, key: str) -> int:
        if sizes is None:
            return int(self.default_sizes[key])
        return int(sizes[key] if isinstance(sizes, Mapping) else getattr(sizes, key))

    # ------------------------------------------------------------------ input checks
    def check_input(self, x: Tensor, input_shape: Sequence[int], *, who: str = "tokenizer",
                    downsample: int | None = None, values: bool = True) -> None:
        """Raise ``ValueError`` unless ``x`` is a batch in this modality's layout that a codec made for inputs of
        ``input_shape`` takes: the layout, what the codec fixes (image channels), sizes divisible by ``downsample``
        and, with ``values``, finite values in ``value_range`` (one host sync). ``who`` names the codec in the
        messages ("tokenizer", "raw codec")."""
        self._check_layout(x, input_shape, who, downsample)
        if values:
            check_range(x, *self.value_range, f"{self.name} {who} input", self.range_hint)

    def _check_layout(self, x: Tensor, input_shape: Sequence[int], who: str, downsample: int | None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ raw values as tokens (RawCodec)
    def check_raw(self, levels: int, input_shape: tuple[int, ...], sample_rate: int | None) -> int | None:
        """Raise ``ValueError`` unless a raw codec of ``levels`` for inputs of ``input_shape`` exists; returns the
        sample rate it keeps (None for modalities without time)."""
        raise NotImplementedError

    def raw_token_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The raw token grid of one input of ``input_shape``."""
        raise NotImplementedError

    def quantize_raw(self, x: Tensor, levels: int) -> Tensor:
        """One input or a batch of them (float, in ``value_range``) -> int64 raw grids (``quantize_raw``)."""
        raise NotImplementedError

    def dequantize_raw(self, grid: Tensor, levels: int, input_shape: tuple[int, ...]) -> Tensor:
        """int grids [B, *grid] -> float32 [B, *input_shape] in ``value_range``; inverts ``quantize_raw``."""
        raise NotImplementedError

    def raw_input_shape(self, tokens: Tensor, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one input that a batch of raw tokens int [B, *grid] decodes to; ``ValueError`` naming
        the layout a raw codec made for ``input_shape`` expects when the tokens do not fit it."""
        raise NotImplementedError

    def raw_description(self, levels: int, input_shape: tuple[int, ...], sample_rate: int | None) -> str:
        """What a raw codec's tokens are, in words (its README)."""
        raise NotImplementedError

    def raw_png_images(self, codec: Any, grids: Tensor) -> list[Any] | None:
        """PIL images of raw grids as the inputs they are (the PNG baseline of compression), or None where a raw
        grid has no natural image form."""
        return None

    # ------------------------------------------------------------------ metrics
    def recon_metrics(self, recon: Tensor, x: Tensor, sample_rate: int | None = None) -> dict[str, float]:
        """Reconstruction metrics of a batch (``recon`` and ``x`` in the input layout), each a mean over it."""
        raise NotImplementedError

    def split_metrics(self, reconstructions: Callable[[], tuple[Tensor, Tensor]],
                      sample_rate: int | None = None) -> dict[str, float]:
        """Metrics over a whole split beyond the per-batch ones; ``reconstructions()`` gives (est, ref), the
        split's reconstructions and originals, and is only called by modalities that have such metrics."""
        return {}

    def rate(self, codec: Any, n_quantizers: int) -> tuple[str, float]:
        """(name, value) of a codec's fixed-length code size with its first ``n_quantizers`` codebooks."""
        raise NotImplementedError

    # ------------------------------------------------------------------ files and previews
    def read(self, source: Any, input_shape: Sequence[int], sample_rate: int | None = None) -> Tensor:
        """One file (a path or its encoded bytes) as a tensor in this modality's single-input layout, fitting a
        codec for ``input_shape`` (at ``sample_rate``) without loss of information beyond its format."""
        raise NotImplementedError

    def write(self, x: Tensor, path: str | Path, sample_rate: int | None = None) -> None:
        """One input (the single-input layout) to a file in ``file_suffix``'s format."""
        raise NotImplementedError

    def pack(self, items: Sequence[Tensor], input_shape: tuple[int, ...], sample_rate: int | None = None
             ) -> tuple[Tensor, dict[str, Any]]:
        """Files as ``read`` returns them -> a batch of codec inputs float32 [N, *input_shape] and the JSON-able
        record ``unpack`` needs to turn the decoded batch back into one tensor per file."""
        raise NotImplementedError

    def unpack(self, x: Tensor, record: Mapping[str, Any]) -> list[Tensor]:
        """The decoded batch [N, *input_shape] -> one tensor per file that ``pack`` took."""
        raise NotImplementedError

    def duration(self, record: Mapping[str, Any]) -> float | None:
        """Seconds of signal in a ``pack`` record (timed modalities), else None."""
        return None

    def preview_path(self, folder: str | Path, stem: str) -> Path:
        """Where ``write_reconstructions`` puts a preview named ``stem`` in ``folder``: one file, or a folder."""
        raise NotImplementedError

    def write_reconstructions(self, x: Tensor, recon: Tensor, out: str | Path, sample_rate: int | None = None
                              ) -> Path:
        """Originals ``x`` and reconstructions ``recon`` [N, *input] side by side under ``out``; returns what
        was written (a file, or a folder of files)."""
        raise NotImplementedError

    def write_preview(self, x: Tensor, folder: str | Path, sample_rate: int | None = None,
                      labels: Sequence[str] | None = None) -> Path:
        """One picture of a batch of inputs [N, *input] in ``folder`` (``labels``: one per input, where shown);
        returns its path."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model card
    def card_io(self, config: Any, token_shape: tuple[int, ...], input_shape: tuple[int, ...],
                vocab_size: int) -> dict[str, str]:
        """The model card's descriptions of the input (``x``: the ONNX encoder's, ``x_torch``: PyTorch's), the
        tokens and the reconstruction (``recon``)."""
        raise NotImplementedError

    def card_example(self, config: Any, input_shape: tuple[int, ...], numpy: bool) -> list[str]:
        """Python lines that build an example input ``x`` (numpy or torch) in the documented layout."""
        raise NotImplementedError

    def card_rows(self, config: Any) -> list[str]:
        """Extra rows of the model card's table (units such as the sample rate)."""
        return []

    card_torch_note: ClassVar[str] = "."  # ends the PyTorch usage paragraph
    card_onnx_notes: ClassVar[tuple[str, ...]] = ()  # paragraphs of the ONNX usage section
    card_onnx_limits: ClassVar[str] = "."  # ends the sentence on what the graphs do not check

    # ------------------------------------------------------------------ ONNX export
    def example_input(self, input_shape: tuple[int, ...], downsample: int, generator: torch.Generator) -> Tensor:
        """A deterministic batch of 2 inputs in range that an exporter traces."""
        raise NotImplementedError

    def dynamic_axes(self, tokens: Tensor, downsample: int) -> tuple[dict[int, Any], dict[int, Any]]:
        """``torch.export`` dynamic axes of (the encoder input, the tokens): the batch, and whatever may vary."""
        raise NotImplementedError


_REGISTRY: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Make ``modality`` known by its name (``get_modality``); ``ValueError`` for a name already taken."""
    if not modality.name or modality.name in _REGISTRY:
        raise ValueError(f"a modality needs a name of its own; {modality.name!r} is empty or taken")
    _REGISTRY[modality.name] = modality
    return modality


def modality_names() -> tuple[str, ...]:
    """The registered modalities' names, in registration order: ("image", "audio")."""
    return tuple(_REGISTRY)


def get_modality(name: str | Modality) -> Modality:
    """The registered modality called ``name`` (a ``Modality`` is returned as it is); ``ValueError`` naming the
    known ones otherwise."""
    if isinstance(name, Modality):
        return name
    found = _REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"modality must be one of {modality_names()}, got {name!r}")
    return found


def modality_for_ndim(ndim: int) -> Modality:
    """The first registered modality whose single inputs (or batches of them) have ``ndim`` axes: 3 or 4 -> image,
    1 or 2 -> audio. ``ValueError`` when none has."""
    for m in _REGISTRY.values():
        if ndim in (m.input_ndim, m.input_ndim + 1):
            return m
    layouts = "; ".join(f"{m.name}: {m.input_ndim} or {m.input_ndim + 1} axes" for m in _REGISTRY.values())
    raise ValueError(f"no modality takes inputs with {ndim} axes ({layouts})")
