"""The one decoding loop (``prior.decoding.Decoder``): cached == uncached for every architecture with a cache,
the uncached path's full-forward inputs, decode orders, ``reorder`` / ``reorder_cache``, and the ``Prior``
surface around it (``fit``, ``check_labels``, capabilities)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from prior import ARCHS, Prior, PriorNet, build_prior
from prior.decoding import Decoder, evaluating
from tests.prior.tiny_priors import TINY

CASES = [*ARCHS.names(), "delay_transformer"]  # every architecture, and the delay pattern's own decode order


def make(case: str, num_classes: int = 0, shape: tuple[int, ...] = (3, 4), vocab: int = 5, **kw) -> Prior:
    """A tiny prior with randomised weights (counting nets fitted on skewed random grids)."""
    torch.manual_seed(0)
    if case == "delay_transformer":
        p = build_prior(arch="transformer", vocab_size=vocab, shape=(4, 3), num_codebooks=3,  # L 12, q 3
                        num_classes=num_classes, codebook_pattern="delay", **TINY["transformer"], **kw)
    else:
        p = build_prior(arch=case, vocab_size=vocab, shape=shape, num_classes=num_classes, **TINY.get(case, {}), **kw)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    if p.fitted_by_counting:
        g = torch.Generator().manual_seed(0)
        x = torch.minimum(*torch.randint(0, vocab, (2, 24, *shape), generator=g))
        p.fit(x, torch.randint(0, num_classes, (24,), generator=g) if num_classes else None)
    return p.eval()


def teacher_forced(dec: Decoder, tokens: Tensor) -> Tensor:
    """Walk ``dec`` accepting ``tokens`` int64 [B, L]: the logits float [B, L, V] at each flat position."""
    out = torch.zeros(*tokens.shape, dec.net.config.vocab_size)

    def choose(pos: int, logits: Tensor) -> Tensor:
        out[:, pos] = logits.float()
        return tokens[:, pos]

    dec.run(choose)
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_cached_equals_uncached(case: str, num_classes: int) -> None:
    p = make(case, num_classes)
    assert p.supports_cache
    lab = torch.tensor([0, 2, 1]) if num_classes else None
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (3, 12), generator=g)
    with torch.no_grad(), evaluating(p):
        cached, uncached = p.decoder(3, lab), p.decoder(3, lab, use_cache=False)
        assert cached.cached and not uncached.cached
        a, b = teacher_forced(cached, tokens), teacher_forced(uncached, tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    # and on full sampling runs, the same generator gives the same tokens
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    labels = lab if num_classes else None
    uncached_sample = p.sample(3, labels, generator=gen(), use_cache=False)
    assert torch.equal(p.sample(3, labels, generator=gen()), uncached_sample)


def test_positions_follow_the_decode_order() -> None:
    raster = make("transformer")
    assert raster.decode_order is None and list(raster.decoder(1).positions) == list(range(12))
    delay = make("delay_transformer")
    assert delay.decode_order is not None
    assert list(delay.decoder(1).positions) == delay.decode_order.tolist() != list(range(12))
    made = make("made", made_order="random")
    assert not made.supports_cache  # a random-order MADE decodes by full forwards, in its own order
    dec = made.decoder(2)
    assert dec.cache is None and list(dec.positions) == made.decode_order.tolist()


class SpyNet(PriorNet):
    """Records the input length of every full forward; logits depend on the running token sum only."""

    def __init__(self, config, variable_length: bool):
        super().__init__(config)
        self.variable_length = variable_length
        self.lengths: list[int] = []

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        self.lengths.append(x.shape[1])
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).cumsum(1)
        return torch.nn.functional.one_hot(prev % self.config.vocab_size, self.config.vocab_size).float()


@pytest.mark.parametrize("variable_length", [True, False])
def test_uncached_inputs_are_raster_prefixes_or_whole_buffers(variable_length: bool) -> None:
    p = build_prior(arch="histogram", vocab_size=4, shape=(2, 3))
    p.net = SpyNet(p.config, variable_length)
    x = p.sample(2, temperature=0)
    assert p.net.lengths == ([1, 2, 3, 4, 5, 6] if variable_length else [6] * 6)
    assert x.reshape(2, -1)[0].tolist() == [0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("case", CASES)
def test_reorder_keeps_the_rows_of_buffer_labels_and_cache(case: str) -> None:
    """Decode 3 rows halfway, keep rows [2, 0, 0], finish: every row's logits equal a fresh decode of the
    sequence it continues (beam search's invariant)."""
    num_classes = 3
    p = make(case, num_classes)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (3, 12), generator=g)
    lab = torch.tensor([0, 1, 2])
    rows = torch.tensor([2, 0, 0])
    with torch.no_grad(), evaluating(p):
        dec = p.decoder(3, lab)
        out = torch.zeros(3, 12, 5)
        half = len(dec.positions) // 2
        for i, pos in enumerate(dec.positions):
            if i == half:
                dec.reorder(rows)
                tokens = tokens[rows]
            out[:, pos] = dec.logits(pos).float()
            dec.accept(pos, tokens[:, pos])
        assert torch.equal(dec.labels, lab[rows]) and torch.equal(dec.x, tokens)
        fresh = teacher_forced(p.decoder(3, lab[rows]), tokens)
    later = torch.tensor(dec.positions[half:])
    torch.testing.assert_close(out[:, later], fresh[:, later], rtol=0, atol=1e-4)


