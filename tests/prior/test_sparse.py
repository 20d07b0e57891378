"""Sparse Transformer: the masks against a loop reading of Child et al. 2019 §4.2, the block-friendly
layouts, factorised == flex == dense (the masked reference; attention and whole model, values and gradients),
and KV-cache decoding that follows the pattern, reads only its window and equals the uncached model."""

from __future__ import annotations

import pytest
import torch

from prior import build_prior
from prior.sparse import (
    SparseAttention,
    band_mask,
    fixed_mask,
    fixed_mask_mod,
    local_mask,
    local_mask_mod,
    permuted_stride_mask_mod,
    split_fixed_mask_mod,
    stride_mask,
    stride_mask_mod,
    stride_permutation,
    strided_mask,
    strided_mask_mod,
    summary_positions,
    window,
)


# ---------------------------------------------------------------------------------------------- the paper, as loops
def paper_strided(L: int, l: int) -> tuple[list[list[bool]], list[list[bool]]]:  # noqa: E741
    """§4.2: A(1)_i = {t, t+1, ..., i} for t = max(0, i - l); A(2)_i = {j : (i - j) mod l = 0}, j <= i."""
    a1 = [[False] * L for _ in range(L)]
    a2 = [[False] * L for _ in range(L)]
    for i in range(L):
        t = max(0, i - l)
        for j in range(t, i + 1):
            a1[i][j] = True
        for j in range(0, i + 1):
            if (i - j) % l == 0:
                a2[i][j] = True
    return a1, a2


