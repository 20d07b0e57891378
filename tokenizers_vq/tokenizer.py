"""``Tokenizer``: one module and one interface for image and audio tokenizers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqgen_io import FolderMixin, fingerprint_module

from .codec import Codec
from .config import TokenizerConfig
from .modality import Modality, get_modality
from .registry import AUTOENCODERS
from .types import TokenizerOutput


def _build_backbone(config: TokenizerConfig) -> nn.Module:
    """The autoencoder family registered under ``config.autoencoder`` (``tokenizers_vq/autoencoders/<name>.py``)."""
    return AUTOENCODERS.get(config.autoencoder)(config)


class Tokenizer(nn.Module, FolderMixin, Codec, library_name="vqgen", tags=["vqgen", "tokenizer"]):
    """A discrete autoencoder. Images: float32 [B, C, H, W] in [0, 1] <-> int64 tokens [B, h, w].
    Audio: float32 [B, T] in [-1, 1] at ``config.sample_rate`` <-> int64 tokens [B, t].
    Residual quantizers (rvq, rfsq) add a trailing codebook axis: [B, h, w, q] / [B, t, q].

    Tokens are integers in ``[0, vocab_size)`` (per codebook). ``save_pretrained(dir)`` / ``load_tokenizer(dir)``
    round-trip exactly (same tokens, same reconstructions).
    """

    config_class = TokenizerConfig
    kind = "tokenizer"

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.model = _build_backbone(config)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def modality(self) -> Modality:
        """The ``Modality`` of ``config.modality`` (``str(tok.modality)`` is that name)."""
        return get_modality(self.config.modality)

    @property
    def num_codebooks(self) -> int:
        """Codebooks per token position: ``config.num_quantizers`` (q) for rvq / rfsq, 1 otherwise."""
        return self.config.num_codebooks

    def token_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Token grid for one input of ``input_shape`` ((C, H, W) or (H, W) for images, (T,) for audio;
        default: the training input, ``self.input_shape``): (h, w) / (t,), plus a trailing q for rvq / rfsq."""
        grid = tuple(self.model.token_shape(tuple(input_shape or self.input_shape)))
        return (*grid, self.num_codebooks) if self.config.residual else grid

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input the tokenizer was trained on: (C, H, W) images, (clip_samples,) audio."""
        return self.modality.input_shape(self.config)

    @property
    def sample_rate(self) -> int | None:
        return self.config.sample_rate if self.modality.timed else None

    def codec_config(self) -> dict[str, Any]:
        return {"class_name": "Tokenizer", **self.config.to_dict()}

    @property
    def fingerprint(self) -> str:
        """32 hex digits of the config (residual-only fields left out for other quantizers, so tokenizers saved
        before they existed keep theirs) and the weights."""
        return fingerprint_module(self, self.config)  # reads config.identity_dict()

    # ------------------------------------------------------------------ validation
    def _check_input(self, x: Tensor, values: bool = True) -> None:
        if not torch.is_floating_point(x):
            raise ValueError(f"Tokenizer input must be a float tensor, got {x.dtype}")
        # Layout, channels, sizes divisible by the downsampling, and (values) the range: the modality's checks.
        self.modality.check_input(x, self.input_shape, downsample=self.config.downsample, values=values)

    def check_tokens(self, tokens: Tensor) -> None:
        """Raise ``ValueError`` unless ``tokens`` is an integer tensor with values in [0, vocab_size)."""
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        expected_dims = 1 + len(self.token_shape())  # [B, *grid], codebook axis included
        if tokens.dim() != expected_dims:
            raise ValueError(f"{self.config.modality} tokens must have {expected_dims} dims [B, *grid], got {tuple(tokens.shape)}")
        q = self.num_codebooks
        if self.config.residual and not 1 <= tokens.shape[-1] <= q:
            raise ValueError(f"tokens carry {tokens.shape[-1]} codebooks (last axis of {tuple(tokens.shape)}) but this "
                             f"{self.config.quantizer} tokenizer was trained with {q}: pass 1 to {q}")
        if tokens.numel() and (tokens.min().item() < 0 or tokens.max().item() >= self.vocab_size):
            raise ValueError(
                f"tokens must lie in [0, {self.vocab_size}), got range [{tokens.min().item()}, {tokens.max().item()}]"
            )

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def encode(self, x: Tensor, n_quantizers: int | None = None) -> Tensor:
        """Image float32 [B, C, H, W] in [0, 1] -> int64 [B, h, w]; audio float32 [B, T] in [-1, 1] -> int64 [B, t];
        values in [0, vocab_size). rvq / rfsq: a trailing codebook axis of ``n_quantizers`` (1..q; None = all q),
        the first n codebooks of the full code (residual quantization is greedy, so a prefix); other quantizers
        accept None or 1 and have no such axis."""
        n = self._codebooks_used(n_quantizers)  # ValueError outside [1, q]
        self._check_input(x)
        codes = self.model.encode(x).long()
        return codes[..., :n].contiguous() if self.config.residual and n < self.num_codebooks else codes

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """int64 tokens [B, *grid] in [0, vocab_size) -> image float32 [B, C, h*d, w*d] in [0, 1] or audio float32
        [B, t*d] in [-1, 1]. rvq / rfsq: [B, *grid, q'] with 1 <= q' <= q; the residuals of the missing codebooks
        are taken as zero (a lower-bitrate reconstruction)."""
        self.check_tokens(tokens)
        return self.model.decode(tokens.long())

    # ------------------------------------------------------------------ streaming (causal audio codecs)
    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in ms of a causal (streaming) codec: frame + lookahead + synthesis window; ``inf``
        for a codec that needs whole clips (non-causal, or a family without streaming)."""
        return float(getattr(self.model, "latency_ms", math.inf))

    def _streaming_model(self) -> Any:
        if not hasattr(self.model, "stream_encoder") or not getattr(self.model, "causal", False):
            raise ValueError(
                f"this {self.config.autoencoder} tokenizer is not causal, so it cannot stream: its encoder and decoder "
                "look ahead, and encode / decode need whole clips. Train one with `vqgen train-tokenizer --modality "
                "audio --causal` (TokenizerConfig(modality='audio', causal=True)) to stream.")
        return self.model

    def stream_encoder(self, n_quantizers: int | None = None) -> Any:
        """A streaming encoder of a causal codec: ``enc(x)`` with float32 samples ``[T]`` in [-1, 1] at
        ``sample_rate`` (any T) returns the int64 tokens ``[t]`` (``[t, n]`` residual) completed so far; ``enc.flush()``
        the last, zero-padded token. Concatenated, they equal ``encode`` of the zero-padded input."""
        model = self._streaming_model()
        n = self._codebooks_used(n_quantizers) if n_quantizers is not None else None
        return model.stream_encoder(n)

    def stream_decoder(self) -> Any:
        """A streaming decoder of a causal codec: ``dec(tokens)`` with int64 ``[t]`` / ``[t, q']`` returns the float32
        samples ``[T']`` in [-1, 1] final so far; ``dec.flush()`` the rest. Concatenated, they equal ``decode``."""
        return self._streaming_model().stream_decoder(self.check_tokens)

    def forward(self, x: Tensor, check_values: bool = True) -> TokenizerOutput:
        """Reconstruction, training loss and metrics (a ``TokenizerOutput``). ``check_values=False`` skips the
        input's range check (a host sync): for data validated where it entered, as the trainer's is."""
        self._check_input(x, values=check_values)
        return self.model(x)

    def model_card(self, extra: dict[str, Any] | None = None) -> str:
        """README.md with the Hub's YAML header and runnable usage (``extra``: formats, dataset, steps, metrics)."""
        from .card import tokenizer_card

        extra = extra or {}
        return tokenizer_card(self.config, self.token_shape(), self.input_shape, self.vocab_size,
                              formats=extra.get("formats", ("safetensors",)), dataset=extra.get("dataset"),
                              steps=extra.get("steps"), metrics=extra.get("metrics"))


def build_tokenizer(config: TokenizerConfig | None = None, **overrides: Any) -> Tokenizer:
    """A freshly initialised ``Tokenizer`` for ``config`` (default ``TokenizerConfig()``), with field overrides."""
    if config is None:
        config = TokenizerConfig(**overrides)
    elif overrides:
        config = config.replace(**overrides)
    return Tokenizer(config)


def load_tokenizer(path: str | Path, map_location: str | torch.device = "cpu") -> Codec:
    """Rebuild a codec from a folder written by ``save_pretrained`` (never unpickles): a ``Tokenizer``, or a
    ``RawCodec`` when ``config.json`` says ``"class_name": "RawCodec"``."""
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        try:
            raw = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg} is not valid JSON ({e}); copy the codec folder again or re-export it") from None
        if isinstance(raw, dict) and raw.get("class_name") == "RawCodec":
            from .raw import RawCodec

            return RawCodec.from_config(raw)
    return Tokenizer.from_pretrained(path, map_location=map_location)