class NoReorderNet(PriorNet):
    """A net with a cache but no ``reorder_cache``: the base class's clear error, not a silent wrong beam."""

    variable_length = True
    supports_cache = True

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        return torch.zeros(*x.shape, self.config.vocab_size)

    def init_cache(self, batch_size: int, device: torch.device) -> dict:
        return {}

    def step(self, cache: dict, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        return torch.zeros(x.shape[0], self.config.vocab_size)


def test_reorder_cache_default_is_a_clear_error() -> None:
    p = build_prior(arch="histogram", vocab_size=3, shape=(2, 2))
    p.net = NoReorderNet(p.config)
    with pytest.raises(NotImplementedError, match="reorder_cache"):
        p.beam_search(beam_size=2)
    tokens, _ = p.beam_search(beam_size=2, use_cache=False)  # the uncached path needs no reorder
    assert tokens.shape == (1, 2, 2)


def test_fit_is_for_counting_priors_only() -> None:
    t = make("transformer")
    assert not t.fitted_by_counting
    with pytest.raises(NotImplementedError, match="gradient descent"):
        t.fit(torch.zeros(4, 3, 4, dtype=torch.long))
    h = build_prior(arch="histogram", vocab_size=3, shape=(2, 2))
    assert h.fitted_by_counting
    h.fit(torch.zeros(5, 2, 2, dtype=torch.long))
    assert (h.sample(3, temperature=0) == 0).all()
    with pytest.raises(ValueError, match="shape"):
        h.fit(torch.zeros(5, 4, dtype=torch.long))  # grids, as everywhere on Prior
    with pytest.raises(ValueError, match="unconditional"):
        h.fit(torch.zeros(5, 2, 2, dtype=torch.long), torch.zeros(5, dtype=torch.long))


def test_check_labels() -> None:
    cpu = torch.device("cpu")
    u = build_prior(arch="histogram", vocab_size=3, shape=(2,))
    c = build_prior(arch="histogram", vocab_size=3, shape=(2,), num_classes=3)
    assert u.check_labels(None, 4, cpu) is None
    with pytest.raises(ValueError, match="unconditional"):
        u.check_labels(torch.tensor([0]), 1, cpu)
    assert u.check_labels(torch.tensor([0, -1]), 2, cpu, unknown=True) is None  # carried, not used
    with pytest.raises(ValueError, match="conditional"):
        c.check_labels(None, 2, cpu)
    with pytest.raises(ValueError, match="integers"):
        c.check_labels(torch.tensor([0.0, 1.0]), 2, cpu)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        c.check_labels(torch.tensor([0, 1]), 3, cpu)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got range \[0, 3\]"):
        c.check_labels(torch.tensor([0, 3]), 2, cpu)
    c.check_labels(torch.tensor([0, 3]), 2, cpu, values=False)  # no range check (no host sync)
    assert c.check_labels(2, 3, cpu).tolist() == [2, 2, 2]
    assert c.check_labels(torch.tensor([1, -1], dtype=torch.int32), 2, cpu, unknown=True).tolist() == [1, 3]
    assert c.check_labels(None, 2, cpu, unknown=True).tolist() == [3, 3]  # the null label
    with pytest.raises(ValueError, match=r"or -1 for unknown"):
        c.check_labels(torch.tensor([-2, 0]), 2, cpu, unknown=True)


def test_evaluating_restores_the_training_flag() -> None:
    p = make("transformer").train()
    with pytest.raises(RuntimeError), evaluating(p):
        assert not p.training
        raise RuntimeError
    assert p.training
    p.sample(1)
    assert p.training


def test_prior_capabilities() -> None:
    w = make("wavenet")
    assert w.receptive_field == w.net.receptive_field and make("transformer").receptive_field is None
    s = make("sparse_transformer")
    assert s.attention_impl == "auto"
    s.attention_impl = "dense"
    assert s.net.impl == "dense" and s.attention_mask_bytes() == s.net.masks.numel() > 0
    t = make("transformer")
    assert t.attention_impl is None and t.attention_mask_bytes() == 0
    with pytest.raises(ValueError, match="sparse_transformer"):
        t.attention_impl = "dense"
