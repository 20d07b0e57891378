"""The tokenizer's component registries: quantizers (``tokenizers_vq/quantizers/``, one file each) and autoencoder
families (``tokenizers_vq/autoencoders/``, one file each). A component registers itself with its config section
when its module is imported; every module of those folders is imported on first use."""

from vqgen_io.components import Registry

QUANTIZERS = Registry("quantizer", "tokenizers_vq.quantizers")
AUTOENCODERS = Registry("autoencoder family", "tokenizers_vq.autoencoders")