load_codec = load_tokenizer  # the same loader under the contract's name


def truncate_codebooks(tokenizer: Tokenizer, n: int) -> Tokenizer:
    """The same codec at its first ``n`` residual codebooks, as a smaller ``Tokenizer`` (``num_quantizers = n``).

    Residual quantization is greedy, so the first n codebooks' codes and their decoded latent do not depend on the
    later ones: the result encodes and decodes exactly as ``tokenizer`` with ``encode(x, n_quantizers=n)``. It has
    its own fingerprint (another codec: a prior over its tokens models q = n). ``n`` in [1, q]; rvq / rfsq only.
    """
    if not tokenizer.config.residual:
        raise ValueError(f"truncate_codebooks needs a residual tokenizer (rvq or rfsq), got {tokenizer.config.quantizer}")
    q = tokenizer.num_codebooks
    if not 1 <= n <= q:
        raise ValueError(f"n must be in [1, {q}] (the tokenizer's codebooks), got {n}")
    small = build_tokenizer(tokenizer.config, num_quantizers=n)
    state = tokenizer.state_dict()
    wanted = small.state_dict()
    missing = [k for k in wanted if k not in state or state[k].shape != wanted[k].shape]
    if missing:  # a library layout this function does not know: refuse rather than guess
        raise ValueError(f"cannot cut this tokenizer's codebooks: parameters {missing[:3]} do not line up")
    small.load_state_dict({k: state[k] for k in wanted})
    return small.eval()
