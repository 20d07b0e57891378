"""Sparse Transformer prior (Child et al. 2019, "Generating Long Sequences with Sparse Transformers", §4.2).

The ``TransformerNet`` of ``prior.transformer`` with factorized self-attention. With l = ``config.stride``
and c = ``config.summary``, position i attends to positions j <= i where

* ``"strided"``: half the heads ("local", A(1)) take i - l <= j (the previous l positions and i itself:
  the paper's t = max(0, i - l)), the other half ("stride", A(2)) take
  (i - j) mod l == 0 (multi-head integration, §4.3 option 3). With a single head, that head takes the
  union (the "merged" integration, §4.3 option 2). Two layers connect every j <= i to i.
* ``"fixed"``: every head takes the union of floor(j / l) == floor(i / l) (same block, A(1)) and
  j mod l in {l - c, ..., l - 1} (the last c "summary" positions of each block, A(2)).

The patterns are written as pure functions (``local_mask``, ``stride_mask``, ``strided_mask``,
``fixed_mask``, bool [L, L], True = may attend) and as FlexAttention ``mask_mod`` s. Three execution paths
give the same numbers (tests: values and gradients to 1e-5 in fp32):

* ``"factorised"`` (default off CUDA): O(L sqrt L) work for l ~ sqrt(L), never an L x L tensor. The sequence is
  padded to nb = ceil(L / l) blocks of l (padding sits after every real position, so causality hides it):
    - local heads (``local_attention``): each block against [previous block; itself] (i - j <= l);
    - stride heads (``stride_attention``): the sequence reshaped to (nb, l) and transposed, so each residue
      j mod l is a causal sequence of nb positions (``is_causal`` SDPA);
    - the merged single head (``strided_attention``): one softmax over the band and the stride keys of blocks
      <= b - 2 (i - l and i are in both sets, so they are counted once, in the band);
    - fixed (``fixed_attention``): one softmax over the causal block and the summary columns of earlier blocks.
  On CPU (fp32, no attention dropout) every pattern is a disjoint union of flash-attention calls merged by
  log-sum-exp (``_FlashUnion``, exact backward from the merged out and lse), so it keeps only O(L hd) for
  backward, like dense causal SDPA. Elsewhere (or with dropout) the same decomposition runs as SDPA with small
  [l, 2l] masks (local), keys [block; summaries] per block (fixed) or explicit [L, 2l + L / l] scores (merged).
  Work per layer: local O(L l), stride O(L^2 / l), fixed O(L l + L^2 c / l), against O(L^2) dense.
* ``"dense"``: ``scaled_dot_product_attention`` with the boolean mask [G, L, L] (one per distinct pattern,
  built on first use, not a buffer). The reference the tests compare against; costs as much as dense attention.
* ``"flex"``: ``torch.nn.attention.flex_attention`` with a ``BlockMask``, compiled (``"flex_eager"``: the
  uncompiled reference, which materialises the scores). FlexAttention skips whole 128 x 128 tiles that
  are fully masked, so the layout is chosen to make the pattern block-diagonal where it is not already:
    - local heads: a band of width l along the diagonal, already block-friendly;
    - stride heads: positions are reordered by (i mod l, i) (the "transpose" of the paper's kernels, §5),
      which turns "every l-th earlier position" into causal attention inside contiguous segments of
      ~L/l positions (the output is permuted back);
    - fixed: the keys are [all positions; the summary positions], with disjoint masks: same block and
      causal on the first part, summaries of *earlier* blocks on the second. Both parts are block-sparse
      (the block diagonal, and a causal strip of L c / l keys), whereas in raster layout every 128-key tile
      holds a summary position when l < 128, so no tile could be skipped.

``SparseTransformerNet.impl`` picks the path: ``"auto"`` (default) runs compiled flex on CUDA and, elsewhere, the
factorised path for sequences of ``FACTORISED_MIN_LEN`` positions or more and the dense-masked one below. On CPU (torch 2.14) eager flex is correct but slow (it materialises the scores) and compiled flex
took ~70 s to compile per shape here and has no CPU backward (training on CPU with ``"flex"`` raises); see
``bench/sparse_attention.py`` for factorised vs dense on CPU. Attention dropout is applied on the factorised and
dense paths only (flex has none).

KV-cache decoding (``SparseTransformerNet.step``) reads only each head group's ``window`` of the cache: the band
[pos - l, pos] (a slice) and the stride positions pos mod l, pos mod l + l, ... (a strided slice), i.e.
O(l + pos / l) keys per step, O(window) in the band and O(sqrt L) overall for l ~ sqrt L; fixed reads its block up
to pos plus the c summaries of each earlier block, O(l + pos c / l). The cache itself stays [B, H, L, hd]: the
stride and summary keys are needed until the end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ARCHS, PriorConfig
from .transformer import AttendFn, TransformerConfig, TransformerNet

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (b, h, q_idx, kv_idx) -> bool
FACTORISED_MIN_LEN = 512  # "auto" on CPU: shorter sequences run the dense-masked path (less overhead)
IMPLS = ("auto", "factorised", "dense", "flex", "flex_eager")


# ---------------------------------------------------------------------------------------------- dense masks
def _ij(L: int) -> tuple[Tensor, Tensor]:
    i = torch.arange(L)[:, None]
    return i, torch.arange(L)[None, :]


def local_mask(L: int, stride: int) -> Tensor:
    """bool [L, L]: i attends to j iff 0 <= i - j <= stride (the paper's l: A(1)_i = {max(0, i - l), ..., i})."""
    i, j = _ij(L)
    return (j <= i) & (i - j <= stride)


def stride_mask(L: int, stride: int) -> Tensor:
    """bool [L, L]: i attends to j iff j <= i and (i - j) mod stride == 0 (every stride-th earlier position)."""
    i, j = _ij(L)
    return (j <= i) & ((i - j) % stride == 0)


def strided_mask(L: int, stride: int) -> Tensor:
    """bool [L, L]: the strided pattern as one (merged) head, local | stride (Child et al. §4.2, §4.3)."""
    return local_mask(L, stride) | stride_mask(L, stride)


def fixed_mask(L: int, stride: int, c: int) -> Tensor:
    """bool [L, L]: i attends to j <= i in its own block of ``stride`` positions, or to the last c of any block."""
    i, j = _ij(L)
    return (j <= i) & ((j // stride == i // stride) | (j % stride >= stride - c))


# ---------------------------------------------------------------------------------------------- flex mask_mods
def local_mask_mod(stride: int) -> MaskMod:
    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv <= q) & (q - kv <= stride)
    return mask_mod


def stride_mask_mod(stride: int) -> MaskMod:
    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv <= q) & ((q - kv) % stride == 0)
    return mask_mod


def strided_mask_mod(stride: int) -> MaskMod:
    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv <= q) & ((q - kv <= stride) | ((q - kv) % stride == 0))
    return mask_mod


