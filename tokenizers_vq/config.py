"""`TokenizerConfig`: the fields every tokenizer shares, plus the sections of its quantizer and autoencoder family.

A quantizer is one file in ``tokenizers_vq/quantizers/`` and an autoencoder family one file in
``tokenizers_vq/autoencoders/``; each declares its config dataclass and registers under its name
(``tokenizers_vq.registry``). Saved as ``{"quantizer": "fsq", "quantizer_config": {...}, "autoencoder": "vqvae",
"autoencoder_config": {...}, ...}``; format-1 files (one flat dataclass) still load (``tokenizers_vq/legacy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from vqgen_io.components import ComponentConfig, Registry, SectionedConfig

from .registry import AUTOENCODERS, QUANTIZERS

FORMAT_VERSION = 2  # 2: quantizer and autoencoder fields in their own sections; 1: one flat dataclass
MODALITIES = ("image", "audio")
DATA = {"flag": False}  # field metadata: set from the data (or the file), not by a flag of the model group
# The prior's embedding and output layers scale with the vocabulary, and FSQ materialises its implicit codebook
# (vocab x len(levels) floats) on construction: fsq_levels=[15] * 10 asked for 4.6 TB and died inside the library.
MAX_VOCAB_SIZE = 2**20
# The one definition of each data default; the data layer, the CLI, RawCodec and the demo all read these.
DEFAULT_IMAGE_SIZE = 32  # square side in pixels
DEFAULT_CHANNELS = 1  # grayscale
DEFAULT_SAMPLE_RATE = 16000  # Hz
DEFAULT_CLIP_SAMPLES = 16000  # 1 s at 16 kHz
MU_LAW_CHANNELS = 256  # 8-bit mu-law, as in WaveNet / the VQ-VAE paper
# (quantizer, its settings) a family gets when no quantizer is named; a family may declare its own
DEFAULT_QUANTIZER: tuple[str, dict[str, Any]] = ("fsq", {})


@dataclass(init=False)
class TokenizerConfig(SectionedConfig):
    """Everything needed to rebuild a tokenizer; every field has a working default.

    Keywords: the shared fields below, the sections as ``quantizer_config`` / ``autoencoder_config`` (dicts or
    config instances), and any section field by name (``TokenizerConfig(quantizer="fsq", fsq_levels=[8, 8])``;
    fields of quantizers or families not chosen are ignored). ``config.<field>`` reads the sections too
    (``config.codebook_size``, ``config.downsample``). ``autoencoder`` left ``None`` is the modality's default
    family (audio: ``spectral``, or ``mulaw`` when ``audio_head`` names a mu-law head); ``modality`` left ``None``
    is the family's; ``quantizer`` left ``None`` is the family's (``default_quantizer``: fsq; the spectral codec
    rvq with the shipped tokenizer's settings, which apply unless given).
    """

    class_name: ClassVar[str] = "Tokenizer"
    SECTIONS: ClassVar[dict[str, tuple[str, Registry]]] = {
        "quantizer_config": ("quantizer", QUANTIZERS), "autoencoder_config": ("autoencoder", AUTOENCODERS)}
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION

    modality: str | None = None  # image | audio (default: the autoencoder family's, else image)
    quantizer: str | None = None  # the bottleneck: vq | fsq | gumbel | rvq | rfsq (residual: one codebook per stage) | any registered quantizer (default: the family's: fsq; the spectral codec rvq with 5 codebooks of 512 codes)
    autoencoder: str | None = None  # the autoencoder family: vqvae | resnet (images) | mulaw | spectral (audio) (default: images vqvae; audio spectral, or mulaw with a mu-law --audio-head)
    # The input sizes come from the data options (--channels, --image-size, --sample-rate, --clip-seconds)
    channels: int = field(default=DEFAULT_CHANNELS, metadata=DATA)  # images: 1 (grayscale) or 3 (RGB)
    image_size: int = field(default=DEFAULT_IMAGE_SIZE, metadata=DATA)  # images: square side in pixels; the data layer resizes / crops to it
    sample_rate: int = field(default=DEFAULT_SAMPLE_RATE, metadata=DATA)  # audio: Hz; inputs at other rates are resampled by the data layer
    clip_samples: int = field(default=DEFAULT_CLIP_SAMPLES, metadata=DATA)  # audio: training clip length in samples (1 s at 16 kHz)
    latent_dim: int = 64  # channels of the encoder output fed to the quantizer (vq codebook_dim; fsq projects it)
    format_version: int = field(default=FORMAT_VERSION, metadata=DATA)  # the config.json layout (1: flat, 2: sections)
    quantizer_config: ComponentConfig | None = None  # the quantizer's own settings
    autoencoder_config: ComponentConfig | None = None  # the autoencoder family's own settings

    def _derive_selectors(self, given: dict[str, Any]) -> None:
        from .modality import get_modality  # (its modules read this module's defaults)

        if self.autoencoder is None:  # the modality's default family (audio: a mu-law audio_head picks mulaw)
            self.autoencoder = get_modality(self.modality or "image").autoencoder_for(given)
        family_cls = AUTOENCODERS.get(self.autoencoder)
        if self.quantizer is None:  # the family's bottleneck, with its settings where none were given
            self.quantizer, settings = getattr(family_cls, "default_quantizer", DEFAULT_QUANTIZER)
            for name, value in settings.items():
                given.setdefault(name, value)
        family = family_cls.modality
        self.modality = str(get_modality(self.modality or family))  # a ValueError naming the modalities
        if family != self.modality:
            raise ValueError(f"autoencoder {self.autoencoder!r} is for {family}, but modality is {self.modality!r}")

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS.names()}, got {self.quantizer!r}")
        from .modality import get_modality

        get_modality(self.modality).check_config(self)  # images: channels; audio: sample_rate
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 1 <= self.format_version <= FORMAT_VERSION:
            raise ValueError(
                f"this tokenizer was saved with format_version {self.format_version}, newer than this vqgen "
                f"understands ({FORMAT_VERSION}): upgrade vqgen"
            )

    def _check_sections(self) -> None:
        if self.vocab_size > MAX_VOCAB_SIZE:
            levels = getattr(self.quantizer_config, "fsq_levels", None)
            what = f"fsq_levels {levels} give" if levels is not None else "codebook_size is"
            raise ValueError(
                f"{what} {self.vocab_size:,} tokens, more than vqgen supports ({MAX_VOCAB_SIZE:,}): the prior's "
                "embedding and output layers grow with the vocabulary; use fewer or smaller levels / codes"
            )

    @property
    def vocab_size(self) -> int:
        """Distinct tokens per codebook (the quantizer's: prod(fsq_levels), codebook_size, ...)."""
        return self.quantizer_config.vocab_size

    @property
    def residual(self) -> bool:
        """True for residual quantizers (rvq, rfsq), whose tokens carry a trailing codebook axis."""
        return self.quantizer_config.residual

    @property
    def num_codebooks(self) -> int:
        """Codebooks per token position: ``num_quantizers`` for rvq / rfsq, 1 otherwise."""
        return self.quantizer_config.num_codebooks


from .legacy import TOKENIZER_V1  # noqa: E402  (the format-1 reader needs the registries above)

TokenizerConfig.LEGACY = TOKENIZER_V1
