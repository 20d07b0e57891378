"""Fields added to the configs later must not change the fingerprint of models saved before them: prior folders
and compressed files record fingerprints, and a changed one makes them refuse a model that is the same."""

import hashlib
import json

import torch

from prior import PriorConfig, build_prior
from prior.config import LATER_FIELDS
from tokenizers_vq import build_tokenizer
from tokenizers_vq.config import ISTFT_ONLY_FIELDS, RESIDUAL_ONLY_FIELDS
from vqgen_io import fingerprint_module


def _old_style(model, config_dict):
    """fingerprint_module's recipe over a config dict as an older vqgen wrote it (without the later fields)."""
    h = hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=list).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def test_prior_fingerprint_ignores_later_fields_at_defaults():
    p = build_prior(PriorConfig(arch="transformer", vocab_size=5, shape=(2, 3), d_model=16, n_layer=1))
    old = {k: v for k, v in p.config.to_dict().items() if k not in LATER_FIELDS}
    assert fingerprint_module(p, p.config) == _old_style(p, old)
    changed = PriorConfig.from_dict({**p.config.to_dict(), "logistic_mixtures": 3})
    assert fingerprint_module(p, changed) != fingerprint_module(p, p.config)  # a non-default value counts


def test_tokenizer_fingerprint_ignores_fields_of_other_quantizers_and_heads():
    for kw in ({"modality": "audio", "hidden_channels": 4}, {"modality": "image", "hidden_channels": 4}):
        t = build_tokenizer(**kw)
        old = {k: v for k, v in t.config.to_dict().items() if k not in RESIDUAL_ONLY_FIELDS + ISTFT_ONLY_FIELDS}
        assert t.fingerprint == _old_style(t, old)
    s = build_tokenizer(modality="audio", audio_head="istft", istft_dim=16, istft_layers=1)
    assert "istft_dim" in s.config.identity_dict()
