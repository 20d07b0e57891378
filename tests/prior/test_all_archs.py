"""Properties every prior architecture must have, run over every architecture registered in ``prior.ARCHS``.

causality by perturbation, exhaustive normalisation, cached == uncached sampling, save/load round trip,
clear errors on bad input, and learning a structured dataset better than the per-position histogram.
An architecture whose module does not import yet is skipped with the import error as the reason.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prior import ARCHS, Prior, build_prior, load_prior
from prior.net import PriorNet
from tests.prior.tiny_priors import TINY

# slightly wider models for the learning test
LEARN = {
    "transformer": dict(n_layer=2, n_head=2, d_model=32),
    "sparse_transformer": dict(n_layer=2, n_head=2, d_model=32),
    "wavenet": dict(residual_channels=16, skip_channels=16, dilation_cycle=3, n_cycles=1),
    "pixelcnn": dict(pixelcnn_layers=4, pixelcnn_channels=16),
    "made": dict(made_hidden=(64, 64)),
    "lstm": dict(lstm_hidden=32, lstm_layers=1),
    "histogram": dict(),
    "ngram": dict(),
}


def counting_only(p: Prior) -> bool:
    """A net with no parameters (ngram) is fitted by counting, not by gradient steps."""
    return next(p.parameters(), None) is None


def test_the_registry_holds_the_built_in_architectures() -> None:
    assert set(TINY) == set(LEARN) <= set(ARCHS)
    for name in ARCHS:
        net = ARCHS.get(name)
        assert issubclass(net, PriorNet) and net.name == name


@pytest.fixture(params=ARCHS.names())
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


def make(arch: str, shape: tuple[int, ...] = (3, 4), vocab: int = 5, num_classes: int = 0, seed: int = 0,
         sizes: dict | None = None, **kw) -> Prior:
    """A tiny prior with randomised weights (a fresh init is close to uniform, which would make every
    check below too easy to pass)."""
    torch.manual_seed(seed)
    p = build_prior(arch=arch, vocab_size=vocab, shape=shape, num_classes=num_classes, **(sizes or TINY.get(arch, {})), **kw)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    if counting_only(p):  # fit the counts on a few skewed random grids instead
        g = torch.Generator().manual_seed(seed)
        x = torch.minimum(*torch.randint(0, vocab, (2, 24, p.config.seq_len), generator=g))
        p.net.fit(x, torch.randint(0, num_classes, (24,), generator=g) if num_classes else None)
    return p.eval()


# ---------------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("shape", [(7,), (3, 4)])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_causality_by_perturbation(arch: str, shape: tuple[int, ...], num_classes: int) -> None:
    p = make(arch, shape, num_classes=num_classes)
    L, V = p.config.seq_len, p.vocab_size
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (4, *shape), generator=g)
    lab = torch.randint(0, num_classes, (4,), generator=g) if num_classes else None
    with torch.no_grad():
        base = p(x, lab).reshape(4, L, V)
        changed_later = False
        for i in range(L):
            y = x.clone().reshape(4, L)
            y[:, i] = (y[:, i] + torch.randint(1, V, (4,), generator=g)) % V  # a different token at i
            out = p(y.reshape(x.shape), lab).reshape(4, L, V)
            torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1], rtol=0, atol=0,
                                       msg=f"{arch}: changing token {i} changed logits at positions <= {i}")
            changed_later |= bool((out[:, i + 1:] != base[:, i + 1:]).any())
    if arch != "histogram":  # the histogram ignores the context by design
        assert changed_later, f"{arch}: logits never depend on earlier tokens"


# ---------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("num_classes", [0, 2])
def test_exhaustive_normalisation(arch: str, num_classes: int) -> None:
    """sum over all 3**6 grids of p(grid [| label]) == 1."""
    p = make(arch, (2, 3), vocab=3, num_classes=num_classes)
    grids = torch.tensor(list(itertools.product(range(3), repeat=6))).reshape(-1, 2, 3)  # [729, 2, 3]
    for label in range(num_classes) if num_classes else [None]:
        lab = None if label is None else torch.full((len(grids),), label)
        with torch.no_grad():
            lp = p.log_prob(grids, lab).double()
        assert lp.shape == (729,)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-4, f"{arch} label={label}: not normalised"
        assert lp.std() > 0.1  # the randomised model is far from uniform, so the check has teeth


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("settings", [
    dict(),
    dict(temperature=0.7, top_k=2),
    dict(top_p=0.8),
    dict(labels=torch.tensor([0, 2, 1, 0, 2]), cfg_scale=2.0),
    dict(labels=1, cfg_scale=1.5, top_k=3, top_p=0.9),
], ids=["plain", "topk", "topp", "cfg", "cfg-topk-topp"])
def test_cached_equals_uncached_sampling(arch: str, settings: dict) -> None:
    num_classes = 3 if "labels" in settings else 0
    p = make(arch, (3, 4), num_classes=num_classes)
    a = p.sample(5, generator=torch.Generator().manual_seed(7), use_cache=True, **settings)
    b = p.sample(5, generator=torch.Generator().manual_seed(7), use_cache=False, **settings)
    assert a.shape == (5, 3, 4) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 5
    assert torch.equal(a, b)
    if settings.get("top_k") == 2 and "temperature" in settings:
        # top-k=2 keeps two tokens per step: each sampled token is one of its step's two most likely
        logits = p(a)
        ranks = (logits > logits.gather(-1, a.unsqueeze(-1))).sum(-1)
        assert int(ranks.max()) <= 1


def test_greedy_sampling_is_argmax(arch: str) -> None:
    p = make(arch, (2, 3))
    x = p.sample(3, temperature=0)
    assert torch.equal(p(x).argmax(-1), x)


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("num_classes", [0, 2])
def test_save_load_round_trip(arch: str, num_classes: int, tmp_path) -> None:
    p = make(arch, (3, 4), num_classes=num_classes)
    p.save_pretrained(tmp_path / "prior")
    q = load_prior(str(tmp_path / "prior"))
    assert q.config == p.config
    x = torch.randint(0, 5, (6, 3, 4))
    lab = torch.randint(0, num_classes, (6,)) if num_classes else None
    with torch.no_grad():
        assert torch.equal(p.log_prob(x, lab), q.log_prob(x, lab))


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises(arch: str) -> None:
    p = make(arch, (3, 4))
    x = torch.randint(0, 5, (2, 3, 4))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        p.log_prob(torch.full((2, 3, 4), 5))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        p.log_prob(torch.full((2, 3, 4), -1))
    with pytest.raises(ValueError, match="shape"):
        p.log_prob(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        p.log_prob(torch.zeros(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        p.log_prob(x.float())
    with pytest.raises(ValueError, match="unconditional"):
        p.log_prob(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        p.sample(2, labels=0)
    for top_p in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            p.sample(2, top_p=top_p)
    with pytest.raises(ValueError, match="cfg_scale"):
        p.sample(2, cfg_scale=2.0)
    c = make(arch, (3, 4), num_classes=2)
    with pytest.raises(ValueError, match="conditional"):
        c.log_prob(x)
    with pytest.raises(ValueError, match="conditional"):
        c.sample(2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        c.log_prob(x, torch.tensor([0, 2]))  # the null label is internal, not a valid user label


# ---------------------------------------------------------------------------------------------- learning
def progressions(n: int, shape: tuple[int, ...], V: int, g: torch.Generator) -> torch.Tensor:
    """Grids whose raster sequence is x_i = (x_0 + i * s) mod V with x_0 uniform, s uniform in {1, 3}.

    Every position is marginally uniform (the histogram gets log2 V bits/token) but x_i is determined by
    the two previous tokens (and, for a width-4 grid with V = 4, by the token just above it)."""
    L = math.prod(shape)
    x0 = torch.randint(0, V, (n, 1), generator=g)
    s = 1 + 2 * torch.randint(0, 2, (n, 1), generator=g)
    return ((x0 + torch.arange(L) * s) % V).reshape(n, *shape)


def bits_per_token(p: Prior, x: torch.Tensor) -> float:
    with torch.no_grad():
        return -p.log_prob(x).mean().item() / (p.config.seq_len * math.log(2))


def test_learns_better_than_histogram(arch: str) -> None:
    shape, V = (4, 4), 4
    g = torch.Generator().manual_seed(0)
    train, test = progressions(2048, shape, V, g), progressions(512, shape, V, g)
    hist = build_prior(arch="histogram", vocab_size=V, shape=shape)
    hist.net.fit(train.reshape(len(train), -1))
    hist_bits = bits_per_token(hist, test)
    assert hist_bits > 1.9  # ~log2(4): the positions are marginally uniform
    torch.manual_seed(0)
    p = build_prior(arch=arch, vocab_size=V, shape=shape, **LEARN.get(arch, {}))
    if counting_only(p):
        p.net.fit(train.reshape(len(train), -1))
        bits = bits_per_token(p.eval(), test)
        assert bits < 0.25 * hist_bits, f"{arch}: {bits:.3f} bits/token vs histogram {hist_bits:.3f}"
        return
    lr = {"histogram": 1e-1, "transformer": 3e-3, "sparse_transformer": 3e-3}.get(arch, 1e-2)
    opt = torch.optim.Adam(p.parameters(), lr=lr)
    p.train()
    for _ in range(250 if arch != "histogram" else 50):
        batch = train[torch.randint(0, len(train), (64,), generator=g)]
        loss = p.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bits = bits_per_token(p.eval(), test)
    if arch == "histogram":  # gradient training reaches the closed-form fit, not better
        assert abs(bits - hist_bits) < 0.05
    else:
        assert bits < 0.25 * hist_bits, f"{arch}: {bits:.3f} bits/token vs histogram {hist_bits:.3f}"