def fixed_mask_mod(stride: int, c: int) -> MaskMod:
    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv <= q) & ((kv // stride == q // stride) | (kv % stride >= stride - c))
    return mask_mod


# ---------------------------------------------------------------------------------------------- block-friendly layouts
def stride_permutation(L: int, stride: int) -> Tensor:
    """int64 [L]: positions sorted by (i mod stride, i). In this order the stride pattern is causal attention within
    contiguous segments (one per residue), i.e. a block-diagonal layout FlexAttention can skip around."""
    i = torch.arange(L)
    return torch.argsort((i % stride) * L + i)


def permuted_stride_mask_mod(L: int, stride: int, device: torch.device | str = "cpu") -> MaskMod:
    """The stride pattern in the ``stride_permutation`` layout: same residue segment and kv <= q."""
    seg = (stride_permutation(L, stride) % stride).to(device)  # segment (residue) of each permuted index

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (seg[q] == seg[kv]) & (kv <= q)
    return mask_mod


def summary_positions(L: int, stride: int, c: int) -> Tensor:
    """int64 [S]: the positions j < L with j mod stride >= stride - c (the last c of each block)."""
    j = torch.arange(L)
    return j[j % stride >= stride - c]


def split_fixed_mask_mod(L: int, stride: int, c: int, device: torch.device | str = "cpu") -> MaskMod:
    """The fixed pattern over the concatenated keys [positions 0..L-1; summary_positions(L, stride, c)]:
    first part same block and causal, second part summaries of earlier blocks only (disjoint union)."""
    S = summary_positions(L, stride, c)
    key_pos = torch.cat([torch.arange(L), S]).to(device)
    is_summary = torch.cat([torch.zeros(L, dtype=torch.bool), torch.ones(len(S), dtype=torch.bool)]).to(device)

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        p = key_pos[kv]
        same = (p // stride == q // stride) & (p <= q)
        return torch.where(is_summary[kv], p // stride < q // stride, same)
    return mask_mod


# ---------------------------------------------------------------------------------------------- factorised (O(L sqrt L))
def _blocks(x: Tensor, l: int) -> Tensor:  # noqa: E741
    """float [BH, n, hd] -> [BH, nb, l, hd], zero-padded to nb = ceil(n / l) blocks of l positions."""
    BH, n, hd = x.shape
    nb = -(-n // l)
    return (F.pad(x, (0, 0, 0, nb * l - n)) if nb * l > n else x).reshape(BH, nb, l, hd)


def _with_previous(xb: Tensor) -> Tensor:
    """[BH, nb, l, hd] -> [BH, nb, 2l, hd]: each block preceded by the block before it (zeros before block 0)."""
    return torch.cat([F.pad(xb[:, :-1], (0, 0, 0, 0, 1, 0)), xb], 2)


def band_mask(nb: int, l: int, device: torch.device | str = "cpu") -> Tensor:  # noqa: E741
    """bool [nb, l, 2l]: query s of block b may attend key t of [block b - 1; block b] iff 0 <= i - j <= l, i.e.
    s <= t <= s + l (t < l does not exist for block 0)."""
    s, t = torch.arange(l, device=device)[:, None], torch.arange(2 * l, device=device)[None, :]
    m = ((t >= s) & (t <= s + l)).expand(nb, l, 2 * l).clone()
    m[0, :, :l] = False
    return m


def local_attention(q: Tensor, k: Tensor, v: Tensor, l: int, dropout_p: float = 0.0) -> Tensor:  # noqa: E741
    """The ``local_mask`` pattern in O(n l): q, k, v float [BH, n, hd] -> [BH, n, hd]. Each block of l queries attends
    to its own block and the previous one (2l keys) under ``band_mask``."""
    if _flash_union_ok(q, dropout_p):
        return _union(q, k, v, l, lambda nb: _band_parts(nb, l, q.device))
    n = q.shape[1]
    qb, kb, vb = _blocks(q, l), _blocks(k, l), _blocks(v, l)
    mask = band_mask(qb.shape[1], l, q.device)[None]  # 4-D: CPU SDPA takes its flash kernel (3-D: the math one)
    out = F.scaled_dot_product_attention(qb, _with_previous(kb), _with_previous(vb), attn_mask=mask,
                                         dropout_p=dropout_p)
    return out.flatten(1, 2)[:, :n]


def stride_attention(q: Tensor, k: Tensor, v: Tensor, l: int, dropout_p: float = 0.0) -> Tensor:  # noqa: E741
    """The ``stride_mask`` pattern in O(n^2 / l): the sequence reshaped to (n / l, l) and transposed, every column
    (one residue mod l) is a causal sequence of ceil(n / l) positions. Padding sits after every real key of its
    column, so causality hides it."""
    n = q.shape[1]
    qt, kt, vt = (_blocks(x, l).transpose(1, 2) for x in (q, k, v))  # [BH, l, nb, hd]
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, dropout_p=dropout_p)
    return out.transpose(1, 2).flatten(1, 2)[:, :n]


def strided_attention(q: Tensor, k: Tensor, v: Tensor, l: int, dropout_p: float = 0.0) -> Tensor:  # noqa: E741
    """The merged ``strided_mask`` (local | stride, one head) in O(n (l + n / l)): band scores [2l per query] and
    stride scores [nb per query, transposed layout] under one softmax. The stride keys i - l and i are also in the
    band, so the stride part keeps only key blocks b' <= b - 2 (each key counted once)."""
    if _flash_union_ok(q, dropout_p):
        return _union(q, k, v, l, lambda nb: _band_parts(nb, l, q.device) + _stride_part(nb))
    n, hd = q.shape[1], q.shape[2]
    qb, kb, vb = _blocks(q * hd ** -0.5, l), _blocks(k, l), _blocks(v, l)
    nb = qb.shape[1]
    bi = torch.arange(nb, device=q.device)
    far = (bi[None, :] <= bi[:, None] - 2)[:, None, :]  # [nb (query block), 1, nb (key block)]
    # stride scores computed per residue: [BH, l, nb, nb] -> query-major [BH, nb, l, nb]
    st = (qb.transpose(1, 2) @ kb.permute(0, 2, 3, 1)).transpose(1, 2)
    sb = qb @ _with_previous(kb).transpose(-1, -2)  # [BH, nb, l, 2l]
    scores = torch.cat([sb.masked_fill(~band_mask(nb, l, q.device), float("-inf")),
                        st.masked_fill(~far, float("-inf"))], -1)
    p = scores.softmax(-1)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    pb, ps = p.split([2 * l, nb], -1)
    out = pb @ _with_previous(vb) + (ps.transpose(1, 2) @ vb.transpose(1, 2)).transpose(1, 2)
    return out.flatten(1, 2)[:, :n]


def fixed_attention(q: Tensor, k: Tensor, v: Tensor, l: int, c: int, dropout_p: float = 0.0) -> Tensor:  # noqa: E741
    """The ``fixed_mask`` pattern in O(n (l + n c / l)): one SDPA call per block of l queries, whose keys are [the
    block; the summary columns of blocks 0..nb-2, gathered once] (all queries of a block share them, so this is
    one softmax over the disjoint union of ``split_fixed_mask_mod``), masked causal on the first part and "earlier
    block" on the second. Keys and mask are O(n + nb^2 c) (x hd), a fraction of the O(n (l + nb c)) scores."""
    if _flash_union_ok(q, dropout_p):
        return _union(q, k, v, l, lambda nb: _fixed_parts(nb, l, min(c, l), q.device))
    n, hd = q.shape[1], q.shape[2]
    c = min(c, l)
    qb, kb, vb = _blocks(q, l), _blocks(k, l), _blocks(v, l)
    BH, nb = qb.shape[:2]
    S = (nb - 1) * c
    ks = kb[:, :-1, l - c:].reshape(BH, 1, S, hd).expand(BH, nb, S, hd)
    vs = vb[:, :-1, l - c:].reshape(BH, 1, S, hd).expand(BH, nb, S, hd)
    s = torch.arange(l, device=q.device)
    bi = torch.arange(nb, device=q.device)
    earlier = bi[:-1, None].expand(nb - 1, c).reshape(1, 1, S) < bi[:, None, None]  # [nb, 1, S]
    mask = torch.cat([(s[None, :] <= s[:, None]).expand(nb, l, l), earlier.expand(nb, l, S)], 2)[None]
    out = F.scaled_dot_product_attention(qb, torch.cat([kb, ks], 2), torch.cat([vb, vs], 2), attn_mask=mask,
                                         dropout_p=dropout_p)
    return out.flatten(1, 2)[:, :n]


# ---------------------------------------------------------------------------------------------- CPU: unions of flash calls
class Part(NamedTuple):
    """One key set of a ``_FlashUnion``: ``q(x)`` is the view of a blocked [BH, nb, l, *rest] tensor (queries, out,
    lse, their gradients) holding this part's queries, ``k(x)`` the view of [BH, nb, l, hd] holding its keys /
    values; ``flat`` merges the views' dims 1, 2 for the kernel; ``mask()`` builds its bool mask (None: none);
    ``causal``: the kernel's top-left causal mask."""
    q: Callable[[Tensor], Tensor]
    k: Callable[[Tensor], Tensor]
    flat: bool = False
    mask: Callable[[], Tensor] | None = None
    causal: bool = False


def _kernel(x: Tensor, flat: bool) -> Tensor:
    """A part's view as the kernel's [B, H, m, *rest] input: strided views are read in place (no copy)."""
    x = x.reshape(x.shape[0], 1, -1, *x.shape[3:]) if flat else x
    return x if x.dim() == 4 and x.stride(-1) == 1 else x.contiguous()  # lse [B, H, m]: small, made contiguous


def _additive(mask: Callable[[], Tensor] | None, dtype: torch.dtype) -> Tensor | None:
    """The kernel takes masks as additive float of the query dtype; built in forward and again in backward (not
    kept between them)."""
    if mask is None:
        return None
    m = mask()
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))


class _FlashUnion(torch.autograd.Function):
    """Attention over a disjoint union of key sets (``Part`` s), one CPU flash-attention call per set, merged by
    log-sum-exp: out = sum_i exp(lse_i - lse) out_i with lse = logaddexp_i lse_i, i.e. one softmax over the union,
    without its scores. qb, kb, vb float [BH, nb, l, hd] (blocked, contiguous) -> [BH, nb, l, hd].

    Backward runs each part's flash backward with the *merged* out and lse (so P_ij = exp(s_ij - lse) are the
    union's probabilities and rowsum(dO * O) its correction term): exact gradients, accumulated in place into one
    dq, dk, dv. Saved for backward: qb, kb, vb, out, lse, i.e. O(n hd)."""

    @staticmethod
    def forward(ctx, qb: Tensor, kb: Tensor, vb: Tensor, scale: float, parts: list[Part]) -> Tensor:  # noqa: ANN001
        lse = qb.new_full(qb.shape[:-1], float("-inf"))
        results = []
        for p in parts:
            o, x = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                _kernel(p.q(qb), p.flat), _kernel(p.k(kb), p.flat), _kernel(p.k(vb), p.flat), 0.0, p.causal,
                attn_mask=_additive(p.mask, qb.dtype), scale=scale)
            view = p.q(lse)
            x = x.reshape(view.shape)
            view.copy_(torch.logaddexp(view, x))
            results.append((o, x))
        out = torch.zeros_like(qb)  # every query has >= 1 key (its own position), so lse is finite
        for p, (o, x) in zip(parts, results):
            view = p.q(out)
            view.add_(o.reshape(view.shape) * (x - p.q(lse)).exp()[..., None])
        ctx.parts, ctx.scale = parts, scale
        ctx.save_for_backward(qb, kb, vb, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        qb, kb, vb, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)
        for p in ctx.parts:
            g_q, g_k, g_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                _kernel(p.q(grad), p.flat), _kernel(p.q(qb), p.flat), _kernel(p.k(kb), p.flat),
                _kernel(p.k(vb), p.flat), _kernel(p.q(out), p.flat), _kernel(p.q(lse), p.flat), 0.0, p.causal,
                attn_mask=_additive(p.mask, qb.dtype), scale=ctx.scale)
            for acc, g, view in ((dq, g_q, p.q), (dk, g_k, p.k), (dv, g_v, p.k)):
                v = view(acc)
                v.add_(g.reshape(v.shape))
        return dq, dk, dv, None, None


