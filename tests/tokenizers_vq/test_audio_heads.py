"""The audio decoder's output heads: proper distributions over the mu-law classes, exact cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from tokenizers_vq.audio_heads import CategoricalHead, LogisticMixtureHead, build_head, mu_law_expand

Q = 256


def random_out(k: int, t: int = 50, seed: int = 0, spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3 * k, t, generator=g) * spread


def test_mu_law_expand_equals_torchaudio_at_class_centres_and_is_monotone():
    q = torch.arange(Q)
    y = q.float() * 2 / (Q - 1) - 1
    torch.testing.assert_close(mu_law_expand(y, Q), AF.mu_law_decoding(q, Q).float(), atol=1e-6, rtol=0)
    dense = torch.linspace(-1, 1, 10001)
    x = mu_law_expand(dense, Q)
    assert (x[1:] > x[:-1]).all() and x[0] == -1 and x[-1] == 1 and abs(x[5000]) < 1e-8


@pytest.mark.parametrize("k", [1, 3])
def test_logistic_probabilities_sum_to_one_and_nll_is_their_cross_entropy(k):
    head = LogisticMixtureHead(Q, k)
    for spread in (0.1, 3.0, 30.0):  # broad, typical and very sharp components (log-scale hits its floor)
        out = random_out(k, spread=spread)
        lp = head.log_probs(out)
        assert lp.shape == (3, Q, 50) and torch.isfinite(lp).all()
        torch.testing.assert_close(lp.exp().sum(1), torch.ones(3, 50), atol=1e-4, rtol=0)
        target = torch.randint(0, Q, (3, 50), generator=torch.Generator().manual_seed(1))
        target[0, :3] = torch.tensor([0, Q - 1, Q // 2])  # the two open-ended end bins and the middle
        torch.testing.assert_close(head.nll(out, target), F.nll_loss(lp, target), atol=1e-4, rtol=1e-5)


def test_logistic_mass_matches_the_logistic_cdf_on_a_hand_example():
    head = LogisticMixtureHead(Q, 1)
    loc, scale = 0.1, 0.05
    out = torch.tensor([math.atanh(loc), math.log(scale) - math.log(0.5), 0.0]).view(1, 3, 1)
    lp = head.log_probs(out)[0, :, 0].double()
    h = 1 / (Q - 1)
    c = torch.arange(Q).double() * 2 * h - 1
    cdf = lambda v: torch.sigmoid((v - loc) / scale)  # noqa: E731
    ref = cdf(c + h) - cdf(c - h)
    ref[0], ref[-1] = cdf(c[0] + h), 1 - cdf(c[-1] - h)
    torch.testing.assert_close(lp.exp(), ref, atol=1e-6, rtol=1e-4)


def test_logistic_mode_is_the_argmax_class_and_mean_follows_the_location():
    head = LogisticMixtureHead(Q, 1)
    out = random_out(1, spread=1.0).clamp(-1, 1)  # locations within tanh(1) = 0.76: away from the end bins,
    out[:, 1] = -3.0  # which also hold all the mass beyond +-1; moderately sharp: a unique most likely bin
    lp = head.log_probs(out)
    assert torch.equal(head.mode_codes(out), lp.argmax(1))
    # Very sharp components: the mean waveform is the value of the class the location falls in.
    out[:, 1] = -20.0
    codes = head.mode_codes(out)
    torch.testing.assert_close(head.mean_waveform(out), mu_law_expand(torch.tanh(out[:, 0]), Q))
    torch.testing.assert_close(head.mean_waveform(out), AF.mu_law_decoding(codes, Q).float(), atol=0.02, rtol=0)


def test_logistic_mixture_weights_mix_the_medians():
    head = LogisticMixtureHead(Q, 2)
    out = torch.zeros(1, 6, 1)
    out[0, :2, 0] = torch.tensor([math.atanh(0.5), math.atanh(-0.5)])
    out[0, 4:, 0] = torch.tensor([math.log(3.0), 0.0])  # weights 3/4 and 1/4
    expect = 0.75 * mu_law_expand(torch.tensor(0.5)) + 0.25 * mu_law_expand(torch.tensor(-0.5))
    torch.testing.assert_close(head.mean_waveform(out)[0, 0], expect)


def test_logistic_nll_and_gradients_stay_finite_at_the_extremes():
    head = LogisticMixtureHead(Q, 2)
    out = torch.tensor([[[50.0, -50.0], [-50.0, 50.0], [20.0, 20.0], [-20.0, -20.0], [5.0, -5.0], [0.0, 0.0]]])
    out.requires_grad_(True)  # locations pinned at +-1, scales at the floor and huge
    target = torch.tensor([[0, Q - 1]])  # each target at the far end from the sharp component
    loss = head.nll(out, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()


def test_categorical_head_is_softmax_cross_entropy():
    head = CategoricalHead(Q)
    out = torch.randn(2, Q, 7)
    target = torch.randint(0, Q, (2, 7))
    torch.testing.assert_close(head.nll(out, target), F.cross_entropy(out, target))
    torch.testing.assert_close(head.log_probs(out), out.log_softmax(1))
    assert torch.equal(head.mode_codes(out), out.argmax(1))
    mean = (out.softmax(1) * AF.mu_law_decoding(torch.arange(Q), Q).float()[None, :, None]).sum(1)
    torch.testing.assert_close(head.mean_waveform(out), mean)


def test_build_head_names_the_choices():
    assert build_head("logistic", Q, 2).channels == 6
    assert build_head("categorical", Q, 2).channels == Q
    with pytest.raises(ValueError, match="audio_head must be one of"):
        build_head("gaussian", Q, 1)
    with pytest.raises(ValueError, match="logistic_mixtures must be >= 1"):
        LogisticMixtureHead(Q, 0)
