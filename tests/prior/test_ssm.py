"""``arch="ssm"``: registered by its file alone; the layer's FFT convolution equals its recurrence; cached decoding
gives the training-time logits; it learns a long-range dependency a histogram cannot. (The properties every
architecture must have run on it through tests/prior/test_all_archs.py.)"""

import torch

from prior import ARCHS, PriorConfig, build_prior, load_prior
from prior.ssm import DiagonalSSM


def test_registered_with_its_config() -> None:
    assert "ssm" in ARCHS
    c = PriorConfig(arch="ssm", vocab_size=5, shape=(12,), ssm_state=4)
    assert c.net.ssm_state == 4 and PriorConfig.from_json(c.to_json()) == c


def test_convolution_equals_recurrence() -> None:
    torch.manual_seed(0)
    layer = DiagonalSSM(6, 5, 1e-3, 1e-1)
    with torch.no_grad():
        layer.log_dt.add_(torch.randn(6))  # away from the init, so long and short memories both matter
    u = torch.randn(3, 150, 6)  # three chunks of 64: the state carried across chunk boundaries
    conv = layer(u)
    state, steps = None, []
    for t in range(150):
        y, state = layer.step(state, u[:, t])
        steps.append(y)
    assert torch.allclose(conv, torch.stack(steps, 1), atol=1e-4, rtol=1e-4)


def test_cached_steps_give_the_forward_logits(tmp_path) -> None:
    torch.manual_seed(0)
    p = build_prior(arch="ssm", vocab_size=7, shape=(4, 5), num_classes=3, ssm_dim=16, ssm_state=4,
                    ssm_layers=2).eval()
    x = torch.randint(0, 7, (2, 20))
    labels = torch.tensor([0, 3])  # 3: the null label
    full = p.net(x, labels)
    cache = p.net.init_cache(2, x.device)
    stepped = torch.stack([p.net.step(cache, x, pos, labels) for pos in range(20)], 1)
    assert torch.allclose(full, stepped, atol=1e-4)
    p.save_pretrained(tmp_path / "p")
    grid = x.view(2, 4, 5)
    assert torch.allclose(load_prior(str(tmp_path / "p")).log_prob(grid, labels[:1].repeat(2)),
                          p.log_prob(grid, labels[:1].repeat(2)))


def test_learns_a_dependency_across_the_sequence() -> None:
    """Token 0 is random and the last token copies it: a histogram is stuck at log 2 nats for the last position."""
    torch.manual_seed(0)
    p = build_prior(arch="ssm", vocab_size=2, shape=(24,), ssm_dim=16, ssm_state=8, ssm_layers=2)
    opt = torch.optim.Adam(p.parameters(), 1e-2)
    for _ in range(150):
        first = torch.randint(0, 2, (32, 1))
        x = torch.cat([first, torch.zeros(32, 22, dtype=torch.long), first], 1)
        loss = p.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    first = torch.randint(0, 2, (64, 1))
    x = torch.cat([first, torch.zeros(64, 22, dtype=torch.long), first], 1)
    logp_last = torch.log_softmax(p(x)[:, -1], -1).gather(-1, first).mean()
    assert logp_last > -0.1  # nats; a model that ignores the first token gets log(1/2) = -0.69
