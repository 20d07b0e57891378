"""LSTM prior: one-step decoding with the (h, c) cache == the full-sequence forward."""

from __future__ import annotations

import pytest
import torch

from prior import build_prior


@pytest.mark.parametrize("num_classes", [0, 2])
def test_step_matches_forward(num_classes: int) -> None:
    torch.manual_seed(0)
    p = build_prior(arch="lstm", vocab_size=5, shape=(4, 5), lstm_hidden=12, lstm_layers=2,
                    num_classes=num_classes).eval()
    x = torch.randint(0, 5, (3, 20))
    lab = torch.tensor([0, 1, 2]) if num_classes else None  # 2 = the null label
    cache = p.net.init_cache(3, torch.device("cpu"))
    with torch.no_grad():
        full = p.net(x, lab)
        for pos in range(20):
            torch.testing.assert_close(p.net.step(cache, x, pos, lab), full[:, pos], rtol=0, atol=1e-5)
        assert cache.state[0].shape == (2, 3, 12)
        # a prefix gives the same logits as the whole sequence (variable_length)
        torch.testing.assert_close(p.net(x[:, :7], lab), full[:, :7], rtol=0, atol=1e-6)


def test_label_reaches_the_first_position() -> None:
    torch.manual_seed(0)
    p = build_prior(arch="lstm", vocab_size=5, shape=(6,), lstm_hidden=8, lstm_layers=1, num_classes=2).eval()
    x = torch.zeros(1, 6, dtype=torch.long)
    with torch.no_grad():
        assert not torch.allclose(p.net(x, torch.tensor([0]))[:, 0], p.net(x, torch.tensor([1]))[:, 0])
