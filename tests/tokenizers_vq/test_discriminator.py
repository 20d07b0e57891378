"""The PatchGAN discriminator and its losses: shapes, hinge values, VQGAN's adaptive weight, feature matching."""

import pytest
import torch

from tokenizers_vq.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_weight,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
)


@pytest.mark.parametrize(("size", "layers", "patches"), [(64, 3, 6), (32, 2, 6), (256, 3, 30)])
def test_patch_logits_and_features(size, layers, patches):
    d = PatchDiscriminator(3, width=8, layers=layers)
    logits, feats = d(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 1, patches, patches)
    assert len(feats) == layers + 1 and all(f.shape[0] == 2 for f in feats)


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, .5] -> .25 ; relu(1 + fake) = [0, 1] -> .5 ; halved: .375
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.375)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    assert hinge_d_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)) == 0  # a confident, right critic


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_layer():
    w = torch.nn.Parameter(torch.randn(4, 4))
    x = torch.randn(3, 4)
    y = x @ w
    rec, adv = y.pow(2).mean(), 10 * y.sum()
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, w, retain_graph=True)[0]
    got = adaptive_weight(rec, adv, w)
    assert got.item() == pytest.approx((g_rec.norm() / (g_adv.norm() + 1e-4)).item(), rel=1e-6)
    assert not got.requires_grad and w.grad is None  # measured, not accumulated into the step's gradients


def test_feature_matching_pulls_only_the_fake_features():
    real = [torch.randn(2, 3, requires_grad=True)]
    fake = [torch.randn(2, 3, requires_grad=True)]
    loss = feature_matching_loss(real, fake)
    loss.backward()
    assert real[0].grad is None and fake[0].grad.abs().sum() > 0
    assert feature_matching_loss(fake, [f.detach().clone() for f in fake]) == 0


def test_config_checks():
    assert not DiscriminatorConfig().enabled and DiscriminatorConfig(disc_weight=0.5).enabled
    with pytest.raises(ValueError, match=">= 0"):
        DiscriminatorConfig(disc_weight=-1)
