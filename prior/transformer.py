"""Transformer prior: a decoder-only, pre-norm Transformer (GPT-2 layout, Radford et al. 2019) over the
raster sequence, with a preallocated KV cache for O(L) incremental decoding (gpt-fast ``KVCache``).

Input at position i is the embedding of x[i - 1]; position 0 gets a learned start vector. Position is
given by coordinate embeddings: row + column embeddings for 2-D grids (so "the token above" is the same
offset everywhere; a (t, q) codebook grid gets time + codebook), row + column + codebook for (h, w, q)
grids, one embedding per position for 1-D sequences. A label (conditional priors) is
embedded (``num_classes + 1`` rows, the last one the null label for classifier-free guidance) and added
to every input, the start input included, so position 0 already sees it.

The attention block is shared with the sparse Transformer (``prior.sparse``): ``Attention.forward`` takes
an optional ``attend(q, k, v) -> out`` function (default: causal ``scaled_dot_product_attention``) and
``Attention.step`` an optional boolean mask row, so a subclass only has to say who attends to whom.

Decoding (``step``) is the sampling hot path, one position at a time, so it is written for per-token cost:
plain tensor ops on the parameters (no submodule calls or einops), a ``DecodeWeights`` snapshot per sampling
call (on CPU, contiguous [in, out] weight copies: MKL's few-row GEMM reads them faster), the position
embeddings of every position and the label embeddings computed once per call, the KV cache written in place,
and no host synchronisation (``bench/vs_transformers.py`` measures it against Hugging Face GPT-2).
``torch.compile`` of the step was measured slower on CPU (and took ~70 s to compile), so it is not used.

``DelayTransformerNet`` is the same stack over MusicGen's delay pattern (``prior.codebooks``, config
``codebook_pattern="delay"``): one sequence position per step of q codebooks, q output heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .codebooks import delay_order, delay_pattern, step_sources, undelay
from .config import ARCHS, PriorConfig
from .heads import OutputHeadConfig, head_size, head_to_logits
from .net import PriorNet

AttendFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # q, k, v float [B, H, L, hd] -> out [B, H, L, hd]


class KVCache(nn.Module):
    """Keys and values of one attention layer: float [B, H, L, hd] each, preallocated for the whole
    sequence (gpt-fast style: written in place, no concatenation per step, so memory is fixed). Positions
    not yet written hold garbage (``torch.empty``): attention reads only positions 0..pos."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.empty(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.empty(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, 1, hd] at ``pos``; return the keys and values of positions 0..pos [B, H, pos+1, hd]
        (views). ``narrow`` rather than slice indexing: one op each, and Python's indexing path is slower."""
        self.k.narrow(2, pos, 1).copy_(k)
        self.v.narrow(2, pos, 1).copy_(v)
        return self.k.narrow(2, 0, pos + 1), self.v.narrow(2, 0, pos + 1)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B] (beam search)."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))


def _linear_t(lin: nn.Linear, copy: bool) -> tuple[Tensor, Tensor | None]:
    """(weight^T float [in, out], bias float [out] | None) of ``lin``, the weight^T a contiguous copy when ``copy``."""
    wt = lin.weight.detach().t()
    return (wt.contiguous() if copy else wt), (lin.bias.detach() if lin.bias is not None else None)


class DecodeWeights(NamedTuple):
    """One block's parameters laid out for decoding, each linear as (weight^T [in, out], bias [out]) for
    ``torch.addmm(bias, x, weight^T)`` and each LayerNorm as (weight, bias, eps).

    On CPU the weight^T are contiguous copies: MKL's GEMM with a few rows of x (one per sequence in the batch)
    reads an [in, out] matrix about 15% faster than nn.Linear's [out, in] (measured at B 1 and 16, d 256). A
    snapshot: ``init_cache`` takes one per sampling call, so it always follows the current parameters."""

    ln1: tuple[Tensor, Tensor, float]
    qkv: tuple[Tensor, Tensor | None]
    proj: tuple[Tensor, Tensor | None]
    ln2: tuple[Tensor, Tensor, float]
    fc: tuple[Tensor, Tensor | None]
    out: tuple[Tensor, Tensor | None]


def _layer_norm(x: Tensor, ln: tuple[Tensor, Tensor, float]) -> Tensor:
    return F.layer_norm(x, ln[0].shape, ln[0], ln[1], ln[2])


