"""The token folder: what `vqgen tokenize` writes and `vqgen train-prior` reads.

Layout: ``tokens.json`` (header), ``train.safetensors`` and ``test.safetensors``, each with
``tokens`` int32 [N, *token_shape] and ``labels`` int64 [N] (-1 where a sample has no label).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vqgen_io import atomic_write_text

HEADER = "tokens.json"


@dataclass
class TokenHeader:
    """What a token folder holds. ``tokenizer`` is the folder it came from (None for raw grids)."""

    vocab_size: int
    token_shape: tuple[int, ...]
    modality: str  # "image" | "audio"
    dataset: str
    tokenizer: str | None = None
    raw: bool = False  # raw pixels / mu-law samples instead of tokenizer tokens
    levels: int | None = None  # raw only: 2 (binarised) or 256 (8-bit / mu-law)
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None  # one input's shape (C, H, W) or (T,), for bits/dim
    sample_rate: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    format_version: int = 1

    @property
    def dims_per_input(self) -> int:
        """Number of input dimensions (pixels x channels, or samples) one grid stands for."""
        if self.input_shape is None:
            return int(torch.tensor(self.token_shape).prod())
        return int(torch.tensor(self.input_shape).prod())


def save_tokens(out: str | Path, header: TokenHeader, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write a token folder. splits: name -> (tokens int [N, *shape], labels int64 [N])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (tokens, labels) in splits.items():
        tmp = out / f".{name}.safetensors.tmp"
        save_file({"tokens": tokens.to(torch.int32).contiguous(), "labels": labels.long().contiguous()}, str(tmp))
        tmp.replace(out / f"{name}.safetensors")
    d = asdict(header)
    d["token_shape"] = list(header.token_shape)
    atomic_write_text(out / HEADER, json.dumps(d, indent=2))


def load_token_header(path: str | Path) -> TokenHeader:
    p = Path(path) / HEADER
    if not p.is_file():
        raise FileNotFoundError(
            f"{path} has no {HEADER}: it is not a token folder. Make one with `vqgen tokenize --tokenizer DIR "
            f"--dataset DATA --out {path}` (or `vqgen tokenize --raw ...`)."
        )
    d: dict[str, Any] = json.loads(p.read_text())
    d["token_shape"] = tuple(d["token_shape"])
    if d.get("input_shape") is not None:
        d["input_shape"] = tuple(d["input_shape"])
    return TokenHeader(**d)


def load_tokens(path: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens int64 [N, *shape], labels int64 [N]) of one split of a token folder."""
    f = Path(path) / f"{split}.safetensors"
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing; re-run `vqgen tokenize` into {path}")
    d = load_file(str(f))
    tokens, labels = d["tokens"].long(), d["labels"].long()
    # A corrupt or mismatched file is caught here, naming it; the trainer checks the data against the prior
    # separately (``PriorTask.validate_data``).
    header = load_token_header(path)
    if tuple(tokens.shape[1:]) != tuple(header.token_shape):
        raise ValueError(f"{f}: token grids of shape {tuple(tokens.shape[1:])}, but {HEADER} says "
                         f"{tuple(header.token_shape)}; re-run `vqgen tokenize` into {path}")
    if tokens.numel() and (tokens.min().item() < 0 or tokens.max().item() >= header.vocab_size):
        raise ValueError(f"{f}: tokens range [{tokens.min().item()}, {tokens.max().item()}] lies outside the vocabulary "
                         f"[0, {header.vocab_size}) of {HEADER}; the file is corrupt or from another tokenizer: "
                         f"re-run `vqgen tokenize` into {path}")
    if len(labels) != len(tokens):
        raise ValueError(f"{f}: {len(tokens)} token grids but {len(labels)} labels; re-run `vqgen tokenize`")
    return tokens, labels
