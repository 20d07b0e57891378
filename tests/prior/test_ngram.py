"""The count-based n-gram prior: hand-computed smoothed counts, back-off, templates, exact cached steps,
save/load of the fitted tables, labels, and held-out NLL on binarised MNIST against the histogram."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from prior import build_prior, load_prior
from prior import ngram as ngram_module
from prior.ngram import JBIG_TEMPLATE, parent_sources

# three length-4 binary sequences; with order 1 the (parent -> token) counts are
#   after pad (position 0): 0 x2, 1 x1;   after 0: 0 x1, 1 x2;   after 1: 0 x2, 1 x4;   unigram: 0 x5, 1 x7
SEQS = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]])
QUERY = torch.tensor([[0, 1, 0, 0]])  # contexts pad, 0, 1, 0


def fitted(x: torch.Tensor, labels: torch.Tensor | None = None, **kw) -> torch.nn.Module:
    kw = {"vocab_size": 2, "shape": tuple(x.shape[1:]), **kw}
    p = build_prior(arch="ngram", **kw)
    p.net.fit(x.reshape(len(x), -1), labels)
    return p.eval()


def probs(p, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(p(x, labels).double(), -1)


def test_add_alpha_matches_hand_counts() -> None:
    p = fitted(SEQS, ngram_order=1, ngram_smoothing="add_alpha", ngram_alpha=0.5)
    after = {"pad": [2.5 / 4, 1.5 / 4], 0: [1.5 / 4, 2.5 / 4], 1: [2.5 / 7, 4.5 / 7]}  # (count + 0.5) / (n + 1)
    want = torch.tensor([after["pad"], after[0], after[1], after[0]], dtype=torch.float64)
    torch.testing.assert_close(probs(p, QUERY)[0], want, rtol=1e-6, atol=1e-7)


def test_kneser_ney_matches_hand_counts() -> None:
    """D = 0.5. Level 0 uses continuation counts: 0 and 1 each follow 3 distinct parents (pad, 0, 1), so
    p0 = 2.5/6 + (0.5 * 2/6) / 2 = 1/2. Level 1 (raw counts): p(x|c) = max(c_x - D, 0)/n + D t/n p0(x)."""
    p = fitted(SEQS, ngram_order=1, ngram_smoothing="kneser_ney", ngram_discount=0.5)
    kn = lambda c: [max(ci - 0.5, 0) / sum(c) + 0.5 * 2 / sum(c) * 0.5 for ci in c]  # noqa: E731
    want = torch.tensor([kn([2, 1]), kn([1, 2]), kn([2, 4]), kn([1, 2])], dtype=torch.float64)
    torch.testing.assert_close(probs(p, QUERY)[0], want, rtol=1e-6, atol=1e-7)
    assert p.net.cnt_0.tolist() == [3.0, 3.0]  # the continuation counts


def test_witten_bell_matches_hand_counts() -> None:
    """p0 = (c + t u) / (n + t) = (5 + 1, 7 + 1) / 14; p(x|c) = (c_x + t p0(x)) / (n + t)."""
    p = fitted(SEQS, ngram_order=1, ngram_smoothing="witten_bell")
    p0 = [6 / 14, 8 / 14]
    wb = lambda c: [(ci + 2 * p0[k]) / (sum(c) + 2) for k, ci in enumerate(c)]  # noqa: E731
    want = torch.tensor([wb([2, 1]), wb([1, 2]), wb([2, 4]), wb([1, 2])], dtype=torch.float64)
    torch.testing.assert_close(probs(p, QUERY)[0], want, rtol=1e-6, atol=1e-7)


def test_unseen_context_backs_off_to_the_shorter_one() -> None:
    """Order 2: the context (previous 0, one before 1) never occurs in SEQS, so position 2 of [1, 0, x, .]
    gets the order-1 distribution after 0 (Witten-Bell: the same raw counts at level 1)."""
    q = torch.tensor([[1, 0, 1, 1]])
    two = fitted(SEQS, ngram_order=2, ngram_smoothing="witten_bell")
    one = fitted(SEQS, ngram_order=1, ngram_smoothing="witten_bell")
    torch.testing.assert_close(probs(two, q)[0, 2], probs(one, q)[0, 2], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(probs(two, q)[0, 3], probs(one, q)[0, 3])  # (1, 0) was seen: its own counts
    # Kneser-Ney, order 3: at position 3 the contexts (x2, x1, x0) = (0, 0, 1) and (0, 0, 0) never occur but
    # (0, 0) does: both get p_2(. | 0, 0); (1, 0, 0) occurs, (1, 0, 1) does not: they differ
    kn = fitted(SEQS, ngram_order=3, ngram_smoothing="kneser_ney")
    at3 = lambda seq: probs(kn, torch.tensor([seq]))[0, 3]  # noqa: E731
    assert torch.equal(at3([1, 0, 0, 1]), at3([0, 0, 0, 1]))
    assert not torch.allclose(at3([0, 0, 1, 1]), at3([1, 0, 1, 1]))


def test_unfitted_is_uniform_and_fit_validates() -> None:
    p = build_prior(arch="ngram", vocab_size=5, shape=(3, 4)).eval()
    x = torch.randint(0, 5, (2, 3, 4))
    torch.testing.assert_close(probs(p, x), torch.full((2, 3, 4, 5), 0.2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[N, 12\]"):
        p.net.fit(torch.zeros(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        p.net.fit(torch.full((2, 12), 5))
    with pytest.raises(ValueError, match="ngram_template"):
        build_prior(arch="ngram", ngram_template="diamond")
    with pytest.raises(ValueError, match="ngram_order"):
        build_prior(arch="ngram", shape=(4, 4), ngram_order=15)


# ---------------------------------------------------------------------------------------------- templates
def test_jbig_template_reads_the_causal_neighbourhood() -> None:
    cfg = build_prior(arch="ngram", vocab_size=3, shape=(4, 5), ngram_order=14).config
    src = parent_sources(cfg)  # [14, 20]
    y, x = 2, 2
    want = [(y + dy) * 5 + (x + dx) for dy, dx in JBIG_TEMPLATE]
    want = [w if 0 <= y + dy and 0 <= x + dx < 5 else -1
            for w, (dy, dx) in zip(want, JBIG_TEMPLATE)]
    assert src[:, y * 5 + x].tolist() == want
    assert src[:4, 0].tolist() == [-1, -1, -1, -1]  # the top-left corner has no parents
    assert src[:4, 9].tolist() == [8, 4, 3, -1]  # right edge: no above-right
    assert src[:4, 5].tolist() == [-1, 0, -1, 1]  # left edge: no left, no above-left
    assert all(((src[:, i] < i) | (src[:, i] == -1)).all() for i in range(20))  # causal
    raster = parent_sources(build_prior(arch="ngram", vocab_size=3, shape=(4, 5), ngram_order=3,
                                        ngram_template="raster").config)
    assert raster[:, 5].tolist() == [4, 3, 2]  # raster order runs across rows


CONFIGS = [
    dict(shape=(9,), ngram_order=3),
    dict(shape=(4, 5), ngram_order=10),
    dict(shape=(4, 5), ngram_order=4, ngram_template="raster", ngram_smoothing="witten_bell"),
    dict(shape=(4, 5), ngram_order=5, ngram_position=True, ngram_smoothing="add_alpha"),
]


def random_fit(num_classes: int = 0, vocab: int = 4, **kw):
    g = torch.Generator().manual_seed(0)
    p = build_prior(arch="ngram", vocab_size=vocab, num_classes=num_classes, **kw)
    x = torch.minimum(*torch.randint(0, vocab, (2, 64, p.config.seq_len), generator=g))
    p.net.fit(x, torch.randint(0, num_classes, (64,), generator=g) if num_classes else None)
    q = torch.randint(0, vocab, (6, *p.shape), generator=g)
    lab = torch.randint(0, num_classes, (6,), generator=g) if num_classes else None
    return p.eval(), q, lab


@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("kw", CONFIGS, ids=["1d", "jbig", "raster-wb", "pos-addalpha"])
def test_causal_normalised_and_cached_step_equals_forward(kw: dict, num_classes: int) -> None:
    p, x, lab = random_fit(num_classes, **kw)
    L, V = p.config.seq_len, p.vocab_size
    with torch.no_grad():
        full = p(x, lab).reshape(6, L, V)
        torch.testing.assert_close(full.double().exp().sum(-1), torch.ones(6, L, dtype=torch.float64))
        flat = x.reshape(6, L)
        cache = p.net.init_cache(6, torch.device("cpu"))
        steps = torch.stack([p.net.step(cache, flat, i, lab) for i in range(L)], 1)
        assert torch.equal(steps, full)  # bit for bit
        for i in (0, L // 2, L - 2):
            y = flat.clone()
            y[:, i + 1:] = (y[:, i + 1:] + 1) % V
            out = p(y.reshape(x.shape), lab).reshape(6, L, V)
            assert torch.equal(out[:, : i + 1], full[:, : i + 1])
        prefix = p.net(flat[:, :7], lab)
        assert torch.equal(prefix, full[:, :7])


@pytest.mark.parametrize("kw", [dict(ngram_order=5), dict(ngram_order=2, ngram_template="raster", ngram_position=True,
                                                     ngram_smoothing="witten_bell"),
                                dict(ngram_order=4, ngram_smoothing="add_alpha")], ids=["kn", "wb-pos", "addalpha"])
def test_exhaustive_normalisation(kw: dict) -> None:
    """sum over all 3**6 grids of p(grid | label) == 1, for each label and the null label."""
    p, _, _ = random_fit(2, vocab=3, shape=(2, 3), **kw)
    grids = torch.tensor(list(itertools.product(range(3), repeat=6))).reshape(-1, 2, 3)
    for label in (0, 1, 2):
        with torch.no_grad():
            lp = p.log_prob(grids, torch.full((len(grids),), label)) if label < 2 else \
                p.net(grids.reshape(-1, 6), torch.full((len(grids),), 2)).log_softmax(-1).gather(
                    -1, grids.reshape(-1, 6, 1)).squeeze(-1).sum(1)
        assert abs(torch.logsumexp(lp.double(), 0).item()) < 1e-5, (kw, label)
        assert lp.std() > 0.1


@pytest.mark.parametrize("kw", CONFIGS[:2], ids=["1d", "jbig"])
def test_cached_sampling_equals_uncached(kw: dict) -> None:
    p, _, _ = random_fit(3, **kw)
    for settings in (dict(labels=1), dict(labels=torch.tensor([0, 2, 1, 0]), cfg_scale=2.0, top_k=3)):
        a = p.sample(4, generator=torch.Generator().manual_seed(3), use_cache=True, **settings)
        b = p.sample(4, generator=torch.Generator().manual_seed(3), use_cache=False, **settings)
        assert torch.equal(a, b)


def test_sparse_table_path_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large levels are read from the CSR arrays rather than a dense [contexts, V] table: same numbers."""
    p, x, lab = random_fit(3, **CONFIGS[1])
    with torch.no_grad():
        dense = p(x, lab)
        monkeypatch.setattr(ngram_module, "DENSE_LIMIT", 0)
        torch.testing.assert_close(p(x, lab), dense, rtol=1e-6, atol=1e-6)


