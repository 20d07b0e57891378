"""Fingerprints cover the shared fields and the chosen components' sections (format 2), and configs read from
format-1 files keep the fingerprint format 1 computed: prior folders and compressed files record fingerprints, and a
changed one makes them refuse a model that is the same. (tests/test_old_folders.py checks real format-1 folders.)"""

import dataclasses
import hashlib
import json

import pytest
import torch

from prior import PriorConfig, build_prior
from prior.legacy import LATER_FIELDS, V1_FIELDS
from tokenizers_vq import TokenizerConfig, build_tokenizer
from tokenizers_vq.legacy import ISTFT_ONLY_FIELDS, RESIDUAL_ONLY_FIELDS
from tokenizers_vq.legacy import V1_FIELDS as TOK_V1_FIELDS
from vqgen_io import fingerprint_module


def _hash(model, config_dict):
    """fingerprint_module's recipe over a given config dict."""
    h = hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=list).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def test_format2_identity_is_the_shared_fields_and_the_chosen_section():
    p = build_prior(arch="made", vocab_size=5, shape=(2, 3), made_hidden=(8,), n_layer=4)  # not made's, at default
    ident = p.config.identity_dict()
    assert ident["format_version"] == 2 and ident["arch"] == "made"
    assert set(ident["net"]) == {f.name for f in dataclasses.fields(type(p.config.net))}
    assert "n_layer" not in json.dumps(ident)
    assert fingerprint_module(p, p.config) == _hash(p, ident)
    other = p.config.replace(made_seed=1)
    assert fingerprint_module(p, other) != fingerprint_module(p, p.config)  # a section field counts


def test_format1_prior_dict_keeps_its_fingerprint_and_its_format():
    old = {**V1_FIELDS, "arch": "transformer", "vocab_size": 5, "shape": [2, 3], "d_model": 16, "n_layer": 1,
           "stride": 3, "made_hidden": [256, 256], "pixelcnn_layers": 9}  # a field of another arch, as format 1 kept
    config = PriorConfig.from_dict({"class_name": "Prior", **old})
    assert config.format_version == 1 and config.n_layer == 1 and config.arch == "transformer"
    p = build_prior(config)
    old_identity = {k: v for k, v in old.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    assert fingerprint_module(p, p.config) == _hash(p, old_identity)
    assert json.loads(p.config.to_json())["pixelcnn_layers"] == 9  # written back in format 1, nothing lost
    assert PriorConfig.from_json(p.config.to_json()).identity_dict() == p.config.identity_dict()
    assert p.config.replace(num_classes=3).format_version == 1  # still expressible in format 1
    new = PriorConfig(**{k: v for k, v in old.items() if k != "format_version"})
    assert new.format_version == 2 and fingerprint_module(p, new) != fingerprint_module(p, p.config)


@pytest.mark.parametrize("kw", [dict(modality="image", hidden_channels=4),
                                dict(modality="audio", audio_head="logistic", hidden_channels=4, clip_samples=1024),
                                dict(modality="audio", audio_head="istft", istft_dim=16, istft_layers=1,
                                     quantizer="rvq", num_quantizers=2, clip_samples=3200)])
def test_format1_tokenizer_dict_keeps_its_fingerprint(kw):
    t = build_tokenizer(**kw)
    # the dict format 1 wrote for this model: every field, derived ones resolved
    d = {**TOK_V1_FIELDS, **{k: v for k, v in t.config.flat_dict().items() if k in TOK_V1_FIELDS or k == "autoencoder"},
         "format_version": 1}  # (settings added since format 1, e.g. vq's cosine, are not in its files)
    d.pop("autoencoder")
    d["audio_head"] = getattr(t.config, "audio_head", "logistic")
    d["gumbel_kl_weight"] = 0.01 if kw["modality"] == "image" else 0.1
    d["latent_res_blocks"] = 3  # format 1 derived (and saved) these whatever the head
    image = kw["modality"] == "image"
    d["hidden_channels"] = d["hidden_channels"] or (32 if image else 16)
    d["num_res_blocks"] = d["num_res_blocks"] or (2 if image else 1)
    d["waveform_loss_weight"] = 1.0 if kw.get("audio_head") == "istft" else 30.0
    old = TokenizerConfig.from_dict(d)
    assert old.format_version == 1 and old.autoencoder == t.config.autoencoder
    identity = dict(d)
    if t.config.quantizer not in ("rvq", "rfsq"):
        for name in RESIDUAL_ONLY_FIELDS:
            identity.pop(name)
    if not (kw["modality"] == "audio" and kw.get("audio_head") == "istft"):
        for name in ISTFT_ONLY_FIELDS:
            identity.pop(name)
    assert fingerprint_module(t, old) == _hash(t, identity)
    assert fingerprint_module(t, old) != fingerprint_module(t, t.config)  # format 2 hashes its own layout


def test_unknown_and_misplaced_fields_are_clear_errors():
    with pytest.raises(ValueError, match="unknown PriorConfig fields"):
        PriorConfig(arch="lstm", lstm_widht=3)
    with pytest.raises(ValueError, match="has no settings"):
        PriorConfig(arch="lstm", net={"n_layer": 2})
    assert PriorConfig(arch="lstm", n_layer=2).to_dict() == PriorConfig(arch="lstm").to_dict()  # format 1's leniency
    with pytest.raises(ValueError, match="output='logistic_mixture' is a setting of prior architecture pixelcnn"):
        PriorConfig(arch="lstm", output="logistic_mixture")  # a capability lstm lacks
    assert PriorConfig(arch="lstm").replace(arch="transformer", n_layer=2).n_layer == 2
    with pytest.raises(AttributeError, match="setting of prior architecture .*made"):
        _ = PriorConfig(arch="lstm").made_hidden
    with pytest.raises(ValueError, match="format_version 3"):
        PriorConfig.from_dict({"arch": "lstm", "format_version": 3})
    with pytest.raises(ValueError, match="is for image"):
        TokenizerConfig(modality="audio", autoencoder="vqvae")
