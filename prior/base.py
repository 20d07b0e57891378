"""``Prior``: the public wrapper every architecture shares (validation, log_prob, sampling, save/load).

Each architecture is a ``PriorNet`` working on flat raster sequences ``[B, L]``; ``Prior`` reshapes to and
from the grid, handles labels (index ``num_classes`` is the null label used for classifier-free guidance),
and drives ``prior.decoding.Decoder``, the one decoding loop. Code outside ``prior/`` uses the methods and
properties here (``check_labels``, ``fit``, ``decoder``, ``supports_cache``, ...), never ``Prior.net``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io import FolderMixin

from .config import ARCHS, PriorConfig
from .decoding import Decoder, evaluating
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

    def check_labels(self, labels: Tensor | int | None, batch: int, device: torch.device | str,
                     values: bool = True, unknown: bool = False) -> Tensor | None:
        """Validate labels for ``batch`` grids and return them as the net takes them: int64 [batch] on
        ``device``, or None for an unconditional prior.

        labels: None, an int (every grid) or int [batch] in [0, num_classes). Raises ``ValueError`` for labels
        given to an unconditional prior, none given to a conditional one, a float dtype, a wrong shape, or
        values out of range (``values=False`` skips the range check: no host sync, for data validated where it
        was loaded). ``unknown=True`` is for labels read from data, where -1 marks an unknown label: labels
        are optional, a conditional prior maps None and -1 to the null label ``num_classes`` (the
        unconditional p(grid) that classifier-free-guidance training also fits), and an unconditional prior
        ignores them (returns None; they are only carried along).
        """
        k = self.config.num_classes
        if k == 0:
            if labels is not None and not unknown:
                raise ValueError("this prior is unconditional (num_classes=0) but labels were given")
            return None
        if labels is None:
            if unknown:
                return torch.full((batch,), k, dtype=torch.long, device=device)
            raise ValueError(f"this prior is conditional (num_classes={k}): pass labels in [0, {k})")
        labels = torch.as_tensor(labels, device=device)
        if labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape [{batch}], got {tuple(labels.shape)}")
        low = -1 if unknown else 0
        if values and labels.numel() and (labels.min().item() < low or labels.max().item() >= k):
            raise ValueError(f"labels must lie in [0, {k})" + (" (or -1 for unknown)" if unknown else "")
                             + f", got range [{labels.min().item()}, {labels.max().item()}]")
        if unknown:
            return torch.where(labels < 0, torch.full_like(labels, k), labels).long()
        return labels.long()

    # ------------------------------------------------------------------ what the architecture declares
    @property
    def fitted_by_counting(self) -> bool:
        """True for count-based priors (histogram, ngram): ``fit`` is their training, in closed form."""
        return self.net.fitted_by_counting

    @torch.no_grad()
    def fit(self, tokens: Tensor, labels: Tensor | None = None) -> None:
        """Train a count-based prior (``fitted_by_counting``) in closed form on tokens int [N, *shape] in
        [0, vocab_size); labels: int64 [N] in [0, num_classes) or None (a conditional prior's label tables
        then stay unfitted / back off to the unconditional counts). Replaces any previous fit. Raises
        ``NotImplementedError`` for priors trained by gradient descent."""
        self.check_tokens(tokens)
        lab = None if labels is None else self.check_labels(labels, tokens.shape[0], tokens.device)
        self.net.fit(tokens.reshape(tokens.shape[0], -1), lab)  # the net raises for gradient-trained archs

    @torch.no_grad()
    def fit_chunks(self, chunks: Iterable[tuple[Tensor, Tensor | None]]) -> None:
        """``fit`` on the concatenation of chunks, each (tokens int [n, *shape], labels int64 [n] or None), read
        one at a time: histogram and n-gram priors add up their integer counts chunk by chunk, so the result is
        exactly ``fit``'s on all the rows at once while memory holds one chunk and the counts (train-prior feeds a
        sharded token folder this way). Each chunk is checked as ``fit`` checks its input."""
        L = self.config.seq_len

        def checked() -> Iterator[tuple[Tensor, Tensor | None]]:
            for tokens, labels in chunks:
                self.check_tokens(tokens)
                lab = None if labels is None else self.check_labels(labels, tokens.shape[0], tokens.device)
                yield tokens.reshape(tokens.shape[0], L), lab

        self.net.fit_chunks(checked())

    @property
    def supports_cache(self) -> bool:
        """Whether decoding (``sample``, ``beam_search``, ``decoder``) can step an incremental cache."""
        return self.net.supports_cache

    @property
    def decode_order(self) -> Tensor | None:
        """The order decoding fills the flat positions in: int64 [L] (the delay pattern, a random-order MADE),
        or None for raster order."""
        return self.net.decode_order

    @property
    def receptive_field(self) -> int | None:
        """How many previous tokens a position's logits can see (a WaveNet's R); None: every earlier one."""
        return self.net.receptive_field

    @property
    def attention_impl(self) -> str | None:
        """The sparse Transformer's attention kernel (``"auto"`` | ``"factorised"`` | ``"dense"`` |
        ``"flex"`` | ``"flex_eager"``, see ``SparseTransformerNet``); None for other architectures. Settable
        (benchmarks and tests compare the kernels; every kernel computes the same function)."""
        return self.net.impl if self.net.attention_impls else None

    @attention_impl.setter
    def attention_impl(self, impl: str) -> None:
        if impl not in self.net.attention_impls:
            raise ValueError(f"attention_impl must be one of {self.net.attention_impls} for arch={self.config.arch!r}, got "
                             f"{impl!r}" if self.net.attention_impls else "attention_impl is a sparse_transformer setting; this "
                             f"prior is arch={self.config.arch!r}")
        self.net.impl = impl

    def attention_mask_bytes(self) -> int:
        """Bytes of the sparse Transformer's dense boolean masks [G, L, L] (the ``"dense"`` kernel's reference
        masks), building them now if they are not yet; 0 for other architectures."""
        return self.net.masks.numel() if self.net.attention_impls else 0

    # ------------------------------------------------------------------ likelihood
    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """tokens int64 [B, *shape] -> logits float [B, *shape, vocab_size] (position i sees tokens < i)."""
        self.check_tokens(tokens)
        lab = self.check_labels(labels, tokens.shape[0], tokens.device)
        logits = self.net(tokens.reshape(tokens.shape[0], -1).long(), lab)
        return logits.reshape(*tokens.shape, self.vocab_size)

    def log_prob(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Natural-log likelihood of each whole grid: float [B] (sum over positions)."""
        self.check_tokens(tokens)
        flat = tokens.reshape(tokens.shape[0], -1).long()
        lab = self.check_labels(labels, tokens.shape[0], tokens.device)
        return self.flat_log_prob(flat, lab)

    def flat_logits(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The architecture's forward on flat sequences, unchecked (hot paths, benchmarks): x int64 [B, L'] in
        [0, V) in raster order, L' = L (or any L' <= L for ``variable_length`` nets: a WaveNet's window, a
        Transformer's prefix); labels int64 [B] in [0, num_classes] (the null label allowed, as
        ``check_labels`` returns them) or None -> logits float [B, L', V]."""
        return self.net(x, labels)

    def flat_log_prob(self, x: Tensor, labels: Tensor | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        """log p(grid) of flat grids x int64 [B, L] in [0, V), unchecked: float [B] (natural log), the softmax
        taken in ``dtype``. labels as for ``flat_logits``. ``log_prob`` is this after validation."""
        lp = self.net.sequence_log_prob(x, labels)
        if lp is not None:  # a net whose likelihood is not one product of conditionals (MADE ensemble)
            return lp.to(dtype)
        logits = self.net(x, labels).to(dtype)
        return torch.log_softmax(logits, -1).gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(1)

    def loss(self, tokens: Tensor, labels: Tensor | None = None, check_values: bool = True) -> Tensor:
        """Training loss: mean negative log-likelihood per token in nats (scalar). In training mode a
        conditional prior replaces each label by the null label with probability ``label_dropout`` so that
        it also learns p(grid) for classifier-free guidance. ``check_values=False`` skips the token and
        label range checks (each a host sync): for data validated when it was loaded, as the trainer's is."""
        self.check_tokens(tokens, values=check_values)
        lab = self.check_labels(labels, tokens.shape[0], tokens.device, values=check_values)
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
        lab = self.check_labels(labels, n, self.device)
        guided = cfg_scale is not None and cfg_scale != 1.0
        if guided and lab is None:
            raise ValueError("cfg_scale needs a conditional prior (num_classes > 0) and labels")
        if guided:  # rows n.. decode the same grids under the null label
            lab = torch.cat([lab, torch.full_like(lab, self.config.num_classes)])

        def choose(pos: int, logits: Tensor) -> Tensor:
            if guided:
                cond, uncond = logits.float().chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            tok = sample_from_probs(logits_to_probs(logits, temperature, top_k, top_p), generator)
            return tok.repeat(2) if guided else tok

        with evaluating(self):
            dec = self.decoder(2 * n if guided else n, lab, use_cache=use_cache)
            x = dec.run(choose, progress, "sampling")
        return x[:n].reshape(n, *self.shape)

    def decoder(self, batch_size: int, labels: Tensor | None = None, use_cache: bool = True) -> Decoder:
        """A ``prior.decoding.Decoder`` over ``batch_size`` grids on the prior's device: the position loop of
        ``sample``, ``beam_search`` and the range coder. labels: int64 [batch_size] in [0, num_classes] (the
        null label allowed, as ``check_labels`` returns them) or None; not validated. ``use_cache=False``
        runs a full forward per position (benchmarks of the cache). Call it with the prior in eval mode
        (``prior.decoding.evaluating``) for dropout-free logits."""
        return Decoder(self.net, batch_size, labels, device=self.device, use_cache=use_cache)

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
