"""vqgen priors: autoregressive models over integer grids (image tokens, audio tokens, pixels, mu-law samples)."""

from .base import Prior, build_prior, load_prior
from .config import ARCHS, PriorConfig
from .decoding import Decoder
from .net import PriorNet
from .sampling import logits_to_probs, sample_from_probs

__all__ = ["ARCHS", "Decoder", "Prior", "PriorConfig", "PriorNet", "build_prior", "load_prior",
           "logits_to_probs", "sample_from_probs"]
