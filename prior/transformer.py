"""Transformer prior: a decoder-only, pre-norm Transformer (GPT-2 layout, Radford et al. 2019) over the
raster sequence, with a preallocated KV cache for O(L) incremental decoding (gpt-fast ``KVCache``).

Input at position i is the embedding of x[i - 1]; position 0 gets a learned start vector. Position is
given by coordinate embeddings: row + column embeddings for 2-D grids (so "the token above" is the same
offset everywhere), one embedding per position for 1-D sequences. A label (conditional priors) is
embedded (``num_classes + 1`` rows, the last one the null label for classifier-free guidance) and added
to every input, the start input included, so position 0 already sees it.

The attention block is shared with the sparse Transformer (``prior.sparse``): ``Attention.forward`` takes
an optional ``attend(q, k, v) -> out`` function (default: causal ``scaled_dot_product_attention``) and
``Attention.step`` an optional boolean mask row, so a subclass only has to say who attends to whom.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import PriorConfig
from .heads import head_size, head_to_logits
from .net import PriorNet

AttendFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # q, k, v float [B, H, L, hd] -> out [B, H, L, hd]


class KVCache(nn.Module):
    """Keys and values of one attention layer: float [B, H, L, hd] each, preallocated for the whole
    sequence (gpt-fast style: no concatenation per step, so memory is fixed and the loop compiles)."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, 1, hd] at ``pos``; return the keys and values of positions 0..pos [B, H, pos+1, hd]."""
        self.k[:, :, pos: pos + 1] = k
        self.v[:, :, pos: pos + 1] = v
        return self.k[:, :, : pos + 1], self.v[:, :, : pos + 1]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B] (beam search)."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))


class TransformerCache(nn.Module):
    """One ``KVCache`` per layer and the next position to decode."""

    def __init__(self, layers: list[KVCache]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.pos = 0


class Attention(nn.Module):
    """Multi-head self-attention. x float [B, L, D] -> float [B, L, D]."""

    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, d_model // n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_head)
        return q, k, v

    def forward(self, x: Tensor, attend: AttendFn | None = None) -> Tensor:
        q, k, v = self._qkv(x)  # (B, H, L, hd)
        if attend is None:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            out = attend(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))

    def step(self, x: Tensor, cache: KVCache, pos: int, attend: AttendFn | None = None) -> Tensor:
        """x float [B, 1, D] at position ``pos`` -> float [B, 1, D], attending to the cached positions 0..pos;
        ``attend(q [B, H, 1, hd], k, v [B, H, pos+1, hd]) -> [B, H, 1, hd]`` may read fewer (sparse patterns)."""
        q, k, v = self._qkv(x)  # (B, H, 1, hd)
        k, v = cache.update(pos, k, v)  # (B, H, pos+1, hd): O(pos) work, not O(pos^2)
        out = attend(q, k, v) if attend is not None else F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


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

    def step(self, x: Tensor, cache: KVCache, pos: int, attend: AttendFn | None = None) -> Tensor:
        x = x + self.attn.step(self.ln1(x), cache, pos, attend)
        return x + self.mlp(self.ln2(x))


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
        if len(config.shape) == 2:  # coordinate embeddings: row + column
            h, w = config.shape
            self.row_embed, self.col_embed = nn.Embedding(h, D), nn.Embedding(w, D)
            self.register_buffer("rows", idx // w, persistent=False)
            self.register_buffer("cols", idx % w, persistent=False)
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
        c = self.config
        dtype = self.head.weight.dtype
        return TransformerCache([KVCache(batch_size, c.n_head, c.seq_len, c.d_model // c.n_head, device, dtype)
                                 for _ in self.blocks])

    def step(self, cache: TransformerCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits float [B, V] for position ``pos``, feeding only x[:, pos - 1] (the start input at pos 0)."""
        if pos != cache.pos:
            raise ValueError(f"{type(self).__name__}.step must be called for consecutive positions: "
                             f"expected {cache.pos}, got {pos}")
        B = x.shape[0]
        inp = self.start.expand(B, 1, -1) if pos == 0 else self.tok_embed(x[:, pos - 1: pos])
        h = inp + self._pos(pos, pos + 1)
        if self.label_embed is not None and labels is not None:
            h = h + self.label_embed(labels)[:, None]
        attend = self._step_attend(pos)
        for blk, kv in zip(self.blocks, cache.layers):
            h = blk.step(h, kv, pos, attend)
        cache.pos = pos + 1
        return head_to_logits(self.head(self.ln_f(h[:, 0])), self.config.output, self.config.vocab_size)

    def reorder_cache(self, cache: TransformerCache, index: Tensor) -> None:
        """Keep batch rows ``index`` int64 [B] of every layer's cache (beam search)."""
        for kv in cache.layers:
            kv.reorder(index)
