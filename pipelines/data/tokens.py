"""The token folder: what `vqgen tokenize` writes and `vqgen train-prior` reads.

Layout: ``tokens.json`` (header, including the record of the codec that made the tokens), ``train.safetensors``
and ``test.safetensors``, each with ``tokens`` int32 [N, *token_shape] and ``labels`` int64 [N] (-1 where a
sample has no label).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenizers_vq.modality import get_modality
from vqgen_io import atomic_write_text, load_safetensors, save_safetensors

HEADER = "tokens.json"
FORMAT_VERSION = 2  # 2: the header holds the codec record (1 had tokenizer path / raw levels fields)


@dataclass
class TokenHeader:
    """What a token folder holds. ``codec`` is ``Codec.record(path)``: class, fingerprint, config, shapes and
    the folder it was loaded from (None for a raw codec, which its config alone rebuilds)."""

    vocab_size: int
    token_shape: tuple[int, ...]
    modality: str  # "image" | "audio"
    dataset: str
    codec: dict[str, Any]
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    bpe: dict[str, Any] | None = None  # merged (BPE) sequences: pipelines/data/bpe.py's record; None = codec tokens
    format_version: int = FORMAT_VERSION

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape (C, H, W) or (T,), as the codec saw it."""
        return tuple(self.codec["input_shape"])

    @property
    def dims_per_input(self) -> int:
        """Number of input dimensions (pixels x channels, or samples) one grid stands for."""
        return math.prod(self.input_shape)


def _retokenize(path: str | Path) -> str:
    return f"re-run `vqgen tokenize ... --out {path}` to rewrite the token folder"


def save_tokens(out: str | Path, header: TokenHeader, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write a token folder. splits: name -> (tokens int [N, *shape], labels int64 [N])."""
    out = Path(out)
    for name, (tokens, labels) in splits.items():
        save_safetensors({"tokens": tokens.to(torch.int32).contiguous(), "labels": labels.long().contiguous()},
                         out / f"{name}.safetensors")
    d = asdict(header)
    d["token_shape"] = list(header.token_shape)
    atomic_write_text(out / HEADER, json.dumps(d, indent=2))


def _upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A format-1 header (tokenizer path or raw levels, no codec record) in today's form."""
    d = dict(d)
    tok, raw, levels = d.pop("tokenizer", None), d.pop("raw", False), d.pop("levels", None)
    input_shape, rate = d.pop("input_shape", None), d.pop("sample_rate", None)
    input_shape = list(input_shape or d["token_shape"])
    if raw:
        cfg = {"class_name": "RawCodec", "modality": d["modality"], "levels": levels, "input_shape": input_shape,
               "sample_rate": rate if get_modality(d["modality"]).timed else None}
        d["codec"] = {"class_name": "RawCodec", "kind": "raw", "path": None, "fingerprint": None, "config": cfg}
    else:
        d["codec"] = {"class_name": "Tokenizer", "kind": "tokenizer", "path": tok, "fingerprint": None, "config": None}
    d["codec"] |= {"modality": d["modality"], "vocab_size": d["vocab_size"], "input_shape": input_shape,
                   "token_shape": list(d["token_shape"]), "sample_rate": rate}
    d["format_version"] = FORMAT_VERSION
    return d


def load_token_header(path: str | Path) -> TokenHeader:
    """The ``tokens.json`` of a token folder (format 1 headers are upgraded in memory)."""
    p = Path(path) / HEADER
    if not p.is_file():
        raise FileNotFoundError(
            f"{path} has no {HEADER}: it is not a token folder. Make one with `vqgen tokenize --tokenizer DIR "
            f"--dataset DATA --out {path}` (or `vqgen tokenize --raw ...`)."
        )
    try:
        d: dict[str, Any] = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}): the file is truncated or corrupt; {_retokenize(path)}") from None
    if d.get("format_version", 1) > FORMAT_VERSION:
        raise ValueError(f"{p} has format_version {d['format_version']}, newer than this vqgen ({FORMAT_VERSION}): "
                         "upgrade vqgen")
    if "codec" not in d:
        d = _upgrade_v1(d)
    d["token_shape"] = tuple(d["token_shape"])
    try:
        return TokenHeader(**d)
    except TypeError as e:
        raise ValueError(f"{p} does not look like a vqgen token header ({e}); {_retokenize(path)}") from None


def load_tokens(path: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens int64 [N, *shape], labels int64 [N]) of one split of a token folder."""
    f = Path(path) / f"{split}.safetensors"
    d = load_safetensors(f, f"Copy the token folder again or {_retokenize(path)}.")
    if "tokens" not in d or "labels" not in d:
        raise ValueError(f"{f} has no 'tokens' / 'labels' tensors: it is not a vqgen token file; {_retokenize(path)}")
    tokens, labels = d["tokens"].long(), d["labels"].long()
    # A corrupt or mismatched file is caught here, naming it; the trainer checks the data against the prior
    # separately (``PriorTask.validate_data``).
    header = load_token_header(path)
    if tuple(tokens.shape[1:]) != tuple(header.token_shape):
        raise ValueError(f"{f}: token grids of shape {tuple(tokens.shape[1:])}, but {HEADER} says "
                         f"{tuple(header.token_shape)}; {_retokenize(path)}")
    if tokens.numel() and (tokens.min().item() < 0 or tokens.max().item() >= header.vocab_size):
        raise ValueError(f"{f}: tokens range [{tokens.min().item()}, {tokens.max().item()}] lies outside the vocabulary "
                         f"[0, {header.vocab_size}) of {HEADER}; the file is corrupt or from another tokenizer: "
                         f"{_retokenize(path)}")
    if len(labels) != len(tokens):
        raise ValueError(f"{f}: {len(tokens)} token grids but {len(labels)} labels; {_retokenize(path)}")
    return tokens, labels
