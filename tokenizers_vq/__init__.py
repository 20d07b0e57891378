"""vqgen tokenizers: discrete autoencoders for images and audio (VQ-VAE, FSQ, Gumbel-softmax dVAE)."""

from .codec import Codec
from .config import TokenizerConfig
from .mulaw import mu_law_decode, mu_law_encode
from .quantizers import QuantizerOutput, build_quantizer
from .raw import RawCodec, dequantize_raw, quantize_raw
from .registry import AUTOENCODERS, QUANTIZERS
from .tokenizer import Tokenizer, build_tokenizer, load_codec, load_tokenizer
from .types import TokenizerOutput

__all__ = [
    "Codec", "RawCodec", "load_codec", "quantize_raw", "dequantize_raw", "TokenizerConfig", "Tokenizer", "TokenizerOutput", "QuantizerOutput", "build_tokenizer", "build_quantizer",
    "load_tokenizer", "mu_law_encode", "mu_law_decode", "QUANTIZERS", "AUTOENCODERS",
]
