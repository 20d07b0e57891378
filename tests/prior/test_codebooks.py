"""Priors over codebook token grids (t, q) / (h, w, q): the delay pattern's pure functions, exact normalisation
of flatten and delay priors, cached == uncached sampling (labels, CFG), beam search, 3-axis grids for every
arch, and clear errors for bad configs."""

from __future__ import annotations

import itertools

import pytest
import torch

from prior import ARCHS, Prior, PriorConfig, build_prior, load_prior
from prior.codebooks import delay_order, delay_pattern, step_sources, undelay

TINY = {
    "transformer": dict(n_layer=2, n_head=2, d_model=16),
    "sparse_transformer": dict(n_layer=2, n_head=2, d_model=16),
    "wavenet": dict(residual_channels=8, skip_channels=8, dilation_cycle=3, n_cycles=1),
    "pixelcnn": dict(pixelcnn_layers=3, pixelcnn_channels=8),
    "made": dict(made_hidden=(32, 32)),
    "lstm": dict(lstm_hidden=16, lstm_layers=1),
    "histogram": dict(),
    "ngram": dict(),
}


def make(arch: str, shape: tuple[int, ...], vocab: int = 3, num_classes: int = 0, pattern: str = "flatten",
         seed: int = 0) -> Prior:
    """A tiny prior over a codebook grid (q = shape[-1]) with randomised weights (far from uniform) or, for the
    counting ngram, counts fitted on skewed random grids."""
    torch.manual_seed(seed)
    p = build_prior(arch=arch, vocab_size=vocab, shape=shape, num_codebooks=shape[-1], codebook_pattern=pattern,
                    num_classes=num_classes, **TINY.get(arch, {}))
    with torch.no_grad():
        for w in p.parameters():
            w.add_(torch.randn_like(w) * 0.3)
    if p.net.fitted_by_counting:
        g = torch.Generator().manual_seed(seed)
        x = torch.minimum(*torch.randint(0, vocab, (2, 24, p.config.seq_len), generator=g))
        p.net.fit(x, torch.randint(0, num_classes, (24,), generator=g) if num_classes else None)
    return p.eval()


# ---------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("t,q", [(1, 1), (5, 1), (1, 4), (6, 3), (4, 8)])
def test_delay_then_undelay_is_identity(t: int, q: int) -> None:
    x = torch.randint(0, 7, (3, t, q))
    d = delay_pattern(x, pad=7)
    assert d.shape == (3, t + q - 1, q)
    assert torch.equal(undelay(d), x)
    assert int((d == 7).sum()) == 3 * q * (q - 1)  # exactly the triangle corners are pads
    logits = torch.randn(3, t + q - 1, q, 5)  # per-step outputs undelay the same way
    assert undelay(logits, t).shape == (3, t, q, 5)


def test_delay_pattern_layout() -> None:
    x = torch.tensor([[[1, 2], [3, 4], [5, 6]]])  # t=3, q=2
    assert delay_pattern(x, pad=-1).tolist() == [[[1, -1], [3, 2], [5, 4], [-1, 6]]]
    order = delay_order(3, 2)
    assert sorted(order.tolist()) == list(range(6))
    assert order.tolist() == [0, 2, 1, 4, 3, 5]  # steps: {(0,0)}, {(1,0), (0,1)}, {(2,0), (1,1)}, {(2,1)}
    assert step_sources(3, 2).tolist() == [[0, -1], [2, 1], [4, 3], [-1, 5]]
    with pytest.raises(ValueError, match="t \\+ q - 1"):
        undelay(torch.zeros(1, 2, 4), t=3)


# ---------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("arch,pattern", [("transformer", "flatten"), ("pixelcnn", "flatten"), ("lstm", "flatten"),
                                          ("ngram", "flatten"), ("transformer", "delay")])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_exhaustive_normalisation(arch: str, pattern: str, num_classes: int) -> None:
    """sum over all 3**4 (t=2, q=2) grids of p(grid [| label]) == 1: the delay pattern's parallel codebooks
    are still an exact normalised factorisation, over the real tokens only."""
    p = make(arch, (2, 2), num_classes=num_classes, pattern=pattern)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)  # [81, 2, 2]
    for label in range(num_classes) if num_classes else [None]:
        lab = None if label is None else torch.full((len(grids),), label)
        with torch.no_grad():
            lp = p.log_prob(grids, lab).double()
        assert lp.shape == (81,)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-4, f"{arch}/{pattern} label={label}: not normalised"
        assert lp.std() > 0.1  # far from uniform, so the check has teeth