def _addmm(x: Tensor, lin: tuple[Tensor, Tensor | None]) -> Tensor:
    """x float [B, in] @ weight^T (+ bias) -> float [B, out]."""
    return torch.addmm(lin[1], x, lin[0]) if lin[1] is not None else x @ lin[0]


class TransformerCache(nn.Module):
    """One ``KVCache`` per layer, the next position to decode, and what decoding reads at every step: the
    blocks' ``DecodeWeights``, the final LayerNorm and head as (weight, bias[, eps]), and the position
    embeddings of every position float [L, D] (summed coordinate embeddings, computed once per call)."""

    def __init__(self, layers: list[KVCache], weights: list[DecodeWeights] | None = None,
                 head: tuple | None = None, positions: Tensor | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.pos = 0
        self.weights, self.head, self.positions = weights, head, positions
        self.label_input: tuple[Tensor, Tensor] | None = None  # (labels given, their embeddings float [B, D])


class Attention(nn.Module):
    """Multi-head self-attention. x float [B, L, D] -> float [B, L, D]."""

    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, d_model // n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # unbind, not unpacking a rearranged [3, B, H, L, hd]: unpacking is three selects, whose backward builds
        # three zero-filled full-size gradients and sums them (~14% of the attention block's fwd+bwd at d 256)
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> b l three h d", three=3, h=self.n_head).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, hd) views

    def forward(self, x: Tensor, attend: AttendFn | None = None) -> Tensor:
        q, k, v = self._qkv(x)  # (B, H, L, hd)
        if attend is None:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            out = attend(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))

    def step(self, x: Tensor, cache: KVCache, pos: int, attend: AttendFn | None = None,
             w: DecodeWeights | None = None) -> Tensor:
        """x float [B, D] at position ``pos`` -> float [B, D], attending to the cached positions 0..pos;
        ``attend(q [B, H, 1, hd], k, v [B, H, pos+1, hd]) -> [B, H, 1, hd]`` may read fewer (sparse patterns).
        ``w``: the block's ``DecodeWeights`` (default: this module's parameters, uncopied)."""
        B = x.shape[0]
        qkv_w, proj_w = (w.qkv, w.proj) if w is not None else (_linear_t(self.qkv, False), _linear_t(self.proj, False))
        q, k, v = _addmm(x, qkv_w).view(B, 3, self.n_head, 1, self.head_dim).unbind(1)  # (B, H, 1, hd) views
        k, v = cache.update(pos, k, v)  # (B, H, pos+1, hd): O(pos) work, not O(pos^2)
        # the flash kernel is the fastest of SDPA / matmul + softmax / bmm for one query on CPU (B 1 and 16)
        out = attend(q, k, v) if attend is not None else F.scaled_dot_product_attention(q, k, v)
        return _addmm(out.reshape(B, -1), proj_w)  # (B, H, 1, hd) -> (B, D): a view


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x)) (GPT-2; pre-norm trains stably
    without warm-up at these small sizes)."""

    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attend: AttendFn | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attend))
        return x + self.drop(self.mlp(self.ln2(x)))

    def decode_weights(self, copy: bool) -> DecodeWeights:
        """This block's parameters for ``step``; ``copy``: contiguous weight^T copies (CPU; see ``DecodeWeights``)."""
        ln = lambda m: (m.weight.detach(), m.bias.detach(), m.eps)  # noqa: E731
        fc, _, out = self.mlp
        return DecodeWeights(ln(self.ln1), _linear_t(self.attn.qkv, copy), _linear_t(self.attn.proj, copy),
                             ln(self.ln2), _linear_t(fc, copy), _linear_t(out, copy))

    def step(self, x: Tensor, cache: KVCache, pos: int, attend: AttendFn | None = None,
             w: DecodeWeights | None = None) -> Tensor:
        """x float [B, D] at position ``pos`` -> float [B, D]: ``forward``'s arithmetic for one position, as plain
        tensor ops (no submodule calls: the decoding hot path is little more than its matrix products)."""
        w = w if w is not None else self.decode_weights(False)
        x = x + self.attn.step(_layer_norm(x, w.ln1), cache, pos, attend, w)
        return x + _addmm(F.gelu(_addmm(_layer_norm(x, w.ln2), w.fc)), w.out)