def paper_fixed(L: int, l: int, c: int) -> list[list[bool]]:  # noqa: E741
    """§4.2: A(1)_i = {j : floor(j/l) = floor(i/l)}, A(2)_i = {j : j mod l in {l-c, ..., l-1}}, with j <= i."""
    m = [[False] * L for _ in range(L)]
    for i in range(L):
        for j in range(L):
            if j > i:
                continue
            same_block = (j // l) == (i // l)
            summary = (j % l) in set(range(l - c, l))
            m[i][j] = same_block or summary
    return m


def from_mod(mod, L: int, Lk: int | None = None) -> torch.Tensor:
    q, kv = torch.arange(L)[:, None], torch.arange(Lk or L)[None, :]
    z = torch.zeros((), dtype=torch.long)
    return mod(z, z, q, kv)


@pytest.mark.parametrize("L,l", [(1, 1), (6, 1), (12, 4), (17, 3), (9, 20), (30, 7)])
def test_strided_masks_match_the_paper(L: int, l: int) -> None:  # noqa: E741
    a1, a2 = paper_strided(L, l)
    a1, a2 = torch.tensor(a1), torch.tensor(a2)
    assert torch.equal(local_mask(L, l), a1)
    assert torch.equal(stride_mask(L, l), a2)
    assert torch.equal(strided_mask(L, l), a1 | a2)
    assert torch.equal(from_mod(local_mask_mod(l), L), a1)
    assert torch.equal(from_mod(stride_mask_mod(l), L), a2)
    assert torch.equal(from_mod(strided_mask_mod(l), L), a1 | a2)


@pytest.mark.parametrize("L,l,c", [(1, 1, 1), (12, 4, 1), (12, 4, 2), (17, 5, 3), (9, 20, 1), (30, 6, 6)])
def test_fixed_mask_matches_the_paper(L: int, l: int, c: int) -> None:  # noqa: E741
    ref = torch.tensor(paper_fixed(L, l, c))
    assert torch.equal(fixed_mask(L, l, c), ref)
    assert torch.equal(from_mod(fixed_mask_mod(l, c), L), ref)


@pytest.mark.parametrize("L,l", [(12, 4), (17, 3), (9, 20), (40, 6)])
def test_stride_permutation_makes_the_pattern_local(L: int, l: int) -> None:  # noqa: E741
    perm = stride_permutation(L, l)
    assert sorted(perm.tolist()) == list(range(L))
    permuted = stride_mask(L, l)[perm][:, perm]
    assert torch.equal(from_mod(permuted_stride_mask_mod(L, l), L), permuted)
    # block-diagonal and causal: every allowed (a, b) has b <= a and no allowed pair straddles a segment start
    seg = perm % l
    a, b = torch.nonzero(permuted, as_tuple=True)
    assert (b <= a).all() and (seg[a] == seg[b]).all()
    assert torch.equal(seg, seg.sort().values)  # segments are contiguous


@pytest.mark.parametrize("L,l,c", [(12, 4, 1), (17, 5, 3), (9, 20, 1), (30, 6, 6)])
def test_split_fixed_layout_is_a_disjoint_union(L: int, l: int, c: int) -> None:  # noqa: E741
    S = summary_positions(L, l, c)
    split = from_mod(split_fixed_mask_mod(L, l, c), L, L + len(S))  # [L, L + S]
    folded = torch.zeros(L, L, dtype=torch.long)
    folded += split[:, :L].long()
    folded.index_add_(1, S, split[:, L:].long())
    assert folded.max() <= 1  # no key counted twice
    assert torch.equal(folded.bool(), fixed_mask(L, l, c))


# ---------------------------------------------------------------------------------------------- flex == dense
CASES = [("strided", 2, 4, 1), ("strided", 1, 3, 1), ("strided", 3, 5, 1), ("fixed", 2, 4, 1), ("fixed", 2, 8, 3),
         ("strided", 2, 400, 1), ("fixed", 2, 400, 1)]


@pytest.mark.parametrize("attention,H,l,c", CASES)
@pytest.mark.parametrize("n", [12, 300])  # 300: several 128-tiles, not a multiple of 128
def test_flex_equals_dense_attention(attention: str, H: int, l: int, c: int, n: int) -> None:  # noqa: E741
    """Eager flex (the CPU reference of the fused kernel) on the block-friendly layouts == the dense mask.
    Forward only: FlexAttention has no backward on CPU in torch 2.14 (NotImplementedError); the backward is
    exercised by bench/sparse_attention.py on CUDA."""
    torch.manual_seed(0)
    sa = SparseAttention(H, attention, l, c)
    q, k, v = (torch.randn(2, H, n, 8) for _ in range(3))
    out_d = sa.dense(q, k, v, sa.masks(n))
    out_f = sa.flex(q, k, v, compiled=False)
    assert (out_d - out_f).abs().max().item() < 1e-4


@pytest.mark.parametrize("attention", ["strided", "fixed"])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_flex_equals_dense_model(attention: str, num_classes: int) -> None:
    torch.manual_seed(0)
    p = build_prior(arch="sparse_transformer", vocab_size=6, shape=(5, 7), attention=attention, n_layer=2,
                    n_head=2, d_model=16, stride=3, num_classes=num_classes).eval()
    x = torch.randint(0, 6, (3, 5, 7))
    lab = torch.tensor([0, 1, 1]) if num_classes else None
    net_lab = torch.tensor([0, 1, 2]) if num_classes else None  # the net also takes the null label
    assert p.net.resolved_impl() == "dense"  # auto on CPU, short sequence
    with torch.no_grad():
        p.net.impl = "dense"
        dense = p.log_prob(x, lab)
        p.net.impl = "flex_eager"
        flex = p.log_prob(x, lab)
        flex_prefix = p.net(x.reshape(3, -1)[:, :9], net_lab)  # variable length: block masks per length
        p.net.impl = "dense"
        dense_prefix = p.net(x.reshape(3, -1)[:, :9], net_lab)
    assert (dense - flex).abs().max().item() < 1e-4
    assert (dense_prefix - flex_prefix).abs().max().item() < 1e-4


def test_block_friendly_layout_skips_tiles() -> None:
    """FlexAttention skips fully masked 128x128 tiles: the transposed stride layout and the split fixed layout
    leave far fewer live tiles than the same patterns in raster order (which are no sparser than causal)."""
    from torch.nn.attention.flex_attention import create_block_mask

    L, l = 2048, 32  # noqa: E741

    def live(mod, Lk: int = L) -> int:
        bm = create_block_mask(mod, None, None, L, Lk, device="cpu")  # live = partial + full tiles
        return int(bm.kv_num_blocks.sum()) + (int(bm.full_kv_num_blocks.sum()) if bm.full_kv_num_blocks is not None else 0)

    causal = live(lambda b, h, q, kv: kv <= q)
    assert live(stride_mask_mod(l)) == causal  # raster order: every tile has a live entry
    assert live(fixed_mask_mod(l, 1)) == causal
    rows = L // 128  # 16 query tiles; causal has 16 * 17 / 2 = 136 live tiles
    assert causal == rows * (rows + 1) // 2
    assert live(local_mask_mod(l)) <= 2 * rows  # the band: diagonal tile + the one before
    assert live(permuted_stride_mask_mod(L, l)) <= 2 * rows  # segments of L / l = 64: the diagonal tiles
    # the diagonal blocks of l + one tile holding all L c / l = 64 summaries
    assert live(split_fixed_mask_mod(L, l, 1), L + len(summary_positions(L, l, 1))) <= 2 * rows


# ---------------------------------------------------------------------------------------------- factorised == dense
def test_band_mask_is_the_local_pattern() -> None:
    """Block b's queries against keys [block b - 1; block b] under ``band_mask`` == ``local_mask`` (blocks of l)."""
    l, nb = 4, 3  # noqa: E741
    L = l * nb
    folded = torch.zeros(L, L, dtype=torch.bool)
    for b, m in enumerate(band_mask(nb, l)):
        for s, t in torch.nonzero(m).tolist():
            folded[b * l + s, (b - 1) * l + t] = True
    assert torch.equal(folded, local_mask(L, l))


FACTORISED = [("strided", 2, 4, 1), ("strided", 1, 3, 1), ("strided", 1, 1, 1), ("strided", 3, 5, 1),
              ("fixed", 2, 4, 1), ("fixed", 1, 5, 3), ("fixed", 2, 3, 3), ("fixed", 1, 1, 1),
              ("strided", 2, 50, 1), ("strided", 1, 50, 1), ("fixed", 1, 50, 2)]


@pytest.mark.parametrize("attention,H,l,c", FACTORISED)
def test_factorised_equals_dense_attention(attention: str, H: int, l: int, c: int) -> None:  # noqa: E741
    """Values and gradients (q, k, v) to 1e-5 in fp32, for lengths that are and are not multiples of the stride
    (1, n < l, one block plus one, odd lengths)."""
    torch.manual_seed(0)
    sa = SparseAttention(H, attention, l, c)
    for n in (1, 2, l, l + 1, 2 * l, 3 * l + 2, 37):
        q, k, v = (torch.randn(2, H, n, 8, requires_grad=True) for _ in range(3))
        grad = torch.randn(2, H, n, 8)
        ref = sa.dense(q, k, v, sa.masks(n))
        out = sa.factorised(q, k, v)
        ref_g = torch.autograd.grad(ref, (q, k, v), grad)
        out_g = torch.autograd.grad(out, (q, k, v), grad)
        assert (ref - out).abs().max().item() < 1e-5, n
        for a, b in zip(ref_g, out_g):
            assert (a - b).abs().max().item() < 1e-5, n


@pytest.mark.parametrize("attention,H", [("strided", 2), ("strided", 1), ("fixed", 2)])
def test_factorised_equals_dense_model(attention: str, H: int) -> None:
    """The whole prior: loss and every parameter's gradient, full length 35 (not a multiple of l = 4) and a prefix."""
    torch.manual_seed(0)
    p = build_prior(arch="sparse_transformer", vocab_size=6, shape=(35,), attention=attention, n_layer=2, n_head=H,
                    d_model=16, stride=4, summary=2)
    x = torch.randint(0, 6, (2, 35))
    results = {}
    for impl in ("dense", "factorised"):
        p.net.impl = impl
        p.zero_grad()
        loss = p.loss(x)
        loss.backward()
        with torch.no_grad():
            prefix = p.net(x[:, :13], None)
        results[impl] = (loss.detach(), prefix, [q.grad.clone() for q in p.parameters()])
    (l_d, pre_d, g_d), (l_f, pre_f, g_f) = results["dense"], results["factorised"]
    assert abs(l_d.item() - l_f.item()) < 1e-5
    assert (pre_d - pre_f).abs().max().item() < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(g_d, g_f)) < 1e-5


