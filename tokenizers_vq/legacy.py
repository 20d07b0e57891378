"""Format 1 of ``TokenizerConfig`` (vqgen before component sections): one flat dataclass holding every quantizer's
and every audio head's fields. Tokenizers saved then are recorded by fingerprint in token folders, prior folders
and compressed files, so a config read from such a file keeps the fingerprint format 1 computed (and is written back
in format 1). Frozen: new fields never go here."""

from __future__ import annotations

from typing import Any

from vqgen_io.components import LegacyFormat

# Every format-1 field with its default as the last format-1 release declared it (None: derived, see _derive).
V1_FIELDS: dict[str, Any] = {
    "modality": "image", "quantizer": "fsq", "channels": 1, "image_size": 32, "sample_rate": 16000,
    "clip_samples": 16000, "mu_law_channels": 256, "audio_head": "logistic", "logistic_mixtures": 1,
    "mel_loss_weight": 1.0, "waveform_loss_weight": None, "stft_loss_weight": 1.0, "istft_dim": 256,
    "istft_layers": 6, "istft_upsample": 4, "chunk_tokens": 256, "chunk_overlap_tokens": 24, "downsample": None,
    "hidden_channels": None, "num_res_blocks": None, "latent_res_blocks": None, "latent_dim": 64,
    "codebook_size": 512, "fsq_levels": [8, 5, 5, 5], "num_quantizers": 4, "quantizer_dropout": True,
    "commitment_weight": 0.25, "ema_decay": 0.99, "kmeans_init": True, "dead_code_threshold": 2.0,
    "gumbel_temperature_start": 1.0, "gumbel_temperature_end": 1.0 / 16, "gumbel_anneal_steps": 5000,
    "gumbel_kl_weight": None, "gumbel_straight_through": True, "format_version": 1,
}
V1_QUANTIZERS = ("vq", "fsq", "gumbel", "rvq", "rfsq")
V1_AUTOENCODERS = ("vqvae", "mulaw", "spectral")
RESIDUAL_ONLY_FIELDS = ("num_quantizers", "quantizer_dropout")  # format 1 hashed them for rvq / rfsq only
ISTFT_ONLY_FIELDS = ("stft_loss_weight", "istft_dim", "istft_layers", "istft_upsample")  # and these for istft only


def _derive(flat: dict[str, Any]) -> dict[str, Any]:
    """Format 1's ``__post_init__``: the derived fields it filled in (and saved), and its normalisations."""
    d = dict(flat)
    image, istft = d["modality"] == "image", d["audio_head"] == "istft"
    if d["downsample"] is None:
        d["downsample"] = 4 if image else (d["sample_rate"] // 50 if istft else 64)
    if d["waveform_loss_weight"] is None:
        d["waveform_loss_weight"] = 1.0 if istft else 30.0
    for name, img, aud in (("hidden_channels", 32, 16), ("num_res_blocks", 2, 1), ("latent_res_blocks", 3, 3),
                           ("gumbel_kl_weight", 1e-2, 0.1)):
        if d[name] is None:
            d[name] = img if image else aud
    d["downsample"] = int(d["downsample"])
    d["fsq_levels"] = [int(v) for v in d["fsq_levels"]]
    d["quantizer_dropout"] = bool(d["quantizer_dropout"])
    return d


class TokenizerV1(LegacyFormat):
    fields = V1_FIELDS
    implied = ("autoencoder",)  # format 1 chose the family by modality and audio_head

    def upgrade(self, flat: dict[str, Any]) -> dict[str, Any]:
        return _derive(flat)

    def implied_values(self, source: dict[str, Any]) -> dict[str, Any]:
        # Format 1 had one image family; today's default for RGB images is another (resnet): name format 1's.
        if source["modality"] == "image":
            return {"autoencoder": "vqvae"}
        # and the audio family by its head, whatever today's audio default is
        return {"autoencoder": "spectral" if source.get("audio_head", V1_FIELDS["audio_head"]) == "istft" else "mulaw"}

    def representable(self, config: Any) -> bool:
        return config.quantizer in V1_QUANTIZERS and config.autoencoder in V1_AUTOENCODERS

    def identity(self, flat: dict[str, Any]) -> dict[str, Any]:
        d = _derive(flat)
        if d["quantizer"] not in ("rvq", "rfsq"):
            for name in RESIDUAL_ONLY_FIELDS:
                d.pop(name, None)
        if not (d["modality"] == "audio" and d["audio_head"] == "istft"):
            for name in ISTFT_ONLY_FIELDS:
                d.pop(name, None)
        return d


TOKENIZER_V1 = TokenizerV1()