def test_delay_normalises_on_a_longer_grid() -> None:
    """t=3, q=2 (so some steps mix a pad with a real token), vocab 2: 64 grids."""
    p = make("transformer", (3, 2), vocab=2, pattern="delay", seed=3)
    grids = torch.tensor(list(itertools.product(range(2), repeat=6))).reshape(-1, 3, 2)
    with torch.no_grad():
        assert abs(torch.logsumexp(p.log_prob(grids).double(), 0).item()) < 1e-4


def test_delay_causality_in_its_order() -> None:
    """Changing the token at rank r of decode_order changes no logits at ranks <= r (the parallel codebooks of
    one step do not see each other), and does change some later ones."""
    p = make("transformer", (3, 3), vocab=4, pattern="delay")
    order = p.net.decode_order.tolist()
    x = torch.randint(0, 4, (2, 3, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = p(x).reshape(2, 9, 4)
        for r, pos in enumerate(order[:-1]):
            y = x.clone().reshape(2, 9)
            y[:, pos] = (y[:, pos] + 1) % 4
            out = p(y.reshape(2, 3, 3)).reshape(2, 9, 4)
            before = order[: r + 1]
            assert torch.equal(out[:, before], base[:, before]), f"rank {r}"
            assert (out != base).any()


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("settings", [
    dict(),
    dict(temperature=0.7, top_k=2),
    dict(labels=torch.tensor([0, 2, 1, 0]), cfg_scale=2.0),
    dict(labels=1, top_p=0.9),
], ids=["plain", "topk", "cfg", "labels-topp"])
@pytest.mark.parametrize("arch,pattern,shape", [
    ("transformer", "delay", (5, 3)),
    ("transformer", "delay", (2, 3, 2)),
    ("transformer", "flatten", (5, 3)),
    ("pixelcnn", "flatten", (2, 3, 2)),
    ("sparse_transformer", "flatten", (2, 3, 2)),
], ids=["delay-tq", "delay-hwq", "flatten-tq", "pixelcnn-hwq", "sparse-hwq"])
def test_cached_equals_uncached_sampling(arch: str, pattern: str, shape: tuple[int, ...], settings: dict) -> None:
    num_classes = 3 if "labels" in settings else 0
    p = make(arch, shape, vocab=5, num_classes=num_classes, pattern=pattern)
    a = p.sample(4, generator=torch.Generator().manual_seed(7), use_cache=True, **settings)
    b = p.sample(4, generator=torch.Generator().manual_seed(7), use_cache=False, **settings)
    assert a.shape == (4, *shape) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 5
    assert torch.equal(a, b)


def test_delay_greedy_sampling_is_argmax() -> None:
    p = make("transformer", (4, 3), vocab=5, pattern="delay")
    x = p.sample(3, temperature=0)
    assert torch.equal(p(x).argmax(-1), x)


def test_delay_sampling_follows_the_model() -> None:
    """Sample frequencies match exp(log_prob) on the 81-grid case (so sampling reads the right conditionals)."""
    p = make("transformer", (2, 2), pattern="delay", seed=1)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)
    with torch.no_grad():
        probs = p.log_prob(grids).exp()
    x = p.sample(4000, generator=torch.Generator().manual_seed(0)).reshape(-1, 4)
    idx = (x * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(idx, minlength=81).double() / len(idx)
    assert (freq - probs.double()).abs().max() < 0.03


# ---------------------------------------------------------------------------------------------- beam search
@pytest.mark.parametrize("pattern", ["flatten", "delay"])
def test_beam_search_exact_on_a_codebook_grid(pattern: str) -> None:
    """With beam >= V ** (L - 1) beam search is exact: it finds the brute-force argmax, cached or not."""
    p = make("transformer", (2, 2), num_classes=2, pattern=pattern, seed=2)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)
    with torch.no_grad():
        lp = p.log_prob(grids, torch.ones(81, dtype=torch.long))
    for use_cache in (True, False):
        tokens, scores = p.beam_search(beam_size=27, labels=1, use_cache=use_cache)
        assert torch.equal(tokens[0], grids[lp.argmax()])
        assert abs(scores[0].item() - lp.max().item()) < 1e-4


# ---------------------------------------------------------------------------------------------- 3-axis grids
def test_every_arch_takes_an_hwq_grid() -> None:
    """(h, w, q) grids: forward / log_prob / cached == uncached sampling / beam search for every arch."""
    shape = (2, 3, 2)
    x = torch.randint(0, 3, (3, *shape), generator=torch.Generator().manual_seed(0))
    for arch in ARCHS:
        p = make(arch, shape)
        with torch.no_grad():
            assert p(x).shape == (3, *shape, 3), arch
            lp = p.log_prob(x)
        assert lp.shape == (3,) and torch.isfinite(lp).all(), arch
        a = p.sample(2, generator=torch.Generator().manual_seed(1))
        b = p.sample(2, generator=torch.Generator().manual_seed(1), use_cache=False)
        assert a.shape == (2, *shape) and torch.equal(a, b), arch
        tokens, scores = p.beam_search(beam_size=2)
        assert tokens.shape == (1, *shape), arch
        with torch.no_grad():
            assert abs(p.log_prob(tokens).item() - scores.item()) < 1e-3, arch


def test_hwq_grids_fold_to_a_picture() -> None:
    c = PriorConfig(arch="pixelcnn", shape=(4, 5, 3), num_codebooks=3)
    assert c.plane == (4, 15) and c.num_steps == 20
    assert build_prior(c).net.grid == (4, 15)
    assert PriorConfig(arch="sparse_transformer", shape=(4, 5, 3), num_codebooks=3).stride == 15
    assert PriorConfig(arch="sparse_transformer", shape=(6, 4), num_codebooks=4).stride == 4  # (t, q): one step earlier
    assert PriorConfig(shape=(7,)).plane == (1, 7)


@pytest.mark.parametrize("num_classes", [0, 2])
def test_delay_save_load_round_trip(tmp_path, num_classes: int) -> None:
    p = make("transformer", (4, 3), vocab=5, num_classes=num_classes, pattern="delay")
    p.save_pretrained(tmp_path / "prior")
    q = load_prior(str(tmp_path / "prior"))
    assert q.config == p.config and q.config.codebook_pattern == "delay"
    x = torch.randint(0, 5, (3, 4, 3))
    lab = torch.randint(0, num_classes, (3,)) if num_classes else None
    with torch.no_grad():
        assert torch.equal(p.log_prob(x, lab), q.log_prob(x, lab))


def test_delay_trains() -> None:
    """The delay prior learns codebook structure (codebook k = codebook 0 of the same time + k, which step t + k
    has seen) in a few steps: the floor is 6 log 4 nats (codebook 0 uniform), a third of uniform."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 4, (512, 6, 1), generator=g)
    data = (x0 + torch.arange(3)) % 4  # [512, 6, 3]: only codebook 0 carries information
    torch.manual_seed(0)
    p = build_prior(arch="transformer", vocab_size=4, shape=(6, 3), num_codebooks=3, codebook_pattern="delay",
                    n_layer=1, n_head=2, d_model=32)
    opt = torch.optim.Adam(p.parameters(), lr=1e-2)
    for _ in range(25):
        loss = p.loss(data[torch.randint(0, 512, (32,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = -p.eval().log_prob(data[:128]).mean().item()
    assert nll < 0.5 * 18 * torch.log(torch.tensor(4.0)).item()  # well under uniform (18 tokens of log 4)


# ---------------------------------------------------------------------------------------------- bad configs
def test_bad_codebook_configs_raise() -> None:
    with pytest.raises(ValueError, match="codebook axis"):
        PriorConfig(shape=(8, 3), num_codebooks=4)
    with pytest.raises(ValueError, match="codebook axis"):
        PriorConfig(shape=(8,), num_codebooks=4)
    with pytest.raises(ValueError, match="codebook axis"):
        PriorConfig(shape=(2, 3, 4))  # 3-axis grids are (h, w, q) with q = num_codebooks
    with pytest.raises(ValueError, match="1 to 3 axes"):
        PriorConfig(shape=(2, 2, 2, 2), num_codebooks=2)
    with pytest.raises(ValueError, match="num_codebooks must be >= 1"):
        PriorConfig(shape=(8, 1), num_codebooks=0)
    with pytest.raises(ValueError, match="codebook_pattern must be one of"):
        PriorConfig(shape=(8, 2), num_codebooks=2, codebook_pattern="interleave")
    for arch in set(ARCHS) - {"transformer"}:
        with pytest.raises(ValueError, match="codebook_pattern='delay' is implemented for"):
            PriorConfig(arch=arch, shape=(8, 2), num_codebooks=2, codebook_pattern="delay")
    p = make("transformer", (4, 2), pattern="delay")
    with pytest.raises(ValueError, match="shape"):
        p.log_prob(torch.zeros(2, 2, 4, dtype=torch.long))  # (q, t) instead of (t, q)


def test_old_configs_load_as_flatten() -> None:
    d = PriorConfig(shape=(4, 4)).to_dict()
    del d["num_codebooks"], d["codebook_pattern"]
    c = PriorConfig.from_dict(d)
    assert c.num_codebooks == 1 and c.codebook_pattern == "flatten"
