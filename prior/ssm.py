"""State-space prior: a stack of diagonal linear state-space layers (S4D: Gu et al. 2022, "On the Parameterization
and Initialization of Diagonal State Space Models", with its S4D-Lin initialisation).

Each layer runs ``ssm_dim`` independent channels, each a linear recurrence over ``ssm_state`` complex modes (and
their conjugates, so the output is real): for channel h and mode n, with the zero-order-hold discretisation of the
continuous system x' = A x + u at step dt,

    s_t = exp(dt A) s_{t-1} + u_t,        y_t = 2 Re(sum_n C~_n s_t,n) + D u_t,        C~ = C (exp(dt A) - 1) / A.

Unrolled, y = K * u + D u is a causal convolution with the kernel K[k] = 2 Re(sum_n C~_n exp(dt A_n)^k): training and
``log_prob`` run it for the whole sequence at once (a direct convolution within chunks of 64 positions, the state
carried from chunk to chunk: O(L) for a fixed chunk, and exactly causal), and decoding runs the recurrence, O(1) per
token whatever the position (a Transformer's step grows with the prefix). The two are the same function; a test
checks them against each other. Re(A) < 0 keeps every mode stable at any length.

The input at position i is the embedding of x[i - 1] (a learned start vector at 0), plus a label embedding for
conditional priors (the last row is the null label of classifier-free guidance). Blocks are pre-norm: SSM, GELU, a
GLU projection, residual. The recurrence needs no position embedding; the layer runs in float32 under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io.components import ComponentConfig

from .config import ARCHS, PriorConfig
from .net import PriorNet

CHUNK = 64  # positions convolved directly at once; the state is carried between chunks


@dataclass
class SSMConfig(ComponentConfig):
    """A stack of S4D diagonal state-space layers: linear-time training, constant-time decoding steps."""

    ssm_layers: int = 2  # state-space blocks
    ssm_dim: int = 64  # channels of the residual stream (each an independent state-space system)
    ssm_state: int = 16  # complex modes per channel (S4D's N / 2)
    ssm_dt_min: float = 1e-3  # smallest initial step size dt: the longest memory (timescale ~ 1 / dt tokens)
    ssm_dt_max: float = 1e-1  # largest initial step size dt: the shortest memory

    def finalize(self, parent: Any) -> None:
        if min(self.ssm_layers, self.ssm_dim, self.ssm_state) < 1:
            raise ValueError(f"ssm_layers, ssm_dim and ssm_state must be >= 1, got {self.ssm_layers}, "
                             f"{self.ssm_dim}, {self.ssm_state}")
        if not 0 < self.ssm_dt_min <= self.ssm_dt_max:
            raise ValueError(f"need 0 < ssm_dt_min <= ssm_dt_max, got {self.ssm_dt_min}, {self.ssm_dt_max}")


class DiagonalSSM(nn.Module):
    """One S4D layer: u float [B, L, H] -> y float [B, L, H] (the convolution), or one step of the recurrence."""

    def __init__(self, channels: int, modes: int, dt_min: float, dt_max: float):
        super().__init__()
        H, N = channels, modes
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_neg_re = nn.Parameter(torch.full((H, N), math.log(0.5)))  # Re(A) = -exp(.) = -1/2 (S4D-Lin)
        self.im = nn.Parameter(math.pi * torch.arange(N).float().expand(H, N).clone())  # Im(A) = pi n (S4D-Lin)
        self.C = nn.Parameter(torch.randn(H, N, 2) * math.sqrt(0.5))  # complex C as (real, imaginary)
        self.D = nn.Parameter(torch.ones(H))

    def _discrete(self) -> tuple[Tensor, Tensor]:
        """(dtA complex [H, N], C~ complex [H, N]): the discretised decay exponent and the output weights."""
        A = torch.complex(-torch.exp(self.log_neg_re.float()), self.im.float())
        dtA = A * torch.exp(self.log_dt.float())[:, None]
        C = torch.view_as_complex(self.C.float().contiguous())
        return dtA, C * (torch.exp(dtA) - 1) / A

    def kernel(self, length: int) -> Tensor:
        """K float32 [H, length]: K[h, k] = 2 Re(sum_n C~ exp(dtA)^k)."""
        dtA, Ct = self._discrete()
        powers = torch.exp(dtA[..., None] * torch.arange(length, device=dtA.device))  # [H, N, L]
        return 2 * torch.einsum("hn,hnl->hl", Ct, powers).real

    def forward(self, u: Tensor) -> Tensor:
        """The convolution y = K * u + D u, in chunks of ``CHUNK`` positions: a direct causal convolution inside a
        chunk, the recurrence's state carried across chunks. Every output is computed from earlier inputs only, so
        a later token cannot change it even by a rounding error (one FFT over the whole sequence would)."""
        B, L, H = u.shape
        with torch.autocast(u.device.type, enabled=False):  # complex powers: float32 at least
            x = u.float().transpose(1, 2)  # [B, H, L]
            c = min(L, CHUNK)
            n = -(-L // c)  # chunks
            xc = F.pad(x, (0, n * c - L)).view(B, H, n, c).permute(0, 2, 1, 3)  # [B, n, H, c]
            rows = xc.reshape(B * n, H, c)
            intra = F.conv1d(F.pad(rows, (c - 1, 0)), self.kernel(c).flip(-1)[:, None], groups=H)
            if n == 1:  # one chunk: nothing enters it from before
                return (intra[..., :L] + self.D.float()[:, None] * x).transpose(1, 2)
            dtA, Ct = self._discrete()
            steps = torch.arange(c, device=x.device)
            to_end = torch.exp(dtA[..., None] * (c - 1 - steps))  # dA^(c-1-j): input j's weight in the end state
            ends = torch.einsum("bkhc,hnc->bkhn", xc.to(to_end.dtype), to_end)  # each chunk's own end state
            decay, prev, before = torch.exp(dtA * c), torch.zeros_like(ends[:, 0]), []
            for k in range(n):  # the state entering chunk k: a recurrence over the n chunks
                before.append(prev)
                prev = decay * prev + ends[:, k]
            from_past = torch.exp(dtA[..., None] * (steps + 1))  # dA^(t+1): the entering state at offset t
            inter = 2 * torch.einsum("bkhn,hn,hnc->bkhc", torch.stack(before, 1), Ct, from_past).real
            y = (intra.view(B, n, H, c) + inter).permute(0, 2, 1, 3).reshape(B, H, n * c)[..., :L]
            y = y + self.D.float()[:, None] * x
        return y.transpose(1, 2)

    def step(self, state: Tensor | None, u: Tensor) -> tuple[Tensor, Tensor]:
        """One token: u float [B, H], state complex [B, H, N] or None (before the first) -> (y float [B, H], state)."""
        with torch.autocast(u.device.type, enabled=False):
            dtA, Ct = self._discrete()
            x = u.float()
            state = x[..., None].to(Ct.dtype) if state is None else torch.exp(dtA) * state + x[..., None]
            y = 2 * (Ct * state).sum(-1).real + self.D.float() * x
        return y, state


class SSMBlock(nn.Module):
    """Pre-norm residual block: x + W_glu(GELU(SSM(LayerNorm(x))))."""

    def __init__(self, c: PriorConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.ssm_dim)
        self.ssm = DiagonalSSM(c.ssm_dim, c.ssm_state, c.ssm_dt_min, c.ssm_dt_max)
        self.out = nn.Linear(c.ssm_dim, 2 * c.ssm_dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.glu(self.out(F.gelu(self.ssm(self.norm(x)))), dim=-1)

    def step(self, state: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self.ssm.step(state, self.norm(x))
        return x + F.glu(self.out(F.gelu(y.to(x.dtype))), dim=-1), state


@dataclass
class SSMCache:
    """Per layer, the complex state [B, H, N] after the inputs fed so far (None before the first); the next pos."""

    states: list[Tensor | None]
    pos: int = 0


@ARCHS.register("ssm", config=SSMConfig)
class SSMNet(PriorNet):
    """forward: x int64 [B, L'] in [0, V) (any L' <= L), labels int64 [B] in [0, num_classes] or None -> logits
    float [B, L', V]; ``step``: the recurrence, one position at a time (see the module docstring)."""

    variable_length = True
    supports_cache = True

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        E = config.ssm_dim
        self.embed = nn.Embedding(config.vocab_size, E)
        self.start = nn.Parameter(torch.zeros(E))
        self.label_embed = nn.Embedding(config.num_classes + 1, E) if config.num_classes else None
        self.blocks = nn.ModuleList(SSMBlock(config) for _ in range(config.ssm_layers))
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, config.vocab_size)

    def _inputs(self, prev: Tensor | None, labels: Tensor | None, batch: int) -> Tensor:
        """Embeddings of the previous tokens prev int64 [B, L'] (None: the start vector) -> float [B, L', E]."""
        inp = self.start.expand(batch, 1, -1) if prev is None else self.embed(prev)
        if labels is not None and self.label_embed is not None:
            inp = inp + self.label_embed(labels)[:, None]
        return inp

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        h = torch.cat([self._inputs(None, labels, B), self._inputs(x[:, :-1], labels, B)], 1)  # [B, L', E]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def init_cache(self, batch_size: int, device: torch.device) -> SSMCache:
        return SSMCache([None] * len(self.blocks))

    def step(self, cache: SSMCache, x: Tensor, pos: int, labels: Tensor | None) -> Tensor:
        """Logits [B, V] for position ``pos``, reading only x[:, pos - 1]; pos = 0, 1, ... in order."""
        if pos != cache.pos:
            raise ValueError(f"SSMNet.step must be called for consecutive positions: expected {cache.pos}, got {pos}")
        h = self._inputs(None if pos == 0 else x[:, pos - 1: pos], labels, x.shape[0])[:, 0]  # [B, E]
        for i, block in enumerate(self.blocks):
            h, cache.states[i] = block.step(cache.states[i], h)
        cache.pos = pos + 1
        return self.head(self.norm(h))

    def reorder_cache(self, cache: SSMCache, index: Tensor) -> None:
        """Beam search: keep the states of rows ``index`` (int64 [B'])."""
        cache.states = [None if s is None else s[index] for s in cache.states]