def _head_weights(ln: nn.LayerNorm, head: nn.Linear, copy: bool) -> tuple:
    """The final LayerNorm and output head for decoding: ((weight, bias, eps), (weight^T, bias))."""
    return (ln.weight.detach(), ln.bias.detach(), ln.eps), _linear_t(head, copy)


def _decoding_parts(net: nn.Module, length: int, batch_size: int, device: torch.device) -> tuple[list, list, tuple]:
    """What every decoding cache of a Transformer net (``blocks``, ``ln_f``, ``head``) starts from: one empty
    ``KVCache`` of ``length`` positions per block, the blocks' ``DecodeWeights`` and the head's weights (contiguous
    weight^T copies on CPU, see ``DecodeWeights``)."""
    c = net.config
    dtype, copy = net.head.weight.dtype, net.head.weight.device.type == "cpu"
    layers = [KVCache(batch_size, c.n_head, length, c.d_model // c.n_head, device, dtype) for _ in net.blocks]
    return layers, [blk.decode_weights(copy) for blk in net.blocks], _head_weights(net.ln_f, net.head, copy)


def _label_input(cache: TransformerCache, labels: Tensor, embed: nn.Embedding) -> Tensor:
    """The label embeddings float [B, D], looked up once per sampling call (the same ``labels`` every step)."""
    if cache.label_input is None or cache.label_input[0] is not labels:
        cache.label_input = (labels, F.embedding(labels, embed.weight))
    return cache.label_input[1]


@dataclass
class TransformerConfig(OutputHeadConfig):
    """GPT-style decoder (pre-norm blocks of causal self-attention and an MLP)."""

    n_layer: int = 4  # layers
    n_head: int = 4  # attention heads (d_model must divide by it)
    d_model: int = 128  # width
    dropout: float = 0.0  # dropout on attention and MLP outputs while training

    def finalize(self, parent: Any) -> None:
        super().finalize(parent)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


@ARCHS.register("transformer", config=TransformerConfig)
class TransformerNet(PriorNet):
    """forward: x int64 [B, L'] in [0, V) (any 1 <= L' <= L), labels int64 [B] in [0, num_classes] or None
    -> logits float [B, L', V]; the logits at i depend on x[:, :i] (and the label) only."""

    variable_length = True
    supports_cache = True

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        D, L = config.d_model, config.seq_len
        self.tok_embed = nn.Embedding(config.vocab_size, D)
        self.start = nn.Parameter(torch.zeros(D))
        self.label_embed = nn.Embedding(config.num_classes + 1, D) if config.num_classes else None
        idx = torch.arange(L)
        if len(config.shape) >= 2:  # coordinate embeddings: row + column (+ codebook for (h, w, q) grids)
            h, w = config.shape[:2]
            q = config.shape[2] if len(config.shape) == 3 else 1
            self.row_embed, self.col_embed = nn.Embedding(h, D), nn.Embedding(w, D)
            self.register_buffer("rows", idx // (w * q), persistent=False)
            self.register_buffer("cols", (idx // q) % w, persistent=False)
            if len(config.shape) == 3:
                self.cb_embed = nn.Embedding(q, D)
                self.register_buffer("cbs", idx % q, persistent=False)
        else:
            self.pos_embed = nn.Embedding(L, D)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(D, config.n_head, config.dropout) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, head_size(config.output, config.vocab_size, config.logistic_mixtures))
        # PyTorch's default init (embeddings N(0, 1)), not GPT-2's N(0, 0.02): at these small widths the tiny
        # embeddings left Adam(lr=1e-2) stuck on a plateau (1.06 vs 0.20 bits/token on tests' progressions)

    # ------------------------------------------------------------------ embeddings
    def _pos(self, start: int, stop: int) -> Tensor:
        """Position embeddings of positions start..stop-1: float [stop - start, D]."""
        if len(self.config.shape) == 3:
            return (self.row_embed(self.rows[start:stop]) + self.col_embed(self.cols[start:stop])
                    + self.cb_embed(self.cbs[start:stop]))
        if len(self.config.shape) == 2:
            return self.row_embed(self.rows[start:stop]) + self.col_embed(self.cols[start:stop])
        return self.pos_embed.weight[start:stop]

    def _embed(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """x int64 [B, L'] -> inputs float [B, L', D]: start, emb(x[0]), ..., emb(x[L'-2]), + position, + label."""
        B, n = x.shape
        h = torch.cat([self.start.expand(B, 1, -1), self.tok_embed(x[:, : n - 1])], 1) + self._pos(0, n)
        if self.label_embed is not None and labels is not None:
            h = h + self.label_embed(labels)[:, None]
        return self.drop(h)

    def _check_length(self, x: Tensor) -> None:
        if x.dim() != 2 or not 1 <= x.shape[1] <= self.config.seq_len:
            raise ValueError(f"expected x of shape [B, L'] with 1 <= L' <= {self.config.seq_len}, got {tuple(x.shape)}")

    # ------------------------------------------------------------------ attention pattern (overridden by sparse)
    def _attend(self, n: int) -> AttendFn | None:
        """The attention function for a length-n sequence; None = dense causal."""
        return None

    def _step_attend(self, pos: int) -> AttendFn | None:
        """The attention of one cached decoding step at ``pos`` over keys 0..pos; None = all of them (dense)."""
        return None

    # ------------------------------------------------------------------ full sequence
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        self._check_length(x)
        h = self._embed(x, labels)
        attend = self._attend(x.shape[1])
        for blk in self.blocks:
            h = blk(h, attend)
        return head_to_logits(self.head(self.ln_f(h)), self.config.output, self.config.vocab_size)

    # ------------------------------------------------------------------ incremental decoding
    def init_cache(self, batch_size: int, device: torch.device) -> TransformerCache:
        with torch.no_grad():
            positions = self._pos(0, self.config.seq_len).detach()
        return TransformerCache(*_decoding_parts(self, self.config.seq_len, batch_size, device), positions)

    def step(self, cache: TransformerCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits float [B, V] for position ``pos``, feeding only x[:, pos - 1] (the start input at pos 0)."""
        if pos != cache.pos:
            raise ValueError(f"{type(self).__name__}.step must be called for consecutive positions: "
                             f"expected {cache.pos}, got {pos}")
        B = x.shape[0]
        inp = self.start.expand(B, -1) if pos == 0 else F.embedding(x[:, pos - 1], self.tok_embed.weight)
        h = inp + cache.positions[pos]  # (B, D)
        if self.label_embed is not None and labels is not None:
            h = h + _label_input(cache, labels, self.label_embed)
        attend = self._step_attend(pos)
        for blk, kv, w in zip(self.blocks, cache.layers, cache.weights):
            h = blk.step(h, kv, pos, attend, w)
        cache.pos = pos + 1
        ln, head = cache.head
        return head_to_logits(_addmm(_layer_norm(h, ln), head), self.config.output, self.config.vocab_size)

    def reorder_cache(self, cache: TransformerCache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B] of every layer's cache (beam search)."""
        for kv in cache.layers:
            kv.reorder(index)


class DelayCache(TransformerCache):
    """A ``TransformerCache`` over delay steps, plus the logits float [B, q, V] of the last computed step
    (its q positions are asked for one by one, but computed together)."""

    def __init__(self, layers: list[KVCache], weights: list[DecodeWeights] | None = None, head: tuple | None = None):
        super().__init__(layers, weights, head)
        self.logits: Tensor | None = None


class DelayTransformerNet(PriorNet):
    """MusicGen's delay pattern (Copet et al. 2023, section 2.2) on a (T, q) codebook grid (T = all leading
    axes flattened in raster order): step s holds codebook k's token of time s - k, S = T + q - 1 steps.

    The input at step s is the sum of the q codebook embeddings of step s - 1 (a per-codebook learned "empty"
    embedding where step s - 1 has a pad), a learned start vector at step 0, + a step embedding (+ label);
    q linear heads predict all codebooks of step s at once. So p(x) = prod_s prod_k p(x[s-k, k] | steps < s),
    an exact normalised factorisation in ``decode_order`` (by step, then codebook) over the real tokens only.

    forward: x int64 [B, L] (the whole grid, flat in raster order, L = T * q) in [0, V), labels int64 [B] in
    [0, num_classes] or None -> logits float [B, L, V] at the grid's raster positions; position i's logits
    depend only on the positions before it in ``decode_order`` (not on the raster prefix).
    """

    variable_length = False  # raster prefixes are not closed under the delay order: whole grids only
    supports_cache = True  # step() is called in decode_order; one transformer step per delay step

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        if getattr(config, "output", "softmax") != "softmax":  # q heads of V-way softmaxes; no mixture heads yet
            raise ValueError(f"codebook_pattern='delay' has softmax heads only, got output={config.output!r}")
        q, T, V, D = config.num_codebooks, config.num_steps, config.vocab_size, config.d_model
        self.q, self.T, self.S = q, T, T + q - 1
        # codebook k's token v is row k * (V + 1) + v; row k * (V + 1) + V is codebook k's "empty" embedding
        self.tok_embed = nn.Embedding(q * (V + 1), D)
        self.register_buffer("offsets", torch.arange(q) * (V + 1), persistent=False)
        self.register_buffer("sources", step_sources(T, q), persistent=False)  # [S, q] flat position or -1
        self.start = nn.Parameter(torch.zeros(D))
        self.step_embed = nn.Embedding(self.S, D)
        self.label_embed = nn.Embedding(config.num_classes + 1, D) if config.num_classes else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(D, config.n_head, config.dropout) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, q * V)  # q heads of V logits each
        self.decode_order = delay_order(T, q)

    def _step_inputs(self, delayed: Tensor) -> Tensor:
        """delayed int64 [B, n, q] in [0, V] (V = pad) -> summed codebook embeddings float [B, n, D]."""
        return self.tok_embed(delayed + self.offsets).sum(2)

    def _condition(self, h: Tensor, start: int, labels: Tensor | None) -> Tensor:
        """h float [B, n, D] of steps start.. -> + step embeddings (+ label)."""
        h = h + self.step_embed.weight[start: start + h.shape[1]]
        if self.label_embed is not None and labels is not None:
            h = h + self.label_embed(labels)[:, None]
        return h

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        B, L = x.shape
        if x.dim() != 2 or L != self.T * self.q:
            raise ValueError(f"DelayTransformerNet needs whole grids of {self.T * self.q} tokens, got {tuple(x.shape)}")
        V = self.config.vocab_size
        d = delay_pattern(x.view(B, self.T, self.q), pad=V)  # [B, S, q]
        h = torch.cat([self.start.expand(B, 1, -1), self._step_inputs(d[:, :-1])], 1)  # step s sees step s - 1
        h = self.drop(self._condition(h, 0, labels))
        for blk in self.blocks:
            h = blk(h)
        logits = self.head(self.ln_f(h)).view(B, self.S, self.q, V)
        return undelay(logits, self.T).reshape(B, L, V)  # pad positions' outputs dropped

    def init_cache(self, batch_size: int, device: torch.device) -> DelayCache:
        return DelayCache(*_decoding_parts(self, self.S, batch_size, device))

    def step(self, cache: DelayCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits float [B, V] for flat position ``pos`` (time i, codebook k; step s = i + k). The first position
        of step s runs one transformer step on step s - 1's tokens (read from x, all filled in decode order);
        the step's other positions reuse its logits. Positions must come in ``decode_order``."""
        i, k = divmod(pos, self.q)
        s = i + k
        if s == cache.pos - 1 and cache.logits is not None:
            return cache.logits[:, k]
        if s != cache.pos:
            raise ValueError(f"DelayTransformerNet.step must be called in decode_order: expected step {cache.pos}, "
                             f"got position {pos} of step {s}")
        B = x.shape[0]
        if s == 0:
            h = self.start.expand(B, 1, -1)
        else:
            src = self.sources[s - 1]  # [q]
            prev = torch.where(src >= 0, x[:, src.clamp(min=0)], self.config.vocab_size)  # [B, q], pad = V
            h = self._step_inputs(prev[:, None])
        h = self._condition(h, s, labels)[:, 0]  # (B, D)
        for blk, kv, w in zip(self.blocks, cache.layers, cache.weights):
            h = blk.step(h, kv, s, None, w)
        cache.pos = s + 1
        ln, head = cache.head
        cache.logits = _addmm(_layer_norm(h, ln), head).view(B, self.q, -1)
        return cache.logits[:, k]

    def reorder_cache(self, cache: DelayCache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B] of every layer's cache and the current step's logits (beam search)."""
        for kv in cache.layers:
            kv.reorder(index)
        if cache.logits is not None:
            cache.logits = cache.logits[index]


TransformerNet.delay_net = DelayTransformerNet  # codebook_pattern="delay" builds this net instead
