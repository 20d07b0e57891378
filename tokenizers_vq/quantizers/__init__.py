"""Quantizers: continuous latents in, integer codes and quantized latents out. One file per quantizer, each
registering itself in ``tokenizers_vq.registry.QUANTIZERS`` with its config section; see ``base.py`` for the
interface."""

from .base import Quantizer, QuantizerConfig, QuantizerOutput, build_quantizer

__all__ = ["Quantizer", "QuantizerConfig", "QuantizerOutput", "build_quantizer"]
