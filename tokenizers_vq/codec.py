"""The ``Codec`` contract: the one thing the pipelines talk to.

A codec turns one input (an image float32 [C, H, W] in [0, 1], or a waveform float32 [T] in [-1, 1]) into a
grid of integer tokens and back. ``Tokenizer`` (a learned discrete autoencoder) and ``RawCodec`` (the raw
binarised / 8-bit pixels or mu-law samples themselves) both implement it, so tokenizing, training a prior,
sampling, scoring and compressing run through the same code whatever made the tokens.

Token grids may carry a trailing codebook axis (residual quantizers: audio ``(t, q)``, images ``(h, w, q)``);
nothing here assumes one integer per position: ``token_shape`` is the whole grid, codebook axis included.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .modality import Modality, modality_names

MODALITIES = modality_names()  # ("image", "audio"): the registered modalities' names


class Codec:
    """Interface shared by ``Tokenizer`` and ``RawCodec``. Subclasses provide the abstract members."""

    kind: str = "codec"  # "tokenizer" | "raw": which family made the tokens (shown in scores and headers)

    # ------------------------------------------------------------------ what subclasses provide
    @property
    def modality(self) -> Modality:  # pragma: no cover - interface
        """What the codec tokenizes (``tokenizers_vq.modality``): it owns everything that differs between images
        and audio; ``str(codec.modality)`` is ``"image"`` or ``"audio"`` and it compares equal to that name."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:  # pragma: no cover - interface
        """Tokens are integers in ``[0, vocab_size)`` (per codebook)."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:  # pragma: no cover - interface
        """The shape of one input this codec was made for: (C, H, W) images, (T,) audio clips."""
        raise NotImplementedError

    @property
    def sample_rate(self) -> int | None:  # pragma: no cover - interface
        """Audio: samples per second of the waveform ``encode`` takes and ``decode`` returns; None for images."""
        raise NotImplementedError

    def token_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:  # pragma: no cover
        """The token grid of one input of ``input_shape`` (default: ``self.input_shape``), codebook axis included."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        """float32 [B, *input_shape] -> int64 [B, *token_shape] in [0, vocab_size)."""
        raise NotImplementedError

    def decode(self, tokens: Tensor) -> Tensor:  # pragma: no cover - interface
        """int64 [B, *token_shape] -> float32 [B, *input_shape] in the input's range."""
        raise NotImplementedError

    def codec_config(self) -> dict[str, Any]:  # pragma: no cover - interface
        """The JSON-able config that rebuilds this codec (with its weights, for a tokenizer)."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:  # pragma: no cover - interface
        """32 hex digits that change whenever the config or the weights change (stable across runs)."""
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # pragma: no cover
        """A folder ``load_tokenizer`` rebuilds the codec from."""
        raise NotImplementedError

    # ------------------------------------------------------------------ derived, shared
    @property
    def device(self) -> torch.device:
        """Where ``encode``/``decode`` want their inputs (a raw codec has no weights: the CPU)."""
        params = self.parameters() if isinstance(self, torch.nn.Module) else iter(())
        return next(params, torch.empty(0)).device

    def eval(self) -> Codec:
        """Inference mode (a no-op for codecs without layers; ``Tokenizer`` has ``nn.Module.eval``)."""
        return self

    @property
    def num_codebooks(self) -> int:
        """Codebooks per token position (the size of a trailing codebook axis; 1 when there is none)."""
        return 1

    @property
    def bits_per_token(self) -> float:
        """log2(vocab_size): the bits a fixed-length code spends on one token (one codebook entry)."""
        return math.log2(self.vocab_size)

    def dims_per_input(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Input dimensions one token grid stands for: C*H*W pixels x channels, or T samples (for bits/dim)."""
        return math.prod(input_shape or self.input_shape)

    @property
    def frame_rate(self) -> float | None:
        """Audio: token positions per second (sample_rate * positions / samples); None for images."""
        if not self.modality.timed:
            return None
        t = self.input_shape[0]
        return self.sample_rate * self.token_shape((t,))[0] / t

    def _codebooks_used(self, n_quantizers: int | None) -> int:
        q = self.num_codebooks
        if n_quantizers is None:
            return q
        if isinstance(n_quantizers, bool) or not isinstance(n_quantizers, int) or not 1 <= n_quantizers <= q:
            raise ValueError(f"n_quantizers must be an integer in [1, {q}] (this codec's codebooks), got {n_quantizers!r}")
        return n_quantizers

    @property
    def bitrate(self) -> float | None:
        """Audio: bits per second of a fixed-length code with every codebook (``bitrate_at(None)``); None for images."""
        return self.bitrate_at(None)

    def bitrate_at(self, n_quantizers: int | None = None) -> float | None:
        """Audio: bits per second of a fixed-length code using the first ``n_quantizers`` codebooks (None: all):
        frame rate x n x log2(vocab_size). None for images. ``ValueError`` unless 1 <= n <= num_codebooks."""
        n = self._codebooks_used(n_quantizers)
        fr = self.frame_rate
        return None if fr is None else fr * n * self.bits_per_token

    def bits_per_input(self, input_shape: tuple[int, ...] | None = None, n_quantizers: int | None = None) -> float:
        """Bits of a fixed-length code for one input of ``input_shape`` (default ``self.input_shape``) with the
        first ``n_quantizers`` codebooks (None: all): token positions x n x log2(vocab_size). Images: bits per
        image; audio: bits per clip. ``ValueError`` unless 1 <= n <= num_codebooks."""
        n = self._codebooks_used(n_quantizers)
        positions = math.prod(self.token_shape(input_shape)) // self.num_codebooks  # the codebook axis is not a position
        return positions * n * self.bits_per_token

    def record(self, path: str | Path | None = None) -> dict[str, Any]:
        """What a token or prior folder stores about the codec that made its tokens: class, fingerprint,
        config, vocabulary, shapes, codebooks per position (the trailing axis of residual tokens), and the folder it was loaded from (None when the config alone rebuilds it)."""
        return {
            "class_name": type(self).__name__, "kind": self.kind, "path": str(Path(path).resolve()) if path else None,
            "fingerprint": self.fingerprint, "modality": str(self.modality), "vocab_size": self.vocab_size,
            "input_shape": list(self.input_shape), "token_shape": list(self.token_shape()),
            "sample_rate": self.sample_rate, "num_codebooks": self.num_codebooks, "config": self.codec_config(),
        }