def _flash_union_ok(q: Tensor, dropout_p: float) -> bool:
    return q.device.type == "cpu" and dropout_p == 0.0 and q.dtype == torch.float32


def _union(q: Tensor, k: Tensor, v: Tensor, l: int, parts: Callable[[int], list[Part]]) -> Tensor:  # noqa: E741
    """q, k, v float [BH, n, hd] -> [BH, n, hd]: ``_FlashUnion`` over ``parts(nb)`` on the blocked, padded layout."""
    n, hd = q.shape[1], q.shape[2]
    qb, kb, vb = _blocks(q, l), _blocks(k, l), _blocks(v, l)
    return _FlashUnion.apply(qb, kb, vb, hd ** -0.5, parts(qb.shape[1])).flatten(1, 2)[:, :n]


def _band_parts(nb: int, l: int, device: torch.device) -> list[Part]:  # noqa: E741
    """The local band as two disjoint parts: causal inside each block, and each block b >= 1 against block b - 1
    where key t >= query s (i - j = l + s - t <= l): one [l, l] mask shared by all blocks."""
    parts = [Part(q=lambda x: x, k=lambda x: x, causal=True)]
    if nb > 1:
        s = torch.arange(l, device=device)
        parts.append(Part(q=lambda x: x[:, 1:], k=lambda x: x[:, :-1],
                          mask=lambda: (s[None, :] >= s[:, None])[None, None]))
    return parts