def test_factorised_builds_no_dense_mask() -> None:
    """The factorised path never touches the O(L^2) reference masks."""
    p = build_prior(arch="sparse_transformer", vocab_size=5, shape=(64,), n_layer=1, n_head=2, d_model=8)
    p.net.impl = "factorised"
    p.loss(torch.randint(0, 5, (1, 64))).backward()
    assert p.net._dense_masks is None


# ---------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("kind", ["local", "stride", "strided", "fixed"])
@pytest.mark.parametrize("l,c", [(4, 1), (5, 2), (3, 3)])
def test_window_is_the_mask_row(kind: str, l: int, c: int) -> None:  # noqa: E741
    """``window`` gathers exactly the positions of mask row ``pos``, each once, and O(l + pos / l) of them."""
    L = 31
    mask = {"local": local_mask(L, l), "stride": stride_mask(L, l), "strided": strided_mask(L, l),
            "fixed": fixed_mask(L, l, c)}[kind]
    idx = torch.arange(L, dtype=torch.float32)[None, None, :, None]  # a "cache" whose rows hold their position
    for pos in range(L):
        got = window(kind, idx, pos, l, c).flatten().long()
        assert sorted(got.tolist()) == torch.nonzero(mask[pos]).flatten().tolist(), pos
        assert len(got) <= l + 1 + (pos // l + 1) * (c if kind == "fixed" else 1)


@pytest.mark.parametrize("attention,H,l,c", [("strided", 2, 4, 1), ("strided", 1, 3, 1), ("strided", 3, 5, 1),
                                              ("fixed", 2, 4, 2), ("fixed", 1, 3, 1)])
def test_cached_sampling_equals_uncached(attention: str, H: int, l: int, c: int) -> None:  # noqa: E741
    """KV-cache steps == the full forward at every position, and sampling with and without the cache gives the
    same tokens (length 23: not a multiple of l)."""
    torch.manual_seed(0)
    p = build_prior(arch="sparse_transformer", vocab_size=5, shape=(23,), attention=attention, n_layer=2, n_head=H,
                    d_model=4 * H, stride=l, summary=c, num_classes=2).eval()
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.3)
        x = torch.randint(0, 5, (3, 23))
        lab = torch.tensor([0, 1, 2])
        full = p.net(x, lab)
        cache = p.net.init_cache(3, torch.device("cpu"))
        steps = torch.stack([p.net.step(cache, x, pos, lab) for pos in range(23)], 1)
    assert (full - steps).abs().max().item() < 1e-5
    a = p.sample(4, labels=1, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = p.sample(4, labels=1, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- the model
def test_bad_impl_raises() -> None:
    p = build_prior(arch="sparse_transformer", vocab_size=3, shape=(2, 3), n_head=2, d_model=8)
    p.net.impl = "triton"
    with pytest.raises(ValueError, match="impl"):
        p.log_prob(torch.zeros(1, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("attention,H", [("strided", 2), ("strided", 1), ("fixed", 2)])
def test_one_layer_sees_exactly_its_mask_row(attention: str, H: int) -> None:
    """With one layer, the logits at i depend on x[j - 1] (the input at j) only if some head's mask lets i
    attend to j: checked on the full forward and on KV-cache decoding (which must use the mask row)."""
    torch.manual_seed(0)
    p = build_prior(arch="sparse_transformer", vocab_size=5, shape=(4, 5), attention=attention, n_layer=1,
                    n_head=H, d_model=8, stride=3, summary=1).eval()
    L = 20
    allowed = p.net.masks.any(0)  # [L, L]: union over heads
    x = torch.randint(0, 5, (2, L))

    def decode(y: torch.Tensor) -> torch.Tensor:
        cache = p.net.init_cache(2, torch.device("cpu"))
        return torch.stack([p.net.step(cache, y, pos, None) for pos in range(L)], 1)

    with torch.no_grad():
        base, base_step = p.net(x, None), decode(x)
        for j in range(1, L):  # the input at position j is x[j - 1]
            y = x.clone()
            y[:, j - 1] = (y[:, j - 1] + 1) % 5
            changed = (p.net(y, None) != base).any(-1).any(0)  # [L]
            changed_step = (decode(y) != base_step).any(-1).any(0)
            assert torch.equal(changed, allowed[:, j]), f"input {j}"
            assert torch.equal(changed_step, allowed[:, j]), f"input {j} (cached)"


def test_masks_are_built_on_demand_and_not_saved() -> None:
    p = build_prior(arch="sparse_transformer", vocab_size=3, shape=(4, 4), n_head=2, d_model=8)
    assert not any("mask" in k for k in p.state_dict()) and not any("mask" in k for k, _ in p.named_buffers())
    assert p.net._dense_masks is None
    assert p.net.masks.shape == (2, 16, 16) and p.net.masks.dtype == torch.bool
    assert torch.equal(p.net.masks[0], local_mask(16, 4)) and torch.equal(p.net.masks[1], stride_mask(16, 4))


def test_auto_picks_factorised_for_long_sequences_on_cpu() -> None:
    from prior.sparse import FACTORISED_MIN_LEN

    long = build_prior(arch="sparse_transformer", vocab_size=4, shape=(FACTORISED_MIN_LEN,), n_layer=1, n_head=2,
                       d_model=8)
    short = build_prior(arch="sparse_transformer", vocab_size=4, shape=(FACTORISED_MIN_LEN - 1,), n_layer=1, n_head=2,
                        d_model=8)
    assert (long.net.resolved_impl(), short.net.resolved_impl()) == ("factorised", "dense")
