"""`TokenizerConfig`: one dataclass for image and audio tokenizers, JSON round-tripping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from vqgen_io import JsonConfig

FORMAT_VERSION = 1
MODALITIES = ("image", "audio")
QUANTIZERS = ("vq", "fsq", "gumbel", "rvq", "rfsq")
RESIDUAL_QUANTIZERS = ("rvq", "rfsq")  # tokens carry a trailing codebook axis of size num_quantizers
RESIDUAL_ONLY_FIELDS = ("num_quantizers", "quantizer_dropout")  # read by rvq / rfsq only
ISTFT_ONLY_FIELDS = ("stft_loss_weight", "istft_dim", "istft_layers", "istft_upsample")
# "istft": spectral frame-rate codec with an inverse-STFT decoder (audio_spectral.py); the other two predict
# every mu-law sample at the sample rate (audio.py).
AUDIO_HEADS = ("istft", "logistic", "categorical")
MU_LAW_HEADS = ("logistic", "categorical")
# The prior's embedding and output layers scale with the vocabulary, and FSQ materialises its implicit codebook
# (vocab x len(levels) floats) on construction: fsq_levels=[15] * 10 asked for 4.6 TB and died inside the library.
MAX_VOCAB_SIZE = 2**20
# The one definition of each data default; the data layer, the CLI, RawCodec and the demo all read these.
DEFAULT_IMAGE_SIZE = 32  # square side in pixels
DEFAULT_CHANNELS = 1  # grayscale
DEFAULT_SAMPLE_RATE = 16000  # Hz
DEFAULT_CLIP_SAMPLES = 16000  # 1 s at 16 kHz
MU_LAW_CHANNELS = 256  # 8-bit mu-law, as in WaveNet / the VQ-VAE paper


@dataclass
class TokenizerConfig(JsonConfig):
    """Everything needed to rebuild a tokenizer; every field has a working default.

    Fields marked *derived* are filled in by ``__post_init__`` when left as ``None``.
    """

    class_name: ClassVar[str] = "Tokenizer"

    modality: str = "image"  # "image" | "audio"
    quantizer: str = "fsq"  # "vq" | "fsq" | "gumbel" | "rvq" | "rfsq" (residual: one codebook per stage)
    # --- image ---
    channels: int = DEFAULT_CHANNELS  # 1 (grayscale) or 3 (RGB)
    image_size: int = DEFAULT_IMAGE_SIZE  # square side in pixels; the data layer resizes/crops to it
    # --- audio ---
    sample_rate: int = DEFAULT_SAMPLE_RATE  # Hz; inputs at other rates are resampled by the data layer
    clip_samples: int = DEFAULT_CLIP_SAMPLES  # training clip length in samples (1 s at 16 kHz)
    mu_law_channels: int = MU_LAW_CHANNELS  # mu-law classes the audio decoder predicts per sample
    audio_head: str = "logistic"  # "logistic" (discretised logistic mixture) | "categorical" (Q free logits)
    logistic_mixtures: int = 1  # logistic head: mixture components per sample
    mel_loss_weight: float = 1.0  # multi-resolution log-mel loss on the decoded waveform
    waveform_loss_weight: float | None = None  # *derived*: 30 mu-law heads, 1 istft; L1 decoded vs input waveform
    stft_loss_weight: float = 1.0  # istft: multi-resolution log-STFT-magnitude L1
    istft_dim: int = 256  # istft: width of the frame-rate ConvNeXt stacks
    istft_layers: int = 6  # istft: ConvNeXt blocks in the encoder and in the decoder
    istft_upsample: int = 4  # istft: STFT frames per token (hop 320 -> STFT hop 80, window 320 at 16 kHz)
    chunk_tokens: int = 256  # audio encode/decode works on chunks of this many tokens (bounded memory)
    chunk_overlap_tokens: int = 24  # context tokens either side of a chunk, discarded after
    # --- shared ---
    downsample: int | None = None  # *derived*: 4 for images, 64 for audio; factor per axis
    hidden_channels: int | None = None  # *derived*: 32 for images, 16 for audio; width of the first conv stage
    num_res_blocks: int | None = None  # *derived*: 2 for images, 1 for audio; residual blocks per resolution
    latent_res_blocks: int | None = None  # audio, *derived*: 3; dilated blocks (1, 3, 9, ...) at token rate
    latent_dim: int = 64  # channels of the encoder output fed to vq (codebook_dim); fsq projects it
    codebook_size: int = 512  # vq, rvq (per codebook) and gumbel: number of codes
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq, rfsq (per codebook): 1,000 codes
    num_quantizers: int = 4  # rvq, rfsq: codebooks q, applied one after another to the remaining residual
    quantizer_dropout: bool = True  # rvq, rfsq: each training batch uses a random 1..q codebooks (SoundStream §3.3)
    commitment_weight: float = 0.25  # vq, rvq: beta in van den Oord et al. 2017, eq. 3
    ema_decay: float = 0.99  # vq, rvq: EMA codebook decay
    kmeans_init: bool = True  # vq, rvq: initialise codes with k-means on the first batch
    dead_code_threshold: float = 2.0  # vq, rvq: replace codes whose EMA usage falls below this
    gumbel_temperature_start: float = 1.0  # gumbel: tau at step 0 (DALL-E anneals 1 -> 1/16)
    gumbel_temperature_end: float = 1.0 / 16  # gumbel: tau after `gumbel_anneal_steps`
    gumbel_anneal_steps: int = 5000  # gumbel: steps of exponential annealing
    gumbel_kl_weight: float | None = None  # gumbel, *derived*: 1e-2 images, 0.1 audio; weight of KL(q || uniform)
    gumbel_straight_through: bool = True  # gumbel: one-hot forward, soft gradient (so training sees what inference does)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.downsample is None:
            if self.modality == "image":
                self.downsample = 4
            else:  # istft: one STFT frame per token at 50 Hz; mu-law heads: strided convs, a power of two
                self.downsample = self.sample_rate // 50 if self.audio_head == "istft" else 64
        if self.waveform_loss_weight is None:
            self.waveform_loss_weight = 1.0 if self.audio_head == "istft" else 30.0
        # Audio's outer stages run at the sample rate, ~60x a 32x32 image's cost: narrower, shallower defaults.
        if self.hidden_channels is None:
            self.hidden_channels = 32 if self.modality == "image" else 16
        if self.num_res_blocks is None:
            self.num_res_blocks = 2 if self.modality == "image" else 1
        if self.latent_res_blocks is None:
            self.latent_res_blocks = 3
        if self.gumbel_kl_weight is None:
            # Near-silent audio frames collapse gumbel to a few codes at 1e-2; 0.1 suits tones and speech best together
            # (measurements: docs/DESIGN_NOTES.md; `--gumbel-kl-weight 0.3` for speech).
            self.gumbel_kl_weight = 1e-2 if self.modality == "image" else 0.1
        ds = int(self.downsample)
        spectral = self.modality == "audio" and self.audio_head == "istft"  # an STFT hop can be any size
        if ds < 1 or (ds & (ds - 1) and not spectral):
            raise ValueError(f"downsample must be a power of two >= 1, got {ds}")
        self.downsample = ds
        if self.modality == "image":
            if self.channels not in (1, 3):
                raise ValueError(f"channels must be 1 or 3 for images, got {self.channels}")
            if self.image_size % ds:
                raise ValueError(f"image_size {self.image_size} is not divisible by downsample {ds}")
        else:
            if self.sample_rate <= 0:
                raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
            if self.audio_head not in AUDIO_HEADS:
                raise ValueError(f"audio_head must be one of {AUDIO_HEADS}, got {self.audio_head!r}")
            if self.logistic_mixtures < 1:
                raise ValueError(f"logistic_mixtures must be >= 1, got {self.logistic_mixtures}")
            if self.audio_head == "istft" and (self.istft_upsample < 1 or ds % self.istft_upsample):
                raise ValueError(f"downsample {ds} is not a multiple of istft_upsample {self.istft_upsample}")
            if self.clip_samples % ds:
                raise ValueError(f"clip_samples {self.clip_samples} is not divisible by downsample {ds}")
        self.fsq_levels = [int(v) for v in self.fsq_levels]
        if any(v < 2 for v in self.fsq_levels):
            raise ValueError(f"every FSQ level must be >= 2, got {self.fsq_levels}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if not isinstance(self.num_quantizers, int) or isinstance(self.num_quantizers, bool) or self.num_quantizers < 1:
            raise ValueError(f"num_quantizers must be an integer >= 1 (codebooks of rvq / rfsq), got {self.num_quantizers!r}")
        self.quantizer_dropout = bool(self.quantizer_dropout)
        if self.vocab_size > MAX_VOCAB_SIZE:
            what = f"fsq_levels {self.fsq_levels} give" if self.quantizer in ("fsq", "rfsq") else "codebook_size is"
            raise ValueError(
                f"{what} {self.vocab_size:,} tokens, more than vqgen supports ({MAX_VOCAB_SIZE:,}): the prior's "
                "embedding and output layers grow with the vocabulary; use fewer or smaller levels / codes"
            )
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this tokenizer was saved with format_version {self.format_version}, newer than this vqgen "
                f"understands ({FORMAT_VERSION}): upgrade vqgen"
            )

    @property
    def vocab_size(self) -> int:
        """Distinct tokens per codebook: prod(fsq_levels) for fsq / rfsq, codebook_size otherwise."""
        return math.prod(self.fsq_levels) if self.quantizer in ("fsq", "rfsq") else self.codebook_size

    @property
    def residual(self) -> bool:
        """True for residual quantizers (rvq, rfsq), whose tokens carry a trailing codebook axis."""
        return self.quantizer in RESIDUAL_QUANTIZERS

    def identity_dict(self) -> dict:
        """``to_dict()`` without the residual fields when they do not apply (vq, fsq, gumbel) and without the
        spectral codec's fields for the other heads and images, so that tokenizers saved before those fields
        existed keep their fingerprint."""
        d = self.to_dict()
        if not self.residual:
            for name in RESIDUAL_ONLY_FIELDS:
                d.pop(name, None)
        if not (self.modality == "audio" and self.audio_head == "istft"):
            for name in ISTFT_ONLY_FIELDS:  # likewise for the spectral codec's fields
                d.pop(name, None)
        return d

    @property
    def num_codebooks(self) -> int:
        """Codebooks per token position: ``num_quantizers`` for rvq / rfsq, 1 otherwise."""
        return self.num_quantizers if self.residual else 1