def _stride_part(nb: int) -> list[Part]:
    """The stride keys not in the band: blocks <= b - 2 of the same residue. Transposed layout [BH, l, nb, hd],
    queries of blocks 2.. against keys of blocks ..nb-3, causal."""
    if nb <= 2:
        return []
    return [Part(q=lambda x: x.transpose(1, 2)[:, :, 2:], k=lambda x: x.transpose(1, 2)[:, :, :-2], causal=True)]


SUMMARY_CHUNKS = 4  # fixed on CPU: query blocks in this many chunks, each against the summaries before its end


def _fixed_parts(nb: int, l: int, c: int, device: torch.device) -> list[Part]:  # noqa: E741
    """Causal within each block, and the queries of blocks 1..nb-1 against the summary columns of earlier blocks
    (mask: key block < query block), read in place from the keys (no copy per block). The summary part runs in
    ``SUMMARY_CHUNKS`` chunks of query blocks, each against the summaries before its last block only: less work and
    a smaller float mask than one [n, (nb - 1) c] call."""
    parts = [Part(q=lambda x: x, k=lambda x: x, causal=True)]
    bounds = sorted({1 + round(i * (nb - 1) / SUMMARY_CHUNKS) for i in range(SUMMARY_CHUNKS + 1)})
    for first, stop in zip(bounds[:-1], bounds[1:]):  # query blocks first..stop-1, summaries of blocks < stop - 1
        def mask(first: int = first, stop: int = stop) -> Tensor:  # [1, 1, (stop - first) l, (stop - 1) c]
            key_block = torch.arange(stop - 1, device=device).repeat_interleave(c)[None, :]
            query_block = torch.arange(first, stop, device=device).repeat_interleave(l)[:, None]
            return (key_block < query_block)[None, None]

        parts.append(Part(q=lambda x, a=first, b=stop: x[:, a:b], k=lambda x, b=stop: x[:, : b - 1, l - c:],
                          flat=True, mask=mask))
    return parts


