"""``Prior``: the public wrapper every architecture shares (validation, log_prob, sampling, save/load).

Each architecture is a ``PriorNet`` working on flat raster sequences ``[B, L]``; ``Prior`` reshapes to and
from the grid, handles labels (index ``num_classes`` is the null label used for classifier-free guidance),
and runs the decoding loop.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vqgen_io import FolderMixin

from .config import ARCHS, PriorConfig
from .sampling import check_sampling_args, logits_to_probs, sample_from_probs


class Prior(nn.Module, FolderMixin, library_name="vqgen", tags=["vqgen", "prior"]):
    """An autoregressive model p(grid [| label]) over integer grids of ``config.shape``.

    tokens: int64 [B, *shape] in [0, vocab_size); labels: int64 [B] in [0, num_classes) or None. ``shape``
    may end in a codebook axis (t, q) / (h, w, q) (``config.num_codebooks``); see ``PriorConfig``.
    """

    config_class = PriorConfig
    kind = "prior"

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        net_class = ARCHS.get(config.arch)  # the architecture registered under that name (prior/<arch>.py)
        if config.codebook_pattern == "delay":  # MusicGen's delay pattern over (t, q) grids: the arch's delay net
            net_class = net_class.delay_net
        self.net = net_class(config)

    @property
    def device(self) -> torch.device:
        """Where the prior lives: its parameters' device, else its buffers' (count-based priors have only buffers)."""
        return next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device

    # ------------------------------------------------------------------ validation
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config.shape)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def check_tokens(self, tokens: Tensor, values: bool = True) -> None:
        """Raise ``ValueError`` unless tokens is an integer [B, *shape] tensor with values in [0, vocab_size).
        ``values=False`` checks only dtype and shape (no host sync: for data validated where it was loaded)."""
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tuple(tokens.shape[1:]) != self.shape:
            raise ValueError(
                f"this prior models grids of shape {self.shape}, got tokens of shape {tuple(tokens.shape)} "
                f"(expected [B, {', '.join(map(str, self.shape))}])"
            )
        if values and tokens.numel() and (tokens.min().item() < 0 or tokens.max().item() >= self.vocab_size):
            raise ValueError(
                f"tokens must lie in [0, {self.vocab_size}), got range [{tokens.min().item()}, {tokens.max().item()}]; "
                "is this prior trained on the same tokenizer?"
            )

    def _labels(self, labels: Tensor | int | None, batch: int, device: torch.device,
                values: bool = True) -> Tensor | None:
        k = self.config.num_classes
        if k == 0:
            if labels is not None:
                raise ValueError("this prior is unconditional (num_classes=0) but labels were given")
            return None
        if labels is None:
            raise ValueError(f"this prior is conditional (num_classes={k}): pass labels in [0, {k})")
        labels = torch.as_tensor(labels, device=device)
        if labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape [{batch}], got {tuple(labels.shape)}")
        if values and labels.numel() and (labels.min().item() < 0 or labels.max().item() >= k):
            raise ValueError(f"labels must lie in [0, {k}), got range [{labels.min().item()}, {labels.max().item()}]")
        return labels.long()

    # ------------------------------------------------------------------ likelihood
    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """tokens int64 [B, *shape] -> logits float [B, *shape, vocab_size] (position i sees tokens < i)."""
        self.check_tokens(tokens)
        lab = self._labels(labels, tokens.shape[0], tokens.device)
        logits = self.net(tokens.reshape(tokens.shape[0], -1).long(), lab)
        return logits.reshape(*tokens.shape, self.vocab_size)

    def log_prob(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Natural-log likelihood of each whole grid: float [B] (sum over positions)."""
        self.check_tokens(tokens)
        flat = tokens.reshape(tokens.shape[0], -1).long()
        lab = self._labels(labels, tokens.shape[0], tokens.device)
        lp = self.net.sequence_log_prob(flat, lab)
        if lp is not None:  # a net whose likelihood is not one product of conditionals (MADE ensemble)
            return lp
        logits = self.net(flat, lab).float()
        return torch.log_softmax(logits, -1).gather(-1, flat.unsqueeze(-1)).squeeze(-1).sum(1)

    def loss(self, tokens: Tensor, labels: Tensor | None = None, check_values: bool = True) -> Tensor:
        """Training loss: mean negative log-likelihood per token in nats (scalar). In training mode a
        conditional prior replaces each label by the null label with probability ``label_dropout`` so that
        it also learns p(grid) for classifier-free guidance. ``check_values=False`` skips the token and
        label range checks (each a host sync): for data validated when it was loaded, as the trainer's is."""
        self.check_tokens(tokens, values=check_values)
        lab = self._labels(labels, tokens.shape[0], tokens.device, values=check_values)
        if lab is not None and self.training and self.config.label_dropout > 0:
            drop = torch.rand(lab.shape, device=lab.device) < self.config.label_dropout
            lab = torch.where(drop, torch.full_like(lab, self.config.num_classes), lab)
        flat = tokens.reshape(tokens.shape[0], -1).long()
        logits = self.net(flat, lab)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size).float(), flat.reshape(-1))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | int | None = None, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, cfg_scale: float | None = None, generator: torch.Generator | None = None,
               use_cache: bool = True, progress: bool = False) -> Tensor:
        """Draw ``n`` grids: int64 [n, *shape] in [0, vocab_size).

        temperature (0 = greedy), top_k, top_p (nucleus, in (0, 1]) filter each step's distribution;
        cfg_scale (conditional priors) mixes logits as uncond + s * (cond - uncond). The same
        ``generator`` state gives the same tokens with ``use_cache`` True or False.
        """
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        device = self.device
        lab = self._labels(labels, n, device)
        guided = cfg_scale is not None and cfg_scale != 1.0
        if guided and lab is None:
            raise ValueError("cfg_scale needs a conditional prior (num_classes > 0) and labels")
        if guided:
            lab = torch.cat([lab, torch.full_like(lab, self.config.num_classes)])
        was_training = self.training
        self.eval()
        L, b = self.config.seq_len, (2 * n if guided else n)
        x = torch.zeros(b, L, dtype=torch.long, device=device)
        order = self.net.decode_order
        raster = order is None
        # a net with its own decode_order and supports_cache steps in that order (the delay pattern)
        cache = self.net.init_cache(b, device) if (use_cache and self.net.supports_cache) else None
        positions = range(L) if raster else order.tolist()
        for pos in tqdm(positions, desc="sampling", disable=not progress, leave=False):
            if cache is not None:
                logits = self.net.step(cache, x, pos, lab)
            else:
                inp = x[:, : pos + 1] if (self.net.variable_length and raster) else x
                logits = self.net(inp, lab)[:, pos]
            if guided:
                cond, uncond = logits.float().chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            tok = sample_from_probs(logits_to_probs(logits, temperature, top_k, top_p), generator)
            x[:, pos] = tok.repeat(2) if guided else tok
        self.train(was_training)
        return x[:n].reshape(n, *self.shape)

    def model_card(self, extra: dict[str, Any] | None = None) -> str:
        import json

        extra = extra or {}
        c = self.config
        lines = ["---", "library_name: vqgen", "license: mit", "tags:", "- vqgen", "- prior", "- autoregressive",
                 f"- {c.arch}", "---", "", f"# vqgen prior ({c.arch})", "",
                 f"An autoregressive model over integer grids of shape {tuple(c.shape)} with vocabulary {c.vocab_size}"
                 + (f", conditioned on {c.num_classes} classes." if c.num_classes else "."), ""]
        if extra.get("tokens"):
            lines += [f"Trained on tokens from `{extra['tokens']}`" + (f" for {extra['steps']} steps." if extra.get("steps") else "."), ""]
        if extra.get("metrics"):
            lines += ["Held-out metrics:", "", "```json", json.dumps(extra["metrics"], indent=2), "```", ""]
        lines += ["```python", "from prior import load_prior", "prior = load_prior('path/to/this/folder')",
                  "grids = prior.sample(16" + (", labels=0" if c.num_classes else "") + ")  # int64 [16, "
                  + ", ".join(map(str, c.shape)) + "]", "```", ""]
        return "\n".join(lines)

    def beam_search(self, beam_size: int = 4, labels: Tensor | int | None = None, use_cache: bool = True,
                    progress: bool = False) -> Any:
        """The most likely grid (per label) by beam search: ``(tokens [n, *shape], log_probs [n])``. For finding
        a high-likelihood grid, not for creative sampling (its output is repetitive, low-entropy); see
        ``prior.beam_search.beam_search``."""
        from .beam_search import beam_search

        return beam_search(self, beam_size, labels, use_cache=use_cache, progress=progress)


def build_prior(config: PriorConfig | None = None, **overrides: Any) -> Prior:
    """A freshly initialised ``Prior`` for ``config`` (default ``PriorConfig()``), with field overrides."""
    if config is None:
        config = PriorConfig(**overrides)
    elif overrides:
        config = config.replace(**overrides)
    return Prior(config)


def load_prior(path: str, map_location: str | torch.device = "cpu") -> Prior:
    """Rebuild a prior from a folder written by ``save_pretrained`` (never unpickles)."""
    return Prior.from_pretrained(path, map_location=map_location)
