"""Transformer family (dense and sparse): causality, normalisation, KV cache == full forward, cached ==
uncached sampling, save/load, errors, and learning a structured dataset."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prior import Prior, build_prior, load_prior
from prior.transformer import KVCache, TransformerNet

TINY = dict(n_layer=2, n_head=2, d_model=16)
# the dense Transformer and the sparse variants that change the code path: per-head groups (strided),
# one merged head, an odd head count, a fixed pattern with 2 summaries, a stride larger than L
VARIANTS = {
    "transformer": dict(arch="transformer"),
    "strided": dict(arch="sparse_transformer", attention="strided"),
    "strided-1head": dict(arch="sparse_transformer", attention="strided", n_head=1, stride=2),
    "strided-3heads": dict(arch="sparse_transformer", attention="strided", n_head=3, d_model=12, stride=3),
    "fixed": dict(arch="sparse_transformer", attention="fixed", stride=3, summary=2),
    "stride>L": dict(arch="sparse_transformer", attention="strided", stride=50),
}


def make(variant: str, shape: tuple[int, ...] = (3, 4), vocab: int = 5, num_classes: int = 0, **kw) -> Prior:
    """A tiny prior with randomised weights (a fresh init is close to uniform: the checks would be too easy)."""
    torch.manual_seed(0)
    cfg = {**TINY, **VARIANTS[variant], **kw}
    p = build_prior(vocab_size=vocab, shape=shape, num_classes=num_classes, **cfg)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    return p.eval()


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("shape", [(7,), (3, 4)])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_causality_by_perturbation(variant: str, shape: tuple[int, ...], num_classes: int) -> None:
    p = make(variant, shape, num_classes=num_classes)
    L, V = p.config.seq_len, p.vocab_size
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (4, *shape), generator=g)  # four random grids
    lab = torch.randint(0, num_classes + 1, (4,), generator=g) if num_classes else None  # null label too
    with torch.no_grad():
        base = p.net(x.reshape(4, L), lab)
        for i in range(L):
            y = x.clone().reshape(4, L)
            y[:, i] = (y[:, i] + torch.randint(1, V, (4,), generator=g)) % V
            out = p.net(y, lab)
            assert torch.equal(out[:, : i + 1], base[:, : i + 1]), f"token {i} leaked into positions <= {i}"
            if i < L - 1:  # the next position sees token i directly in every variant (its input)
                assert not torch.equal(out[:, i + 1], base[:, i + 1])


@pytest.mark.parametrize("num_classes", [0, 2])
def test_exhaustive_normalisation(variant: str, num_classes: int) -> None:
    p = make(variant, (2, 3), vocab=3, num_classes=num_classes)
    grids = torch.tensor(list(itertools.product(range(3), repeat=6))).reshape(-1, 2, 3)  # all 729 grids
    for label in range(num_classes) if num_classes else [None]:
        lab = None if label is None else torch.full((len(grids),), label)
        with torch.no_grad():
            lp = p.log_prob(grids, lab).double()
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-4
        assert lp.std() > 0.1


@pytest.mark.parametrize("num_classes", [0, 3])
def test_kv_cache_step_equals_forward(variant: str, num_classes: int) -> None:
    p = make(variant, (3, 5), num_classes=num_classes)
    x = torch.randint(0, 5, (4, 15))
    lab = torch.tensor([0, 1, 2, 3]) if num_classes else None  # 3 = the null label
    cache = p.net.init_cache(4, torch.device("cpu"))
    assert all(isinstance(kv, KVCache) and kv.k.shape == (4, p.config.n_head, 15, p.config.d_model // p.config.n_head)
               for kv in cache.layers)  # preallocated for the whole sequence
    with torch.no_grad():
        full = p.net(x, lab)
        for pos in range(15):
            torch.testing.assert_close(p.net.step(cache, x, pos, lab), full[:, pos], rtol=0, atol=1e-5)
        torch.testing.assert_close(p.net(x[:, :6], lab), full[:, :6], rtol=0, atol=1e-5)  # a prefix


def test_step_reads_only_the_previous_token() -> None:
    """step(pos) must not read x[:, pos:] (garbage during sampling)."""
    p = make("transformer", (2, 3))
    x = torch.randint(0, 5, (2, 6))
    c1, c2 = p.net.init_cache(2, torch.device("cpu")), p.net.init_cache(2, torch.device("cpu"))
    with torch.no_grad():
        for pos in range(6):
            garbage = x.clone()
            garbage[:, pos:] = torch.randint(0, 5, (2, 6 - pos))
            assert torch.equal(p.net.step(c1, x, pos, None), p.net.step(c2, garbage, pos, None))
    with pytest.raises(ValueError, match="consecutive"):
        p.net.step(p.net.init_cache(2, torch.device("cpu")), x, 3, None)


@pytest.mark.parametrize("settings", [
    dict(),
    dict(temperature=0.7, top_k=2),
    dict(temperature=1.3, top_p=0.8),
    dict(labels=torch.tensor([0, 2, 1, 0, 2]), cfg_scale=2.0),
    dict(labels=1, cfg_scale=1.5, top_k=3, top_p=0.9, temperature=0.8),
], ids=["plain", "topk", "topp", "cfg", "cfg-topk-topp"])
@pytest.mark.parametrize("v", ["transformer", "strided", "fixed"])
def test_cached_equals_uncached_sampling(v: str, settings: dict) -> None:
    p = make(v, (3, 4), num_classes=3 if "labels" in settings else 0)
    a = p.sample(5, generator=torch.Generator().manual_seed(7), use_cache=True, **settings)
    b = p.sample(5, generator=torch.Generator().manual_seed(7), use_cache=False, **settings)
    assert a.shape == (5, 3, 4) and torch.equal(a, b)
    c = p.sample(5, generator=torch.Generator().manual_seed(8), use_cache=True, **settings)
    assert not torch.equal(a, c)  # the generator matters (the check above is not comparing constants)


def test_coordinate_embeddings() -> None:
    """2-D grids get row + column embeddings (h + w rows), 1-D sequences one per position."""
    p2 = make("transformer", (3, 4))
    assert p2.net.row_embed.num_embeddings == 3 and p2.net.col_embed.num_embeddings == 4
    assert not hasattr(p2.net, "pos_embed")
    assert "rows" not in p2.state_dict() and "net.rows" not in p2.state_dict()  # derivable: non-persistent
    torch.testing.assert_close(p2.net._pos(5, 6), p2.net.row_embed.weight[1:2] + p2.net.col_embed.weight[1:2])
    p1 = make("transformer", (7,))
    assert p1.net.pos_embed.num_embeddings == 7


def test_label_embedding_has_null_row_and_reaches_position_0() -> None:
    p = make("transformer", (2, 3), num_classes=3)
    assert p.net.label_embed.num_embeddings == 4  # + the null label
    x = torch.zeros(1, 6, dtype=torch.long)
    with torch.no_grad():
        outs = [p.net(x, torch.tensor([k]))[:, 0] for k in range(4)]
    assert all(not torch.allclose(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("num_classes", [0, 2])
def test_save_load_round_trip(variant: str, num_classes: int, tmp_path) -> None:
    p = make(variant, (3, 4), num_classes=num_classes)
    p.save_pretrained(tmp_path / "prior")
    q = load_prior(str(tmp_path / "prior"))
    assert q.config == p.config and type(q.net) is type(p.net)
    assert not any("mask" in k for k in q.state_dict())  # masks are derivable, not saved
    x = torch.randint(0, 5, (6, 3, 4))
    lab = torch.randint(0, num_classes, (6,)) if num_classes else None
    with torch.no_grad():
        assert torch.equal(p.log_prob(x, lab), q.log_prob(x, lab))


def test_bad_input_raises(variant: str) -> None:
    p = make(variant, (3, 4))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        p.log_prob(torch.full((2, 3, 4), 5))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        p.log_prob(torch.full((2, 3, 4), -1))
    with pytest.raises(ValueError, match="shape"):
        p.log_prob(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        p.log_prob(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="L'"):
        p.net(torch.zeros(2, 13, dtype=torch.long), None)  # longer than the grid
    with pytest.raises(ValueError, match="conditional"):
        make(variant, (3, 4), num_classes=2).log_prob(torch.zeros(2, 3, 4, dtype=torch.long))


def test_defaults_work_on_the_smallest_grid() -> None:
    for arch in ("transformer", "sparse_transformer"):
        for attention in ("strided", "fixed"):
            p = build_prior(arch=arch, vocab_size=3, shape=(2, 3), attention=attention)
            assert isinstance(p.net, TransformerNet)
            x = p.sample(2)
            assert x.shape == (2, 2, 3) and p.log_prob(x).isfinite().all()


# ---------------------------------------------------------------------------------------------- learning
def progressions(n: int, L: int, V: int, g: torch.Generator) -> torch.Tensor:
    """x_i = (x_0 + i s) mod V with x_0 uniform and s uniform in {1, 3}: every position is marginally uniform
    (log2 V bits/token for the histogram) but x_i is fixed by x_{i-1} and x_{i-2}; ideal 3 / L bits/token."""
    x0 = torch.randint(0, V, (n, 1), generator=g)
    s = 1 + 2 * torch.randint(0, 2, (n, 1), generator=g)
    return (x0 + torch.arange(L) * s) % V


@pytest.mark.parametrize("v", ["transformer", "strided", "fixed"])
def test_learns_well_below_histogram(v: str) -> None:
    shape, V = (4, 4), 4
    g = torch.Generator().manual_seed(0)
    train, test = progressions(2048, 16, V, g).reshape(-1, *shape), progressions(512, 16, V, g).reshape(-1, *shape)
    hist = build_prior(arch="histogram", vocab_size=V, shape=shape)
    hist.net.fit(train.reshape(len(train), -1))

    def bits(p: Prior) -> float:
        with torch.no_grad():
            return -p.log_prob(test).mean().item() / (16 * math.log(2))

    torch.manual_seed(0)
    p = build_prior(vocab_size=V, shape=shape, **{**VARIANTS[v], "n_layer": 2, "n_head": 2, "d_model": 32})
    opt = torch.optim.Adam(p.parameters(), lr=1e-2)
    p.train()
    for _ in range(120):  # converges by ~50 steps
        loss = p.loss(train[torch.randint(0, len(train), (64,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    h, b = bits(hist), bits(p.eval())
    assert h > 1.9  # ~2 bits: the histogram cannot use the rule
    assert b < 0.25 * h, f"{v}: {b:.3f} bits/token vs histogram {h:.3f}"


# ---------------------------------------------------------------------------------------------- decoding fast path
def test_state_dict_keys_unchanged() -> None:
    """Priors saved before the decoding fast path (QKV was always one fused ``attn.qkv``) load as they are: the
    parameter names and shapes are pinned here, and nothing decoding-specific (weight copies, caches) is saved."""
    p = build_prior(arch="transformer", vocab_size=5, shape=(3, 4), n_layer=1, n_head=2, d_model=8, num_classes=2)
    block = {"attn.proj.bias": (8,), "attn.proj.weight": (8, 8), "attn.qkv.bias": (24,), "attn.qkv.weight": (24, 8),
             "ln1.bias": (8,), "ln1.weight": (8,), "ln2.bias": (8,), "ln2.weight": (8,), "mlp.0.bias": (32,),
             "mlp.0.weight": (32, 8), "mlp.2.bias": (8,), "mlp.2.weight": (8, 32)}
    expected = {**{f"net.blocks.0.{k}": s for k, s in block.items()}, "net.col_embed.weight": (4, 8),
                "net.row_embed.weight": (3, 8), "net.head.bias": (5,), "net.head.weight": (5, 8),
                "net.label_embed.weight": (3, 8), "net.ln_f.bias": (8,), "net.ln_f.weight": (8,), "net.start": (8,),
                "net.tok_embed.weight": (5, 8)}
    assert {k: tuple(v.shape) for k, v in p.state_dict().items()} == expected
    p.sample(2, labels=0)  # a sampling call leaves nothing behind in the module
    assert {k: tuple(v.shape) for k, v in p.state_dict().items()} == expected


def test_decoding_follows_parameter_updates() -> None:
    """``init_cache`` snapshots the weights (CPU: transposed copies) per call: after an optimizer step the next
    sampling call decodes with the new weights, so cached still equals uncached."""
    p = make("transformer", (3, 4), num_classes=2)
    before = p.sample(4, labels=1, generator=torch.Generator().manual_seed(3))
    p.train()
    opt = torch.optim.SGD(p.parameters(), lr=1.0)
    p.loss(torch.randint(0, 5, (8, 3, 4)), torch.randint(0, 2, (8,))).backward()
    opt.step()
    p.eval()
    a = p.sample(4, labels=1, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = p.sample(4, labels=1, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b) and not torch.equal(a, before)
    cache = p.net.init_cache(2, torch.device("cpu"))
    w = cache.weights[0].qkv[0]
    assert w.is_contiguous() and w.shape == (16, 48)  # [in, out]: the layout MKL's small-batch GEMM reads fastest
    assert w.data_ptr() != p.net.blocks[0].attn.qkv.weight.data_ptr()


def test_uncopied_decode_weights_give_the_same_steps() -> None:
    """The layout used off CPU (weight^T as views of the parameters, ``copy=False``) decodes like the CPU copies."""
    p = make("transformer", (3, 4), num_classes=2)
    x, lab = torch.randint(0, 5, (3, 12)), torch.tensor([0, 1, 2])
    a, b = p.net.init_cache(3, torch.device("cpu")), p.net.init_cache(3, torch.device("cpu"))
    b.weights = [blk.decode_weights(False) for blk in p.net.blocks]
    assert b.weights[0].qkv[0].data_ptr() == p.net.blocks[0].attn.qkv.weight.data_ptr()  # a view, not a copy
    with torch.no_grad():
        for pos in range(12):
            torch.testing.assert_close(p.net.step(b, x, pos, lab), p.net.step(a, x, pos, lab), rtol=0, atol=1e-5)