def window(kind: str, x: Tensor, pos: int, stride: int, c: int) -> Tensor:
    """The cached rows position ``pos`` of one pattern reads: x float [B, h, >= pos + 1, hd] (a KV cache) ->
    [B, h, m, hd] with m = O(l + pos / l) (fixed: O(l + pos c / l)) instead of pos + 1. The order of the keys is
    irrelevant to attention."""
    l, b = stride, pos // stride  # noqa: E741
    lo = max(0, pos - l)
    if kind == "local":
        return x[:, :, lo: pos + 1]
    if kind == "stride":
        return x[:, :, pos % l: pos + 1: l]
    if kind == "strided":  # the band [pos - l, pos] and the stride positions before it
        return torch.cat([x[:, :, pos % l: lo: l], x[:, :, lo: pos + 1]], 2) if lo > 0 else x[:, :, : pos + 1]
    c = min(c, l)  # fixed: the summaries of earlier blocks and this block up to pos
    summaries = x[:, :, : b * l].unflatten(2, (b, l))[:, :, :, l - c:].flatten(2, 3)
    return torch.cat([summaries, x[:, :, b * l: pos + 1]], 2)


# ---------------------------------------------------------------------------------------------- attention
_compiled_flex: Callable | None = None


def _flex(compiled: bool) -> Callable:
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def head_groups(n_head: int, attention: str) -> list[tuple[str, int]]:
    """[(pattern, number of heads)], in head order: the heads of each group share one pattern."""
    if attention == "fixed":
        return [("fixed", n_head)]
    if n_head == 1:
        return [("strided", 1)]  # merged head: local | stride
    return [("local", n_head - n_head // 2), ("stride", n_head // 2)]


def pattern_mask(kind: str, L: int, stride: int, c: int) -> Tensor:
    """bool [L, L] of one head group's pattern."""
    return {"local": lambda: local_mask(L, stride), "stride": lambda: stride_mask(L, stride),
            "strided": lambda: strided_mask(L, stride), "fixed": lambda: fixed_mask(L, stride, c)}[kind]()


class SparseAttention:
    """Factorized attention for sequences of length n <= L: ``factorised(q, k, v, dropout_p)``,
    ``dense(q, k, v, mask, dropout_p)`` and ``flex(q, k, v, compiled)``, q, k, v float [B, H, n, hd] -> float
    [B, H, n, hd]; ``step(q, k, v, pos)`` for KV-cache decoding. Block masks are built once per (n, device) and
    cached."""

    def __init__(self, n_head: int, attention: str, stride: int, summary: int):
        self.groups = head_groups(n_head, attention)
        self.stride, self.c = stride, summary
        self._block_masks: dict = {}

    def masks(self, L: int) -> Tensor:
        """bool [G, L, L]: one mask per head group."""
        return torch.stack([pattern_mask(kind, L, self.stride, self.c) for kind, _ in self.groups])

    def dense(self, q: Tensor, k: Tensor, v: Tensor, masks: Tensor, dropout_p: float = 0.0) -> Tensor:
        """masks: bool [G, >= n, >= n] (``masks(L)``; the top-left n x n corner is used)."""
        n, outs, h0 = q.shape[2], [], 0
        for g, (_, nh) in enumerate(self.groups):
            sl = slice(h0, h0 + nh)
            outs.append(F.scaled_dot_product_attention(q[:, sl], k[:, sl], v[:, sl], attn_mask=masks[g, :n, :n],
                                                       dropout_p=dropout_p))
            h0 += nh
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def factorised(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        """O(n sqrt n) for l ~ sqrt(n): ``local_attention`` / ``stride_attention`` / ``strided_attention`` /
        ``fixed_attention`` per head group, never an n x n tensor."""
        B, n, hd, outs, h0 = q.shape[0], q.shape[2], q.shape[3], [], 0
        for kind, nh in self.groups:
            qg, kg, vg = (x[:, h0: h0 + nh].reshape(B * nh, n, hd) for x in (q, k, v))
            if kind == "local":
                out = local_attention(qg, kg, vg, self.stride, dropout_p)
            elif kind == "stride":
                out = stride_attention(qg, kg, vg, self.stride, dropout_p)
            elif kind == "strided":
                out = strided_attention(qg, kg, vg, self.stride, dropout_p)
            else:
                out = fixed_attention(qg, kg, vg, self.stride, self.c, dropout_p)
            outs.append(out.view(B, nh, n, hd))
            h0 += nh
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def step(self, q: Tensor, k: Tensor, v: Tensor, pos: int) -> Tensor:
        """One decoding step: q float [B, H, 1, hd] at ``pos``, k, v float [B, H, >= pos + 1, hd] (the KV cache,
        position pos written) -> [B, H, 1, hd], reading only each group's ``window``."""
        outs, h0 = [], 0
        for kind, nh in self.groups:
            sl = slice(h0, h0 + nh)
            kw, vw = (window(kind, x[:, sl], pos, self.stride, self.c) for x in (k, v))
            outs.append(F.scaled_dot_product_attention(q[:, sl], kw, vw))
            h0 += nh
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def _layout(self, kind: str, n: int, device: torch.device) -> tuple:
        """(block_mask, permutation or None, inverse permutation or None, summary positions or None)."""
        key = (kind, n, str(device))
        if key not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            stride, c = self.stride, self.c
            perm = inv = S = None
            n_kv = n
            if kind == "local":
                mm = local_mask_mod(stride)
            elif kind == "strided":
                mm = strided_mask_mod(stride)
            elif kind == "stride":
                perm = stride_permutation(n, stride).to(device)
                inv = torch.argsort(perm)
                mm = permuted_stride_mask_mod(n, stride, device)
            else:
                S = summary_positions(n, stride, c).to(device)
                n_kv = n + len(S)
                mm = split_fixed_mask_mod(n, stride, c, device)
            bm = create_block_mask(mm, None, None, n, n_kv, device=device)
            self._block_masks[key] = (bm, perm, inv, S)
        return self._block_masks[key]

    def flex(self, q: Tensor, k: Tensor, v: Tensor, compiled: bool = True) -> Tensor:
        n, outs, h0 = q.shape[2], [], 0
        fn = _flex(compiled)
        for kind, nh in self.groups:
            qg, kg, vg = q[:, h0: h0 + nh], k[:, h0: h0 + nh], v[:, h0: h0 + nh]
            bm, perm, inv, S = self._layout(kind, n, q.device)
            if perm is not None:  # stride heads: transposed layout, then back
                qg, kg, vg = qg[:, :, perm], kg[:, :, perm], vg[:, :, perm]
            if S is not None:  # fixed: keys = [all; summaries]
                kg, vg = torch.cat([kg, kg[:, :, S]], 2), torch.cat([vg, vg[:, :, S]], 2)
            with warnings.catch_warnings():  # eager flex warns that it is unfused: "flex_eager" is that on purpose
                warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
                out = fn(qg, kg, vg, block_mask=bm)
            outs.append(out[:, :, inv] if inv is not None else out)
            h0 += nh
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


@dataclass
class SparseTransformerConfig(TransformerConfig):
    """The Transformer with factorized sparse attention (Child et al. 2019)."""

    attention: str = "strided"  # strided | fixed attention pattern (Child et al. 2019, section 4.2)
    stride: int | None = None  # the paper's l (default: the row width for grids, ~sqrt(L) for 1-D)
    summary: int = 1  # the paper's c, the last c positions of each block are summaries

    def finalize(self, parent: Any) -> None:
        super().finalize(parent)
        if self.attention not in ("strided", "fixed"):
            raise ValueError(f"attention must be 'strided' or 'fixed', got {self.attention!r}")
        if self.stride is None:
            self.stride = parent.plane[1] if len(parent.shape) >= 2 else max(1, math.isqrt(parent.seq_len))
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.attention == "fixed" and not 1 <= self.summary <= self.stride:
            raise ValueError(f"summary must be in [1, stride={self.stride}], got {self.summary}")


@ARCHS.register("sparse_transformer", config=SparseTransformerConfig)
class SparseTransformerNet(TransformerNet):
    """``TransformerNet`` with factorized attention (module docstring). forward: x int64 [B, L'] in [0, V)
    (1 <= L' <= L), labels int64 [B] in [0, num_classes] or None -> logits float [B, L', V].

    impl: ``"auto"`` | ``"factorised"`` | ``"dense"`` (the masked reference) | ``"flex"`` (compiled) |
    ``"flex_eager"``; may be changed on the instance.
    """

    attention_impls = IMPLS
    delay_net = None  # the dense Transformer's delay-pattern net is not this one (no sparse variant)

    def __init__(self, config: PriorConfig, impl: str = "auto"):
        super().__init__(config)
        self.impl = impl
        self.sparse = SparseAttention(config.n_head, config.attention, config.stride, config.summary)
        self._dense_masks: Tensor | None = None  # [G, L, L], built on first use of impl="dense" (not a buffer)

    @property
    def masks(self) -> Tensor:
        """bool [G, L, L]: each head group's full mask (the ``"dense"`` reference; O(L^2), built on demand)."""
        device = self.head.weight.device
        if self._dense_masks is None or self._dense_masks.device != device:
            self._dense_masks = self.sparse.masks(self.config.seq_len).to(device)
        return self._dense_masks

    def resolved_impl(self) -> str:
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl == "auto":
            if self.head.weight.device.type == "cuda":
                return "flex"
            # Measured on CPU (2-layer, d 128): dense is 1.1-1.2x faster at 64 tokens, even at 256, 1.5x slower at 1k.
            return "factorised" if self.config.seq_len >= FACTORISED_MIN_LEN else "dense"
        return self.impl

    def _attend(self, n: int) -> AttendFn:
        impl = self.resolved_impl()
        p = self.config.dropout if self.training else 0.0
        if impl == "factorised":
            return lambda q, k, v: self.sparse.factorised(q, k, v, p)
        if impl == "dense":
            masks = self.masks
            return lambda q, k, v: self.sparse.dense(q, k, v, masks, p)
        return lambda q, k, v: self.sparse.flex(q, k, v, compiled=impl == "flex")

    def _step_attend(self, pos: int) -> AttendFn:
        """Each head group reads only its ``window`` of the cache: O(l + pos / l) keys per step for strided,
        O(l + pos c / l) for fixed."""
        return lambda q, k, v: self.sparse.step(q, k, v, pos)
