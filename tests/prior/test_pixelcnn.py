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


# ---------------------------------------------------------------------------------------------- fast generation
def stepwise_logits(p, x: torch.Tensor, lab: torch.Tensor | None, seed: int = 5) -> torch.Tensor:
    """float [B, L, V]: ``net.step`` at every position in order, with positions >= pos of the buffer
    overwritten by random tokens each step (the protocol says they are garbage and must not be read)."""
    B, L = x.shape
    g = torch.Generator().manual_seed(seed)
    cache = p.net.init_cache(B, torch.device("cpu"))
    out = []
    with torch.no_grad():
        for pos in range(L):
            buf = x.clone()
            buf[:, pos:] = torch.randint(0, p.vocab_size, (B, L - pos), generator=g)
            out.append(p.net.step(cache, buf, pos, lab))
    return torch.stack(out, 1)


@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (7, 3), (1, 8), (8,), (6, 1), (3, 12)],
                         ids=["square", "wide", "tall", "one-row", "1d", "one-column", "rgb-h-wc"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_cached_step_equals_forward(shape: tuple[int, ...], num_classes: int) -> None:
    """The per-row vertical cache + per-pixel horizontal cache give the full forward's logits at every
    position ((3, 12) is the (h, w * c) layout of raw RGB images)."""
    p = make(shape, 4, num_classes=num_classes)
    L = p.config.seq_len
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (3, L), generator=g)
    lab = torch.tensor([0, 3, 2]) if num_classes else None  # 3 = the null label
    with torch.no_grad():
        full = p.net(x, lab)
    torch.testing.assert_close(stepwise_logits(p, x, lab), full, rtol=0, atol=1e-5)


def test_cached_step_equals_forward_default_width() -> None:
    """The default width and depth (64 channels, 6 layers, first kernel 7) on a grid narrower than the
    first kernel: fp32 agreement holds at realistic sizes too."""
    torch.manual_seed(0)
    p = build_prior(arch="pixelcnn", vocab_size=2, shape=(5, 3), num_classes=2).eval()
    x = torch.randint(0, 2, (2, 15))
    lab = torch.tensor([1, 2])
    with torch.no_grad():
        full = p.net(x, lab)
    torch.testing.assert_close(stepwise_logits(p, x, lab), full, rtol=0, atol=1e-5)


def test_cached_sampling_never_runs_the_full_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    p = make((3, 6), 3, num_classes=2)
    b = p.sample(4, labels=1, cfg_scale=2.0, generator=torch.Generator().manual_seed(3), use_cache=False)
    monkeypatch.setattr(p.net, "forward", lambda *a, **k: pytest.fail("the cached path ran the full forward"))
    a = p.sample(4, labels=1, cfg_scale=2.0, generator=torch.Generator().manual_seed(3), use_cache=True)
    assert torch.equal(a, b)


def test_step_needs_consecutive_positions() -> None:
    p = make((3, 3), 2)
    cache = p.net.init_cache(1, torch.device("cpu"))
    x = torch.zeros(1, 9, dtype=torch.long)
    with torch.no_grad():
        p.net.step(cache, x, 0, None)
        with pytest.raises(ValueError, match="consecutive positions: expected 1, got 2"):
            p.net.step(cache, x, 2, None)


def test_beam_search_cached_equals_uncached() -> None:
    """``reorder_cache`` keeps the row and pixel buffers of the surviving beams (rows change at the row starts
    too, where the vertical stack reads the reordered buffer's row above)."""
    p = make((3, 4), 3, num_classes=3)
    a = p.beam_search(beam_size=5, labels=torch.tensor([0, 2, 1]), use_cache=True)
    b = p.beam_search(beam_size=5, labels=torch.tensor([0, 2, 1]), use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=0, atol=1e-5)


def test_dropout_acts_in_training_only_and_keeps_causality() -> None:
    """``dropout`` (PriorConfig's) drops the gated residual branch while training: two training-mode
    forwards differ, eval mode is deterministic and equals the cached steps, and a dropped unit never lets
    a later token leak into an earlier logit."""
    torch.manual_seed(0)
    p = build_prior(arch="pixelcnn", vocab_size=4, shape=(5, 5), pixelcnn_layers=4, pixelcnn_channels=8,
                    dropout=0.5)
    x = torch.randint(0, 4, (2, 25))
    p.train()
    a, b = p.net(x), p.net(x)
    assert not torch.equal(a, b)
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 4
    torch.manual_seed(1)
    ya = p.net(y)
    torch.manual_seed(1)
    xa = p.net(x)
    torch.testing.assert_close(ya[:, :13], xa[:, :13], rtol=0, atol=0)  # same dropout masks: positions <= 12 unchanged
    p.eval()
    with torch.no_grad():
        torch.testing.assert_close(p.net(x), p.net(x), rtol=0, atol=0)
        torch.testing.assert_close(stepwise_logits(p, x, None), p.net(x), rtol=0, atol=1e-5)
