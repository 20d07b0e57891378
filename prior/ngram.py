"""N-gram prior: a count-based model with local parents, fitted by counting (no gradient training).

p(x_i | x_<i) depends on a few *parents* of position i, ordered from nearest to farthest:

* 1-D grids, or ``ngram_template="raster"``: the ``ngram_order`` previous tokens in raster order;
* 2-D grids (3-axis (h, w, q) ones as (h, w * q)) with ``ngram_template="jbig"``: the first ``ngram_order`` cells of a causal neighbourhood
  template (left, above, above-left, above-right, left-2, above-2, ...; its first 10 cells are JBIG's
  three-line template, ITU-T T.82), ``JBIG_TEMPLATE`` below.

Parents outside the grid read a dedicated pad value ``V`` (so border contexts are their own contexts).
``ngram_position`` adds the position itself as the last (most specific) parent, and a conditional prior
adds the label above that: the chain of nested contexts is

    () ⊂ (s1) ⊂ (s1, s2) ⊂ ... ⊂ (s1..sk) [⊂ (s1..sk, i)] [⊂ (s1..sk[, i], label)]

and each level's distribution backs off to the one below it (``ngram_smoothing``):

* ``"kneser_ney"`` (interpolated, Chen & Goodman 1998): p_j(x) = max(c(x) - D, 0) / n + D t / n p_{j-1}(x),
  with raw counts at the deepest label-free level and the label level, and continuation counts below them
  (c_j(x) = how many distinct one-parent-longer contexts saw x after this one); D = ``ngram_discount`` or
  n1 / (n1 + 2 n2) per level (the counts of counts), clipped to [0.05, 0.95];
* ``"witten_bell"`` (interpolated): p_j(x) = (c(x) + t p_{j-1}(x)) / (n + t);
* ``"add_alpha"``: no back-off to shorter contexts; the deepest label-free context only,
  (c(x) + alpha) / (n + alpha V), and for a label the (context, label) counts when that pair was seen.

Here c(x) counts x after the context, n = sum c, t = how many distinct x; an unseen context uses the level
below unchanged, and below level 0 is the uniform distribution. The null label (index ``num_classes``) is
never counted, so it always backs off to the unconditional model (classifier-free guidance uses it); token
levels count every example, whatever its label.

Storage: contexts form a trie. A level-j context is the key ``index_{j-1} * R_j + s_j`` (its parent's
index in level j-1, times the range of parent j, plus parent j's value), so keys stay small (no V^k
tables, no hash collisions) and memory is proportional to the observed contexts and (context, token) pairs.
Each level keeps sorted context keys, CSR offsets into its (token, count) pairs and per-context totals, as
buffers whose sizes are set by ``fit``; loading resizes them to the saved shapes.

Queries walk the trie: a level small enough is read through dense lookup tables built once after a fit
or load (context key -> index, index -> smoothing coefficients), a larger one by binary search and CSR rows.

``forward`` returns log p (exact normalised conditionals, so ``log_prob``/``score``/``compress`` are
exact); ``step`` looks up position pos's parents in the buffer: O(levels * V) per token whatever pos.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vqgen_io.components import ComponentConfig

from .config import ARCHS, PriorConfig
from .net import PriorNet

# causal (dy, dx) offsets, nearest first; the first 10 are JBIG's three-line template
JBIG_TEMPLATE: tuple[tuple[int, int], ...] = (
    (0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-1, -2), (-1, 2), (-2, -1), (-2, 1),
    (0, -3), (-3, 0), (-2, -2), (-2, 2),
)
TEMPLATES = ("jbig", "raster")
SMOOTHINGS = ("kneser_ney", "witten_bell", "add_alpha")
DENSE_LIMIT = 1 << 21  # the largest derived lookup table (entries) a level gets; larger: binary search + CSR
_TABLES = ("ctx", "off", "sym", "cnt", "tot")  # per level: keys [M], offsets [M+1], tokens [P], counts [P], totals [M]


def parent_offsets(config: PriorConfig) -> list[tuple[int, int]]:
    """The (dy, dx) of each token parent, nearest first (1-D grids and "raster": (0, -r) on the flat sequence)."""
    k = config.ngram_order
    if len(config.shape) >= 2 and config.ngram_template == "jbig":
        return list(JBIG_TEMPLATE[:k])
    return [(0, -r) for r in range(1, k + 1)]


def parent_sources(config: PriorConfig) -> Tensor:
    """int64 [k, L]: the flat position parent r of position i reads, or -1 when it is outside the grid."""
    L = config.seq_len
    i = torch.arange(L)
    offsets = parent_offsets(config)
    if len(config.shape) == 1 or config.ngram_template == "raster":
        src = [i - (-dx) for _, dx in offsets]
        return torch.stack([torch.where(s >= 0, s, -1) for s in src]) if src else torch.zeros(0, L, dtype=torch.long)
    H, W = config.plane  # (h, w, q) codebook grids: the template runs over (h, w * q), codebooks side by side
    y, x = i // W, i % W
    rows = []
    for dy, dx in offsets:
        yy, xx = y + dy, x + dx
        ok = (yy >= 0) & (xx >= 0) & (xx < W)
        rows.append(torch.where(ok, yy * W + xx, -1))
    return torch.stack(rows) if rows else torch.zeros(0, L, dtype=torch.long)


def _unique(key: Tensor, bound: int, counts: bool = False) -> tuple[Tensor, Tensor]:
    """``torch.unique(key, return_inverse or return_counts)`` for keys in [0, bound): by marking a dense
    array when bound is within a few times len(key) (linear time), else by sorting."""
    if bound <= 4 * key.numel() + (1 << 20):
        if counts:
            c = torch.bincount(key, minlength=bound)
            u = c.nonzero().squeeze(1)
            return u, c[u]
        present = torch.zeros(bound, dtype=torch.bool, device=key.device)
        present[key] = True
        return present.nonzero().squeeze(1), (torch.cumsum(present, 0) - 1)[key]
    if counts:
        return torch.unique(key, return_counts=True)
    return torch.unique(key, return_inverse=True)


@dataclass
class NGramConfig(ComponentConfig):
    """Count-based context model over local parents (see the module docstring)."""

    ngram_order: int = 3  # parents per position (1-D: the previous tokens; grids: cells of the template)
    ngram_template: str = "jbig"  # jbig (causal neighbourhood, nearest first, <= 14) | raster (previous tokens)
    ngram_smoothing: str = "kneser_ney"  # kneser_ney | witten_bell (back-off) | add_alpha (top context only)
    ngram_alpha: float = 0.5  # pseudo-count per token
    ngram_discount: float | None = None  # absolute discount in (0, 1] (default: n1 / (n1 + 2 n2) per level)
    ngram_position: bool = False  # the position itself as the last (most specific) parent


@ARCHS.register("ngram", config=NGramConfig)
class NGramNet(PriorNet):
    variable_length = True  # position i's parents are all earlier positions, so a prefix is fine
    supports_cache = True  # a step is a lookup of position pos's parents in the buffer
    fitted_by_counting = True  # train-prior calls ``fit`` instead of the gradient loop

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        if config.ngram_template not in TEMPLATES:
            raise ValueError(f"ngram_template must be one of {TEMPLATES}, got {config.ngram_template!r}")
        if config.ngram_smoothing not in SMOOTHINGS:
            raise ValueError(f"ngram_smoothing must be one of {SMOOTHINGS}, got {config.ngram_smoothing!r}")
        limit = len(JBIG_TEMPLATE) if (len(config.shape) >= 2 and config.ngram_template == "jbig") else 64
        if not 0 <= config.ngram_order <= limit:
            raise ValueError(f"ngram_order must be in [0, {limit}] for this template, got {config.ngram_order}")
        if config.ngram_alpha <= 0:
            raise ValueError(f"ngram_alpha must be > 0, got {config.ngram_alpha}")
        if config.ngram_discount is not None and not 0 < config.ngram_discount <= 1:
            raise ValueError(f"ngram_discount must be in (0, 1] or None, got {config.ngram_discount}")
        V, L = config.vocab_size, config.seq_len
        self.register_buffer("src", parent_sources(config), persistent=False)  # [k, L]
        # parent ranges, level 1.. (level 0 is the empty context): tokens (+ pad), [position], [label]
        self.ranges = [V + 1] * config.ngram_order + ([L] if config.ngram_position else [])
        self.conditional = config.num_classes > 0
        if self.conditional:
            self.ranges.append(config.num_classes + 1)  # the null label num_classes is never counted
        self.levels = 1 + len(self.ranges)
        self.top_raw = self.levels - 1 - int(self.conditional)  # the deepest label-free level
        for j in range(self.levels):
            for name, dtype in zip(_TABLES, (torch.long, torch.long, torch.long, torch.float64, torch.float64)):
                self.register_buffer(f"{name}_{j}", torch.zeros(0 if name != "off" else 1, dtype=dtype))
        self.register_buffer("discount", torch.full((self.levels,), 0.75, dtype=torch.float64))
        self._dense_cache: dict[int, tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = {}

    # ------------------------------------------------------------------ storage
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the tables' sizes are set by fit: take the saved shapes before the copy
        for j in range(self.levels):
            for name in _TABLES:
                key = f"{prefix}{name}_{j}"
                if key in state_dict:
                    old = getattr(self, f"{name}_{j}")
                    setattr(self, f"{name}_{j}", torch.empty(state_dict[key].shape, dtype=old.dtype, device=old.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def table(self, j: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return tuple(getattr(self, f"{name}_{j}") for name in _TABLES)  # type: ignore[return-value]

    # ------------------------------------------------------------------ parents
    def _parents(self, x: Tensor, labels: Tensor | None, positions: Tensor | None = None) -> list[Tensor]:
        """The parent values of each level 1.. for x [B, L'] (every position, or only ``positions``
        [P] when given): a list of int64 [B, P]."""
        B, Lp = x.shape
        pos = torch.arange(Lp, device=x.device) if positions is None else positions
        out = []
        if self.config.ngram_order:
            padded = torch.cat([x, torch.full((B, 1), self.config.vocab_size, dtype=x.dtype, device=x.device)], 1)
            src = self.src[:, pos]
            src = torch.where(src >= 0, src, Lp)  # [k, P]: out-of-grid parents read the pad column
            out += [padded.gather(1, src[r].expand(B, -1)) for r in range(self.config.ngram_order)]
        if self.config.ngram_position:
            out.append(pos.expand(B, -1))
        if self.conditional:
            lab = labels if labels is not None else torch.full((B,), self.config.num_classes, device=x.device)
            out.append(lab[:, None].expand(B, len(pos)))
        return out

    def _lookup(self, j: int, parent_idx: Tensor, s: Tensor) -> Tensor:
        """Index of each query's level-j context (j >= 1) in level j's table, or -1 (unseen). parent_idx
        (level j-1 indices, -1 = unseen), s (parent j's values): int64 [Q]."""
        key = torch.add(s, parent_idx, alpha=self.ranges[j - 1])  # negative when the parent context is unseen
        child = self._derived(j)[0]
        if child is not None:
            return child[key]  # keys in [-R, 0) read the trailing -1s
        ctx = getattr(self, f"ctx_{j}")
        if ctx.numel() == 0:
            return torch.full_like(key, -1)
        i = torch.searchsorted(ctx, key).clamp_(max=ctx.numel() - 1)
        return torch.where(ctx[i] == key, i, -1)

    def _mix(self, j: int, c: Tensor, n: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Level j's smoothing as p_j = a + b p_{j-1} from counts c [Q, V] (or [Q, 1]: one symbol's), totals n [Q], distinct t [Q]
        (n = 0: an unseen context, a = 0 and b = 1)."""
        mode, seen = self.config.ngram_smoothing, n > 0
        n1 = n.clamp(min=1e-300)
        if mode == "kneser_ney":
            D = self.discount[j]
            a, b = (c - D).clamp(min=0) / n1[:, None], D * t / n1
        elif mode == "witten_bell":
            a, b = c / (n1 + t)[:, None], t / (n1 + t)
        else:  # add_alpha: the top contexts only, no back-off to shorter contexts
            al = self.config.ngram_alpha
            a, b = (c + al) / (n + al * self.config.vocab_size)[:, None], torch.zeros_like(n)
        return torch.where(seen[:, None], a, 0.0), torch.where(seen, b, 1.0)

    def _derived(self, j: int) -> tuple[Tensor | None, Tensor | None]:
        """Lookup tables built once per fitted, loaded or moved level: ``child`` int64 [M_{j-1} R_j + R_j]
        (context key -> index in level j, -1 when unseen, trailing -1s for unseen parents) and ``ab`` float64
        [M_j + 1, V + 1] (row m: level j's a | b for context m; the last row, read by index -1, is a = 0,
        b = 1). Either is None when too large (then keys are binary-searched and rows built from the CSR)."""
        ctx, off, sym, cnt, tot = self.table(j)
        hit = self._dense_cache.get(j)
        if hit is not None and hit[0] is ctx and hit[1] is cnt:
            return hit[2], hit[3]
        V, M = self.config.vocab_size, ctx.numel()
        child = None
        if j:
            R = self.ranges[j - 1]
            bound = getattr(self, f"ctx_{j - 1}").numel() * R + R
            if bound <= DENSE_LIMIT:
                child = torch.full((bound,), -1, dtype=torch.long, device=ctx.device)
                child[ctx] = torch.arange(M, device=ctx.device)
        ab = None
        if (M + 1) * (V + 1) <= DENSE_LIMIT:
            length = off[1:] - off[:-1]
            c = torch.zeros(M + 1, V, dtype=torch.float64, device=ctx.device)
            c[torch.repeat_interleave(torch.arange(M, device=ctx.device), length), sym] = cnt
            zero = torch.zeros(1, dtype=torch.float64, device=ctx.device)
            a, b = self._mix(j, c, torch.cat([tot, zero]), torch.cat([length.double(), zero]))
            ab = torch.cat([a, b[:, None]], 1)
        self._dense_cache[j] = (ctx, cnt, child, ab)
        return child, ab

    def _coefs(self, j: int, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(a [Q, V], b [Q, 1]) of the level-j contexts idx [Q] (-1: unseen)."""
        ab = self._derived(j)[1]
        if ab is not None:
            rows = ab[idx]
            return rows[:, :-1], rows[:, -1:]
        _, off, sym, cnt, tot = self.table(j)
        Q, V = idx.shape[0], self.config.vocab_size
        c = torch.zeros(Q, V, dtype=torch.float64, device=idx.device)
        n = torch.zeros(Q, dtype=torch.float64, device=idx.device)
        t = torch.zeros(Q, dtype=torch.float64, device=idx.device)
        rows = (idx >= 0).nonzero().squeeze(1)
        if rows.numel():
            ci = idx[rows]
            start, length = off[ci], off[ci + 1] - off[ci]
            r = torch.repeat_interleave(rows, length)
            first = torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
            e = torch.repeat_interleave(start, length) + torch.arange(r.numel(), device=idx.device) - first
            c[r, sym[e]] = cnt[e]
            n[rows] = tot[ci]
            t[rows] = length.double()
        a, b = self._mix(j, c, n, t)
        return a, b[:, None]

    def _chain(self, parents: list[Tensor], Q: int, tok: Tensor | None = None) -> Tensor:
        """Walk the levels, p_j = a_j + b_j p_{j-1} from the uniform distribution up: parents per level 1.., int64
        [Q] -> p float64 [Q, V], or [Q] (the probability of ``tok`` [Q] only) when ``tok`` is given."""
        device, V = self.ctx_0.device, self.config.vocab_size
        idx = torch.full((Q,), 0 if self.ctx_0.numel() else -1, dtype=torch.long, device=device)
        p = torch.full((Q,) if tok is not None else (Q, V), 1.0 / V, dtype=torch.float64, device=device)
        used = range(self.levels) if self.config.ngram_smoothing != "add_alpha" else (self.top_raw, self.levels - 1)
        for j in range(self.levels):
            if j:
                idx = self._lookup(j, idx, parents[j - 1])
            if j in used:
                a, b = self._coefs(j, idx) if tok is None else self._token_coefs(j, idx, tok)
                p = torch.addcmul(a, b, p)
        return p

    def _log_probs(self, parents: list[Tensor], Q: int) -> Tensor:
        """parents: per level 1.., int64 [Q] -> log p float64 [Q, V]."""
        return self._chain(parents, Q).log()

    def _token_coefs(self, j: int, idx: Tensor, tok: Tensor) -> tuple[Tensor, Tensor]:
        """(a [Q], b [Q]) of level j for one symbol per query: ``_coefs`` read at column ``tok`` [Q], without
        building [Q, V] rows (the count of tok in context idx is found by binary search in the sorted pair keys)."""
        ab = self._derived(j)[1]
        V = self.config.vocab_size
        if ab is not None:
            return ab[idx, tok], ab[idx, V]
        ctx, off, sym, cnt, tot = self.table(j)
        Q = idx.shape[0]
        c = torch.zeros(Q, dtype=torch.float64, device=idx.device)
        n, t = torch.zeros_like(c), torch.zeros_like(c)
        rows = (idx >= 0).nonzero().squeeze(1)
        if rows.numel() and sym.numel():
            ci = idx[rows]
            length = off[1:] - off[:-1]
            keys = torch.repeat_interleave(torch.arange(ctx.numel(), device=idx.device), length) * V + sym
            want = ci * V + tok[rows]
            pos = torch.searchsorted(keys, want).clamp_(max=keys.numel() - 1)
            c[rows] = torch.where(keys[pos] == want, cnt[pos], 0.0)
            n[rows], t[rows] = tot[ci], length[ci].double()
        a, b = self._mix(j, c[:, None], n, t)
        return a[:, 0], b

    def sequence_log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x) float64 [B] of x int64 [B, L]: the product of the same conditionals as ``forward``, each read for
        the token that is there only (no [B, L, V] distribution: scoring a grid costs O(levels) per position)."""
        B, Lp = x.shape
        parents = [s.reshape(-1) for s in self._parents(x, labels)]
        return self._chain(parents, B * Lp, x.reshape(-1)).log().reshape(B, Lp).sum(1)

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        B, Lp = x.shape
        parents = [s.reshape(-1) for s in self._parents(x, labels)]
        return self._log_probs(parents, B * Lp).reshape(B, Lp, -1).float()

    def init_cache(self, batch_size: int, device: torch.device) -> dict:
        return {}  # the buffer x holds everything a step reads

    def step(self, cache: dict, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        B = x.shape[0]
        parents = [s.reshape(-1) for s in self._parents(x, labels, torch.tensor([pos], device=x.device))]
        return self._log_probs(parents, B).float()  # [B, V]

    def reorder_cache(self, cache: dict, index: Tensor) -> None:
        """Nothing to keep: the cache is empty, a step reads its parents from the buffer (beam search)."""

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Count every level's (context, token) pairs. x: int64 [N, L] in [0, V); labels: int64 [N] in
        [0, num_classes) or None (then a conditional prior's label level stays empty and every label backs
        off to the unconditional counts). Replaces any previous fit."""
        self._store(*self._count(*self._checked(x, labels)))

    @torch.no_grad()
    def fit_chunks(self, chunks: Iterable[tuple[Tensor, Tensor | None]]) -> None:
        """``fit`` on the rows of every chunk (x int64 [n, L], labels int64 [n] or None), one chunk in memory at a
        time: each chunk's levels are counted as ``fit`` counts them, and the counts are merged (``_merge``: the
        (context, token) pairs re-keyed into the union of the contexts, the integer counts of equal pairs added)
        before the smoothing is computed once on the totals, so every table and discount is exactly ``fit``'s on
        the concatenation. Memory: one chunk and the distinct contexts and pairs (up to a few times, while runs of
        counts wait to be merged), not the corpus. Merges pair runs of similar size (as in a log-structured merge),
        so the work is O(pairs log chunks) rather than a merge of everything so far per chunk."""
        runs: list[_Counts] = []
        for x, labels in chunks:
            x, labels = self._checked(x, labels)
            if not x.shape[0]:
                continue
            runs.append(self._count(x, labels))
            while len(runs) > 1 and 2 * _size(runs[-1]) >= _size(runs[-2]):
                last = runs.pop()
                runs.append(self._merge(runs.pop(), last))
        if not runs:
            raise ValueError("fit_chunks: no grids to count")
        while len(runs) > 1:
            last = runs.pop()
            runs.append(self._merge(runs.pop(), last))
        self._store(*runs[0])

    def _checked(self, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x as int64 on the tables' device, and the labels to count (None for an unconditional prior, or none
        given), after checking their shapes and ranges."""
        cfg = self.config
        V, L = cfg.vocab_size, cfg.seq_len
        if x.dim() != 2 or x.shape[1] != L or x.dtype.is_floating_point:
            raise ValueError(f"fit expects integer tokens [N, {L}], got {x.dtype} {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() >= V):
            raise ValueError(f"tokens must lie in [0, {V})")
        x = x.long().to(self.ctx_0.device)
        if self.conditional and labels is not None:
            labels = labels.long().to(x.device)
            if labels.shape != (x.shape[0],) or (labels.numel() and (labels.min() < 0 or labels.max() >= cfg.num_classes)):
                raise ValueError(f"labels must be int64 [{x.shape[0]}] in [0, {cfg.num_classes})")
        else:
            labels = None
        return x, labels

    def _count(self, x: Tensor, labels: Tensor | None) -> _Counts:
        """The raw counts of checked x [N, L] (and labels): per level, the sorted context keys [M_j], and the
        sorted (context, token) pair keys (context index * V + token) [P_j] with their int64 counts [P_j]."""
        V = self.config.vocab_size
        tokens = x.reshape(-1)
        n = tokens.numel()
        idx = torch.zeros_like(tokens)  # each position's context index at the current level
        M = 1 if n else 0  # contexts at the current level
        parents = self._parents(x, labels) if n else []
        pairs: list[tuple[Tensor, Tensor]] = []  # per level: sorted unique pair keys, raw counts
        ctxs: list[Tensor] = []
        for j in range(self.levels):
            if j == 0:
                ctx = torch.zeros(M, dtype=torch.long, device=x.device)
            elif self.conditional and j == self.levels - 1 and labels is None:  # no labels: no label contexts
                ctx, idx = torch.zeros(0, dtype=torch.long, device=x.device), idx[:0]
                tokens = tokens[:0]
            else:
                R = self.ranges[j - 1]
                ctx, idx = _unique(torch.add(parents[j - 1].reshape(-1), idx, alpha=R), M * R)
            M = ctx.numel()
            ctxs.append(ctx)
            pairs.append(_unique(torch.add(tokens, idx, alpha=V), M * V, counts=True))
        return ctxs, pairs

    def _merge(self, a: _Counts, b: _Counts) -> _Counts:
        """The counts of a's rows and b's together, as ``_count`` would give them on both at once. Level by level:
        each side's keys are re-keyed through the map of its parent contexts into the merged level below (the maps
        are increasing, so the order of keys is kept), the merged contexts are the sorted union, and the counts of
        equal pairs are added (integers: exact)."""
        V = self.config.vocab_size
        ctxs: list[Tensor] = []
        pairs: list[tuple[Tensor, Tensor]] = []
        maps: list[Tensor] = []  # a's and b's context index -> merged index, at the level below
        for j in range(self.levels):
            keys = [a[0][j], b[0][j]]
            if j:
                R = self.ranges[j - 1]
                keys = [m[k // R] * R + k % R for m, k in zip(maps, keys)]
            ctx = torch.unique(torch.cat(keys))
            maps = [torch.searchsorted(ctx, k) for k in keys]
            pk = [m[p // V] * V + p % V for m, (p, _) in zip(maps, (a[1][j], b[1][j]))]
            u, inv = torch.unique(torch.cat(pk), return_inverse=True)
            c = torch.zeros(u.numel(), dtype=torch.long, device=u.device).index_add_(0, inv, torch.cat([a[1][j][1],
                                                                                                       b[1][j][1]]))
            ctxs.append(ctx)
            pairs.append((u, c))
        return ctxs, pairs

    def _store(self, ctxs: list[Tensor], raw: list[tuple[Tensor, Tensor]]) -> None:
        """Set every level's tables and discount from the raw counts (``_count``, ``_merge``)."""
        cfg = self.config
        V, device = cfg.vocab_size, ctxs[0].device
        pairs = [(pk, pc.double()) for pk, pc in raw]
        counts = [pc for _, pc in pairs]
        if cfg.ngram_smoothing == "kneser_ney":
            # continuation counts below the top label-free level: how many distinct level-(j+1) contexts saw x
            for j in range(self.top_raw - 1, -1, -1):
                pk1 = pairs[j + 1][0]
                parent = ctxs[j + 1][pk1 // V] // self.ranges[j]
                pos = torch.searchsorted(pairs[j][0], parent * V + pk1 % V)
                counts[j] = torch.bincount(pos, minlength=pairs[j][0].numel()).double()
        for j in range(self.levels):
            pk, c = pairs[j][0], counts[j]
            M = ctxs[j].numel()
            ci = pk // V
            off = torch.zeros(M + 1, dtype=torch.long, device=device)
            off[1:] = torch.cumsum(torch.bincount(ci, minlength=M), 0)
            tot = torch.zeros(M, dtype=torch.float64, device=device).index_add_(0, ci, c)
            for name, value in zip(_TABLES, (ctxs[j], off, pk % V, c, tot)):
                setattr(self, f"{name}_{j}", value.contiguous())
            if cfg.ngram_discount is not None:
                d = cfg.ngram_discount
            else:
                n1, n2 = float((c == 1).sum()), float((c == 2).sum())
                d = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5
            self.discount[j] = min(max(d, 0.05), 0.95)


# per level: sorted context keys [M_j]; sorted (context index * V + token) pair keys [P_j] and their int64 counts
_Counts = tuple[list[Tensor], list[tuple[Tensor, Tensor]]]


def _size(counts: _Counts) -> int:
    """How many keys a run of counts holds (contexts and pairs, every level)."""
    return sum(c.numel() for c in counts[0]) + sum(k.numel() for k, _ in counts[1])
