"""WaveNet: fast generation (Paine et al. 2016) == naive recomputation, and the receptive field."""

from __future__ import annotations

import pytest
import torch

from prior import build_prior
from prior.wavenet import WaveNet


def make(num_classes: int = 0, dilation_cycle: int = 3, n_cycles: int = 2, L: int = 48, seed: int = 0):
    torch.manual_seed(seed)
    p = build_prior(arch="wavenet", vocab_size=6, shape=(L,), residual_channels=8, skip_channels=8,
                    dilation_cycle=dilation_cycle, n_cycles=n_cycles, num_classes=num_classes)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    return p.eval()


@pytest.mark.parametrize("num_classes", [0, 3])
def test_fast_generation_matches_naive_step_by_step(num_classes: int) -> None:
    p = make(num_classes)
    net: WaveNet = p.net
    x = torch.randint(0, 6, (3, 48))
    lab = torch.tensor([0, 2, 3]) if num_classes else None  # 3 = the null label
    cache = net.init_cache(3, torch.device("cpu"))
    with torch.no_grad():
        for pos in range(48):
            naive = net(x[:, : pos + 1], lab)[:, pos]  # recompute the whole prefix
            fast = net.step(cache, x, pos, lab)
            torch.testing.assert_close(fast, naive, rtol=0, atol=1e-5)


def test_step_does_not_read_the_current_or_later_tokens() -> None:
    p = make()
    x = torch.randint(0, 6, (2, 48))
    c1, c2 = p.net.init_cache(2, torch.device("cpu")), p.net.init_cache(2, torch.device("cpu"))
    with torch.no_grad():
        for pos in range(48):
            y = x.clone()
            y[:, pos:] = torch.randint(0, 6, (2, 48 - pos))  # garbage at >= pos
            assert torch.equal(p.net.step(c1, x, pos, None), p.net.step(c2, y, pos, None))


def test_step_out_of_order_raises() -> None:
    p = make()
    cache = p.net.init_cache(1, torch.device("cpu"))
    with pytest.raises(ValueError, match="consecutive"):
        p.net.step(cache, torch.zeros(1, 48, dtype=torch.long), 3, None)


@pytest.mark.parametrize("cycle,cycles", [(3, 2), (4, 1), (2, 3)])
def test_receptive_field(cycle: int, cycles: int) -> None:
    """Logits at i change when a token in x[i - R : i] changes, never for a token before i - R."""
    p = make(dilation_cycle=cycle, n_cycles=cycles, L=48)
    R = p.net.receptive_field
    assert R == cycles * (2**cycle - 1) + 2  # the formula in PriorConfig
    x = torch.randint(0, 6, (4, 48))
    with torch.no_grad():
        base = p.net(x, None)
        for j in range(48):
            y = x.clone()
            y[:, j] = (y[:, j] + 1 + torch.randint(0, 5, (4,))) % 6
            changed = (p.net(y, None) != base).any(-1).any(0)  # [L]: which positions' logits moved
            expected = (torch.arange(48) > j) & (torch.arange(48) <= j + R)
            assert torch.equal(changed, expected), f"token {j}: {changed.nonzero().flatten().tolist()}"


def test_label_changes_every_position() -> None:
    p = make(num_classes=2)
    x = torch.randint(0, 6, (1, 48))
    with torch.no_grad():
        a, b = p.net(x, torch.tensor([0])), p.net(x, torch.tensor([1]))
    assert bool((a != b).any(-1).all())  # global conditioning reaches every position, the first included
