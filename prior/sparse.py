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
``fixed_mask``, bool [L, L], True = may attend) and as FlexAttention ``mask_mod`` s. Two execution paths
give the same numbers (tests check < 1e-4):

* ``"dense"``: ``scaled_dot_product_attention`` with the boolean mask (a non-persistent buffer
  [G, L, L], one row per distinct pattern). Works everywhere; costs as much as dense attention.
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
  Work per layer: local O(L l), stride O(L^2 / l), fixed O(L l + L^2 c / l), against O(L^2) dense.

``SparseTransformerNet.impl`` picks the path: ``"auto"`` (default) runs compiled flex on CUDA and the dense
path elsewhere. On CPU (torch 2.14) eager flex is correct but slow (it materialises the scores) and
compiled flex took ~70 s to compile per shape here and has no CPU backward (training on CPU with ``"flex"``
raises), so dense wins there for prior-sized sequences; see ``bench/sparse_attention.py``. Attention dropout is applied on the dense path only (flex has none).
KV-cache decoding uses row ``pos`` of the dense mask, so cached sampling follows the same pattern.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import PriorConfig
from .transformer import AttendFn, TransformerNet

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (b, h, q_idx, kv_idx) -> bool
IMPLS = ("auto", "dense", "flex", "flex_eager")


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
    """Factorized attention for sequences of length n <= L: ``dense(q, k, v, mask, dropout_p)`` and
    ``flex(q, k, v, compiled)``, q, k, v float [B, H, n, hd] -> float [B, H, n, hd]. Block masks are built
    once per (n, device) and cached."""

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


class SparseTransformerNet(TransformerNet):
    """``TransformerNet`` with factorized attention (module docstring). forward: x int64 [B, L'] in [0, V)
    (1 <= L' <= L), labels int64 [B] in [0, num_classes] or None -> logits float [B, L', V].

    impl: ``"auto"`` | ``"dense"`` | ``"flex"`` (compiled) | ``"flex_eager"``; may be changed on the instance.
    """

    def __init__(self, config: PriorConfig, impl: str = "auto"):
        super().__init__(config)
        self.impl = impl
        self.sparse = SparseAttention(config.n_head, config.attention, config.stride, config.summary)
        self.register_buffer("masks", self.sparse.masks(config.seq_len), persistent=False)  # [G, L, L]
        sizes = [nh for _, nh in self.sparse.groups]
        self.register_buffer("head_group", torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
                             persistent=False)  # [H]: the group (mask row) of each head

    def resolved_impl(self) -> str:
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl == "auto":
            return "flex" if self.masks.device.type == "cuda" else "dense"
        return self.impl

    def _attend(self, n: int) -> AttendFn:
        impl = self.resolved_impl()
        if impl == "dense":
            p = self.config.dropout if self.training else 0.0
            return lambda q, k, v: self.sparse.dense(q, k, v, self.masks, p)
        return lambda q, k, v: self.sparse.flex(q, k, v, compiled=impl == "flex")

    def _mask_row(self, pos: int) -> Tensor:
        """bool [H or 1, 1, pos + 1]: row ``pos`` of each head's mask."""
        if self.masks.shape[0] == 1:
            return self.masks[:, pos: pos + 1, : pos + 1]
        return self.masks[self.head_group, pos: pos + 1, : pos + 1]
