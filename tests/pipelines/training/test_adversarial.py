"""Adversarial tokenizer training: each loss term moves its own network, the delayed start, exact resume with the
discriminator, and a saved folder that holds the tokenizer alone."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipelines.training.adversarial import AdversarialTokenizer
from pipelines.training.checkpoints import latest_checkpoint
from pipelines.training.config import TrainConfig
from pipelines.training.loop import train
from pipelines.training.tasks import TokenizerTask
from tokenizers_vq import Tokenizer, TokenizerConfig, build_tokenizer
from tokenizers_vq.discriminator import DiscriminatorConfig


def _tok(**kw) -> Tokenizer:
    torch.manual_seed(0)
    return build_tokenizer(TokenizerConfig(modality="image", autoencoder="resnet", channels=3, image_size=16,
                                           hidden_channels=4, latent_dim=4, quantizer="fsq", fsq_levels=[5, 5],
                                           **kw))


def _data(n: int = 16) -> torch.utils.data.TensorDataset:
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    return torch.utils.data.TensorDataset(x, torch.zeros(n, dtype=torch.long))


ADV = DiscriminatorConfig(disc_weight=0.5, disc_start=2, disc_channels=4, disc_layers=2, feature_match_weight=0.5)


def _grads(model: AdversarialTokenizer, x: torch.Tensor, step: int) -> tuple[dict, dict, dict]:
    """(tokenizer grads, discriminator grads, metrics) of the whole loss at ``step``."""
    model.set_step(step)
    model.zero_grad(set_to_none=True)
    loss, m = model(x)
    loss.backward()
    grads = lambda mod: {n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None}  # noqa: E731
    return grads(model.tokenizer), grads(model.discriminator), m


def test_each_term_trains_only_its_own_network():
    """Before disc_start the loss is the tokenizer's own plus the discriminator's hinge loss on the detached
    reconstruction: the tokenizer's gradients are those of its own loss. From disc_start the adversarial and
    feature-matching terms change the tokenizer's gradients and leave the discriminator's as they were."""
    model = AdversarialTokenizer(_tok(), ADV)
    x = _data(4).tensors[0]
    tok0, disc0, m0 = _grads(model, x, step=0)
    assert "g_loss" not in m0 and sum(g.abs().sum() for g in disc0.values()) > 0
    model.zero_grad(set_to_none=True)
    model.tokenizer(x).loss.backward()
    own = {n: p.grad for n, p in model.tokenizer.named_parameters() if p.grad is not None}
    for n, g in own.items():
        torch.testing.assert_close(tok0[n], g, msg=n)  # the hinge loss did not reach the tokenizer
    tok2, disc2, m2 = _grads(model, x, step=2)
    assert {"g_loss", "adv_weight", "feature_match"} <= set(m2)
    assert 0 < m2["adv_weight"].item() <= 0.5 * 1e4
    for n, g in disc0.items():
        torch.testing.assert_close(disc2[n], g, msg=n)  # the generator terms did not reach the discriminator
    changed = max((tok2[n] - tok0[n]).abs().max().item() for n in tok0)
    assert changed > 1e-4  # ... and did reach the tokenizer


def test_before_disc_start_no_generator_terms_and_zero_weight_means_no_discriminator():
    model = AdversarialTokenizer(_tok(), ADV)
    _, m = model(_data(2).tensors[0])
    assert "g_loss" not in m and "d_loss" in m
    task = TokenizerTask(_tok(), "toy", adversarial=DiscriminatorConfig())
    assert task.model is task.tokenizer  # disabled: plain tokenizer training


def test_families_without_support_are_refused():
    tok = build_tokenizer(TokenizerConfig(modality="image", autoencoder="vqvae", image_size=16))
    with pytest.raises(ValueError, match="needs an autoencoder family that supports it"):
        TokenizerTask(tok, "toy", adversarial=ADV)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=6, batch_size=4, lr=5e-3, eval_every=6, save_every=2, progress=False, seed=3)
    return TrainConfig(**(base | kw))


def test_resume_with_the_discriminator_equals_an_uninterrupted_run(tmp_path):
    data = _data()
    full = train(TokenizerTask(_tok(), "toy", adversarial=ADV), data, data, _cfg(tmp_path / "full"))
    assert full.status == "finished"
    cut = train(TokenizerTask(_tok(), "toy", adversarial=ADV), data, data, _cfg(tmp_path / "cut", stop_after_step=3))
    assert cut.status == "preempted"
    ckpt = latest_checkpoint(tmp_path / "cut")
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("discriminator.") for k in keys) and "step" in keys  # checkpointed with the tokenizer
    torch.manual_seed(99)  # resume must not depend on the caller's RNG
    resumed = train(TokenizerTask(_tok(), "toy", adversarial=ADV), data, data, _cfg(tmp_path / "cut", resume=True))
    assert resumed.step == 6
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and not any("discriminator" in k for k in a)  # the folder: the tokenizer alone
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # and the folder loads as a plain tokenizer
    Tokenizer.from_pretrained(tmp_path / "full")
