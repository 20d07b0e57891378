"""Autoencoder families: the encoder / decoder around a quantizer, with their losses. One file per family, each
registering itself in ``tokenizers_vq.registry.AUTOENCODERS`` with its config section and its modality."""
