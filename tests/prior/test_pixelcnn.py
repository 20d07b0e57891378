"""Gated PixelCNN: no blind spot (van den Oord et al. 2016 §2.2), for 2-D and 1-D grids."""

from __future__ import annotations

import pytest
import torch

from prior import build_prior


def make(shape: tuple[int, ...], layers: int, num_classes: int = 0):
    torch.manual_seed(0)
    p = build_prior(arch="pixelcnn", vocab_size=4, shape=shape, pixelcnn_layers=layers, pixelcnn_channels=8,
                    num_classes=num_classes)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    return p.eval()


def dependence(p, x: torch.Tensor, lab: torch.Tensor | None = None) -> torch.Tensor:
    """bool [L, L]: dep[i, j] = changing token j changes the logits at position i (perturbation check,
    every alternative value of token j tried)."""
    L = p.config.seq_len
    flat = x.reshape(len(x), L)
    dep = torch.zeros(L, L, dtype=torch.bool)
    with torch.no_grad():
        base = p.net(flat, lab)
        for j in range(L):
            for shift in range(1, p.vocab_size):
                y = flat.clone()
                y[:, j] = (y[:, j] + shift) % p.vocab_size
                dep[:, j] |= (p.net(y, lab) != base).any(-1).any(0)
    return dep


@pytest.mark.parametrize("shape,layers", [((5, 5), 4), ((5, 5), 6), ((4, 6), 5), ((1, 8), 4), ((8,), 4)])
def test_no_blind_spot(shape: tuple[int, ...], layers: int) -> None:
    """Position i depends on EVERY earlier position in raster order and on no later one."""
    p = make(shape, layers)
    L = p.config.seq_len
    dep = dependence(p, torch.randint(0, 4, (3, L)))
    strictly_lower = torch.tril(torch.ones(L, L, dtype=torch.bool), -1)
    missing = (strictly_lower & ~dep).nonzero().tolist()
    leaks = (dep & ~strictly_lower).nonzero().tolist()
    assert not leaks, f"positions see the current or later tokens: {leaks[:5]}"
    assert not missing, f"blind spot: (position, earlier token) pairs not seen: {missing[:5]}"


def test_no_blind_spot_conditional() -> None:
    p = make((5, 5), 4, num_classes=3)
    dep = dependence(p, torch.randint(0, 4, (2, 25)), torch.tensor([1, 3]))
    assert torch.equal(dep, torch.tril(torch.ones(25, 25, dtype=torch.bool), -1))


def test_receptive_field_is_limited_without_enough_layers() -> None:
    """The check above has teeth: with one layer the window is 4 tokens left and 3 rows up (first kernel 7),
    so a far-away earlier token is not seen, while the whole row above within reach is."""
    p = make((6, 9), 1)
    dep = dependence(p, torch.randint(0, 4, (2, 54)))
    W = 9
    i = 5 * W + 8  # position (5, 8)
    assert not dep[i, 0]  # (0, 0): out of reach
    assert dep[i, 4 * W + 5] and dep[i, 5 * W + 4]  # (4, 5) above-left, (5, 4) four to the left
    assert not dep[i, 5 * W + 3]  # (5, 3): five to the left


def test_whole_grid_required() -> None:
    p = make((3, 3), 2)
    with pytest.raises(ValueError, match="whole grids"):
        p.net(torch.zeros(1, 5, dtype=torch.long), None)