def test_large_vocabulary_keeps_memory_to_the_observed_contexts() -> None:
    """V = 20,000 and order 4: V**4 contexts are possible, only the observed ones are stored."""
    V = 20_000
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (40, 32), generator=g)
    p = build_prior(arch="ngram", vocab_size=V, shape=(32,), ngram_order=4)
    p.net.fit(x)
    stored = sum(t.numel() for t in p.net.state_dict().values())
    assert stored < 40 * 32 * 5 * 5  # a few entries per (position, level)
    with torch.no_grad():
        logits = p(x[:2])
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(torch.softmax(logits.double(), -1).sum(-1), torch.ones(2, 32, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("num_classes", [0, 3])
def test_save_load_round_trip_keeps_the_tables(num_classes: int, tmp_path) -> None:
    p, x, lab = random_fit(num_classes, **CONFIGS[1])
    p.save_pretrained(tmp_path / "prior")
    q = load_prior(str(tmp_path / "prior"))
    assert q.config == p.config
    with torch.no_grad():
        assert torch.equal(q.log_prob(x, lab), p.log_prob(x, lab))
        assert torch.equal(q(x, lab), p(x, lab))
    assert p.net.ctx_5.numel() > 1 and q.net.ctx_5.shape == p.net.ctx_5.shape
    # an unfitted prior round-trips too (empty tables), and a loaded one can be refitted
    empty = build_prior(p.config)
    empty.save_pretrained(tmp_path / "empty")
    e = load_prior(str(tmp_path / "empty"))
    with torch.no_grad():
        assert torch.allclose(e(x, lab).exp(), torch.full_like(e(x, lab), 0.25))
    q.net.fit(x.reshape(6, -1), lab)


# ---------------------------------------------------------------------------------------------- labels
def test_conditional_null_label_is_the_unconditional_model() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (80,), generator=g)
    x = torch.randint(0, 3, (80, 3, 4), generator=g)
    x[labels == 1] = torch.minimum(x[labels == 1], torch.ones_like(x[labels == 1]))  # class 1 never uses token 2
    for smoothing in ("kneser_ney", "witten_bell", "add_alpha"):
        kw = dict(vocab_size=3, ngram_order=3, ngram_smoothing=smoothing)
        cond, uncond = fitted(x, labels, num_classes=2, **kw), fitted(x, **kw)
        with torch.no_grad():
            null = cond.net(x.reshape(80, -1), torch.full((80,), 2))
            assert torch.equal(null, uncond.net(x.reshape(80, -1), None)), smoothing
            ones = x[labels == 1]
            lp1 = cond.log_prob(ones, torch.ones(len(ones), dtype=torch.long))
            lp0 = cond.log_prob(ones, torch.zeros(len(ones), dtype=torch.long))
            assert lp1.mean() > uncond.log_prob(ones).mean() and lp1.mean() > lp0.mean(), smoothing
    s = cond.sample(6, labels=1, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert int(s.max()) <= 1
    # fitted without labels: every label backs off to the unconditional counts
    nolab = fitted(x, None, num_classes=2, vocab_size=3, ngram_order=3)
    with torch.no_grad():
        assert torch.equal(nolab(x, labels), fitted(x, vocab_size=3, ngram_order=3)(x))


# ---------------------------------------------------------------------------------------------- data
def test_one_dimensional_sequences_are_learned() -> None:
    """x_t = (x_{t-1} + x_{t-2}) mod 5: determined by the two previous tokens."""
    g = torch.Generator().manual_seed(0)
    seq = torch.zeros(600, 24, dtype=torch.long)
    seq[:, :2] = torch.randint(0, 5, (600, 2), generator=g)
    for t in range(2, 24):
        seq[:, t] = (seq[:, t - 1] + seq[:, t - 2]) % 5
    p = fitted(seq[:500], vocab_size=5, ngram_order=2)
    with torch.no_grad():
        nll = -p.log_prob(seq[500:]).mean().item()
    assert nll < 2 * math.log(5) + 0.5, nll  # the two free tokens, then (almost) nothing


def test_binarised_mnist_beats_the_histogram() -> None:
    from pipelines.data import DataSpec, load_data
    from tokenizers_vq import quantize_raw

    splits = load_data(DataSpec("mnist5k"))
    xs, ys = splits.train.tensors
    perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(0))[:300]
    train, train_labels = quantize_raw(xs[perm], levels=2), ys[perm]
    test_x, test_y = splits.test.tensors
    test, test_labels = quantize_raw(test_x[:200], levels=2), test_y[:200]
    shape, n = tuple(train.shape[1:]), len(train)

    def nll(arch: str, labels: bool = False, **kw) -> tuple[float, float]:
        p = build_prior(arch=arch, vocab_size=2, shape=shape, num_classes=10 if labels else 0, **kw)
        t = time.perf_counter()
        p.net.fit(train.reshape(n, -1), train_labels if labels else None)
        fit_s = time.perf_counter() - t
        with torch.no_grad():
            return -p.log_prob(test, test_labels if labels else None).mean().item(), fit_s

    hist, _ = nll("histogram")
    jbig, fit_s = nll("ngram", ngram_order=10)
    msg = (f"nats/digit on {len(test)} held-out digits ({n} train, {shape}): histogram {hist:.1f}, "
           f"ngram jbig-10 {jbig:.1f} (fit {fit_s:.2f}s)")
    assert jbig < 0.6 * hist, msg
    assert fit_s < 5, msg
    print(msg)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("kw", CONFIGS, ids=["1d", "jbig", "raster-wb", "pos-addalpha"])
def test_sequence_log_prob_reads_forward_at_the_tokens(kw: dict, num_classes: int, dense: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The scoring shortcut (one symbol per position, no [B, L, V] rows) is the sum of forward's conditionals."""
    p, x, lab = random_fit(num_classes, **kw)
    if not dense:
        monkeypatch.setattr(ngram_module, "DENSE_LIMIT", 0)
    flat = x.reshape(6, -1)
    for labels in ([lab, None] if num_classes else [None]):
        net_labels = p.check_labels(labels, 6, "cpu", unknown=True)
        with torch.no_grad():
            fast = p.net.sequence_log_prob(flat, net_labels)
            full = p.net(flat, net_labels).double().gather(-1, flat[..., None]).squeeze(-1).sum(1)
        assert fast.dtype == torch.float64
        torch.testing.assert_close(fast, full, rtol=0, atol=1e-4)  # forward rounds each conditional to float32
        if labels is not None or not num_classes:  # Prior.log_prob wants a conditional prior's labels
            torch.testing.assert_close(p.log_prob(x, labels).double(), fast, rtol=1e-6, atol=1e-6)  # float32 out
