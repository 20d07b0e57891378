"""Discretised logistic mixture head (PixelCNN++, Salimans et al. 2017): normalisation, exactness against a
float64 transcription of Eq. 2, gradients, and the priors that use it."""

from __future__ import annotations

import itertools

import pytest
import torch

from prior import build_prior
from prior.heads import head_size, logistic_mixture_log_probs


def naive_probs(params: torch.Tensor, V: int) -> torch.Tensor:
    """Eq. 2 written out in float64: sum_k pi_k [sigma((x+h-mu)/s) - sigma((x-h-mu)/s)], edges to +-inf."""
    p = params.double()
    K = p.shape[-1] // 3
    pi = torch.softmax(p[..., :K], -1)
    mu, log_s = p[..., K:2 * K], p[..., 2 * K:].clamp(min=-7.0)
    x = torch.linspace(-1, 1, V, dtype=torch.float64)
    h = 1.0 / (V - 1)
    upper = torch.sigmoid((x + h - mu[..., None]) / log_s.exp()[..., None])
    lower = torch.sigmoid((x - h - mu[..., None]) / log_s.exp()[..., None])
    upper[..., -1], lower[..., 0] = 1.0, 0.0
    return (pi[..., None] * (upper - lower)).sum(-2)


@pytest.mark.parametrize("V", [2, 3, 256])
def test_sums_to_one_over_the_bins(V: int) -> None:
    torch.manual_seed(0)
    params = torch.randn(64, 15) * torch.tensor([3.0] * 5 + [2.0] * 5 + [4.0] * 5)  # means off [-1, 1], tiny/huge s
    lp = logistic_mixture_log_probs(params, V)
    assert lp.shape == (64, V)
    torch.testing.assert_close(lp.double().logsumexp(-1), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-5)


def test_exact_likelihood_matches_the_formula_and_gradients_are_finite() -> None:
    torch.manual_seed(1)
    params = (torch.randn(200, 9) * torch.tensor([2.0] * 3 + [1.5] * 3 + [3.0] * 3)).requires_grad_(True)
    lp = logistic_mixture_log_probs(params, 256)
    ref = naive_probs(params.detach(), 256)
    big = ref > 1e-6  # where float64 differences are themselves accurate
    torch.testing.assert_close(lp.detach().double().exp()[big], ref[big], rtol=1e-3, atol=1e-7)
    # a sharp component on a bin's centre: nearly all its mass in that bin, edge bins included
    sharp = torch.tensor([[0.0, -1.0, -7.0], [0.0, 1.0, -7.0], [0.0, 2 * 100 / 255 - 1, -7.0]])
    lp = logistic_mixture_log_probs(sharp, 256)
    # s = e^-7: the centre bin holds sigma(h / s) - sigma(-h / s) = 0.973, an edge bin more
    assert lp[0, 0].exp() > 0.98 and lp[1, 255].exp() > 0.98 and lp[2, 100].exp() > 0.97
    extreme = (torch.randn(50, 9) * 50).requires_grad_(True)
    logistic_mixture_log_probs(extreme, 256)[:, [0, 1, 128, 254, 255]].sum().backward()
    assert torch.isfinite(extreme.grad).all()
    targets = torch.randint(0, 256, (200,))
    logistic_mixture_log_probs(params, 256).gather(-1, targets[:, None]).sum().backward()
    assert torch.isfinite(params.grad).all()


ARCHS = {"pixelcnn": dict(pixelcnn_channels=16, pixelcnn_layers=2), "transformer": dict(d_model=32, n_layer=2),
         "sparse_transformer": dict(d_model=32, n_layer=2)}


def mixture_prior(arch: str, vocab: int = 4, shape=(1, 3), num_classes: int = 0):
    torch.manual_seed(0)
    p = build_prior(arch=arch, vocab_size=vocab, shape=shape, output="logistic_mixture", logistic_mixtures=3,
                    num_classes=num_classes, **ARCHS[arch])
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    return p.eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_mixture_priors_are_normalised_exact_and_sample_the_same_cached_or_not(arch: str) -> None:
    p = mixture_prior(arch)
    grids = torch.tensor(list(itertools.product(range(4), repeat=3))).reshape(-1, 1, 3)
    with torch.no_grad():
        lp = p.log_prob(grids).double()
        logits = p(grids)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-4  # whole-grid likelihoods sum to one
    torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(64, 1, 3), rtol=0, atol=1e-5)  # log-probs already
    p.train()
    torch.testing.assert_close(p.loss(grids), -lp.float().mean() / 3, rtol=1e-5, atol=1e-5)
    p.eval()
    a = p.sample(6, generator=torch.Generator().manual_seed(2), use_cache=True)
    b = p.sample(6, generator=torch.Generator().manual_seed(2), use_cache=False)
    assert torch.equal(a, b)
    x = p.sample(20000, generator=torch.Generator().manual_seed(0))
    flat = (x.reshape(-1, 3) * torch.tensor([16, 4, 1])).sum(1)
    counts = torch.bincount(flat, minlength=64).double() / len(x)
    torch.testing.assert_close(counts, lp.exp(), rtol=0, atol=0.012)


@pytest.mark.parametrize("arch", ["pixelcnn", "transformer"])
def test_mixture_prior_on_raw_8bit_grids_trains(arch: str) -> None:
    """A few Adam steps on smooth 8-bit rows lower the NLL; the head has 3K outputs, not 256."""
    p = mixture_prior(arch, vocab=256, shape=(4, 4))
    last = p.net.head[-1] if arch == "pixelcnn" else p.net.head
    assert (last.out_channels if arch == "pixelcnn" else last.out_features) == head_size("logistic_mixture", 256, 3) == 9
    base = torch.linspace(0, 255, 16).round().long().reshape(1, 4, 4)
    data = (base + torch.randint(-3, 4, (32, 1, 1))).clamp(0, 255)
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    p.train()
    first = p.loss(data).item()
    for _ in range(30):
        opt.zero_grad()
        p.loss(data).backward()
        opt.step()
    assert p.loss(data).item() < first - 0.5


def test_mixture_config_checks() -> None:
    with pytest.raises(ValueError, match="logistic_mixture"):
        build_prior(arch="made", vocab_size=256, shape=(2, 2), output="logistic_mixture")
    with pytest.raises(ValueError, match="output must be"):
        build_prior(arch="pixelcnn", vocab_size=256, shape=(2, 2), output="gaussian")
