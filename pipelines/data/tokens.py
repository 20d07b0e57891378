"""The token folder: what `vqgen tokenize` writes and `vqgen train-prior` reads.

Format 3 (today's): ``tokens.json`` (the header: the record of the codec that made the tokens, counts, and per
split its shards with their checksums) and the shard files ``train-00000.safetensors``, ... (``shards.py``:
``tokens`` [rows, *token_shape] as uint8 / uint16 / int32 by vocabulary size, ``labels`` [rows], -1 where a
sample has no label), read memory-mapped. Formats 1 and 2 (read, never written): ``train.safetensors`` and
``test.safetensors``, each with ``tokens`` int32 [N, *token_shape] and ``labels`` int64 [N], read whole.

Format 4 (``vqgen tokenize --streams``, audio): the same shards, but a row is one frame ([K] or [] for one
codebook), not a grid: each recording of a split was encoded whole into frames [T_i, *row] and the recordings'
frames were concatenated, so a split is one long run of frames cut into shards of a fixed number of frames. The
header says so (``streams``: the hop and how the frames were encoded) and each split's entry in ``shards`` adds
``offsets`` (R + 1 frame offsets: recording i is frames [offsets[i], offsets[i + 1])) and ``labels`` (R, one per
recording). ``load_token_streams`` reads it; ``load_tokens`` refuses it (its rows are no grids).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenizers_vq.modality import get_modality
from vqgen_io import atomic_write_text, load_safetensors

from .shards import (
    SHARD_TOKENS,
    ShardedArray,
    ShardRecord,
    default_shard_rows,
    shard_files,
    token_dtype,
    verify_shard,
    write_shard,
)

HEADER = "tokens.json"
# 3: shards in the smallest dtype, listed with their checksums in the header (``shards``); 2: the header holds
# the codec record, one int32 file per split; 1: tokenizer path / raw levels fields instead of the codec record
FORMAT_VERSION = 3
# 4: a streams folder (format 3's shards, rows = frames of recordings; ``TokenHeader.streams``); grid folders stay 3
STREAMS_FORMAT_VERSION = 4
CHUNK_TOKENS = SHARD_TOKENS  # ``row_chunks``: tokens per block read from a sharded split (int64: 32 MiB)


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
    # format 3: split -> {"rows_per_shard", "dtype", "plan", "files": [ShardRecord fields]}; {} in older folders
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    # format 4 (``vqgen tokenize --streams``): {"hop": samples per frame, "encoder": "stream" | "windows",
    # "window_frames": frames per encoded window (offline codecs; None when streamed), "exact": whether the frames
    # equal one whole-recording encode}; None for a grid folder. ``token_shape`` is then one frame's: () or (K,)
    streams: dict[str, Any] | None = None

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


def split_shards(header: TokenHeader, split: str) -> list[ShardRecord]:
    """The shard records of one split of a format-3 header (each with its split's plan)."""
    info = header.shards[split]
    return [ShardRecord.from_dict(r | {"plan": info.get("plan", "")}) for r in info["files"]]


def write_manifest(out: str | Path, header: TokenHeader, shards: dict[str, list[ShardRecord]],
                   rows_per_shard: dict[str, int], plans: dict[str, str] | None = None,
                   extra: dict[str, dict[str, Any]] | None = None) -> TokenHeader:
    """Finish a format-3 folder: ``tokens.json`` = ``header`` with ``counts`` and ``shards`` of these splits (and
    no others) from the records, written atomically once every shard is, then remove what is not part of it: the
    shards' sidecars, shards of these splits with other numbers, and format-2 files of these splits. ``extra``:
    more fields per split's entry (a streams folder's ``offsets`` and ``labels``; then the folder is format 4).
    Returns the header."""
    out = Path(out)
    header.shards, header.counts = {}, {}  # the folder holds these splits, and only these
    for split, recs in shards.items():
        recs = sorted(recs, key=lambda r: r.start)
        if [r.start for r in recs] != [sum(r.rows for r in recs[:i]) for i in range(len(recs))]:
            raise RuntimeError(f"the shards of {split} do not cover it row after row: {[r.file for r in recs]}")
        header.counts[split] = sum(r.rows for r in recs)
        header.shards[split] = {"rows_per_shard": int(rows_per_shard[split]),
                                "dtype": str(token_dtype(header.vocab_size)),
                                "plan": (plans or {}).get(split, ""),
                                "files": [{k: v for k, v in asdict(r).items() if k != "plan"} for r in recs]}
        header.shards[split] |= (extra or {}).get(split, {})
    header.format_version = STREAMS_FORMAT_VERSION if header.streams else FORMAT_VERSION
    d = asdict(header)
    d["token_shape"] = list(header.token_shape)
    atomic_write_text(out / HEADER, json.dumps(d, indent=1))
    for split, recs in shards.items():
        keep = {r.file for r in recs}
        for p in shard_files(out, split):
            if p.name not in keep:
                p.unlink(missing_ok=True)
        (out / f"{split}.safetensors").unlink(missing_ok=True)
    return header


def save_tokens(out: str | Path, header: TokenHeader, splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                rows_per_shard: int | None = None) -> TokenHeader:
    """Write a token folder (format 3) from tensors in memory. splits: name -> (tokens int [N, *shape] in [0,
    header.vocab_size), labels int [N]); ``rows_per_shard``: grids per shard (default ``default_shard_rows``).
    Tokens outside the vocabulary or of another shape than ``header.token_shape`` are a ``ValueError``.
    Returns the header as written (``counts`` and ``shards`` filled in)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, rows = {}, {}
    for name, (tokens, labels) in splits.items():
        if isinstance(tokens, ShardedArray):  # maybe the shards about to be overwritten: read them first
            tokens = tokens.materialize()
        if isinstance(labels, ShardedArray):
            labels = labels.materialize()
        if tuple(tokens.shape[1:]) != tuple(header.token_shape):
            raise ValueError(f"{name}: token grids of shape {tuple(tokens.shape[1:])}, but the header says "
                             f"{tuple(header.token_shape)}")
        r = rows_per_shard or default_shard_rows(len(tokens), math.prod(header.token_shape))
        rows[name] = r
        try:
            records[name] = [write_shard(out, name, k, a, tokens[a: a + r], labels[a: a + r], header.vocab_size,
                                         sidecar=False) for k, a in enumerate(range(0, len(tokens), r))]
        except ValueError as e:
            raise ValueError(f"{out} [{name}]: {e}") from None
    return write_manifest(out, header, records, rows)


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
    if d.get("format_version", 1) > STREAMS_FORMAT_VERSION:
        raise ValueError(f"{p} has format_version {d['format_version']}, newer than this vqgen "
                         f"({STREAMS_FORMAT_VERSION}): upgrade vqgen")
    if "codec" not in d:
        d = _upgrade_v1(d)
    d["token_shape"] = tuple(d["token_shape"])
    try:
        return TokenHeader(**d)
    except TypeError as e:
        raise ValueError(f"{p} does not look like a vqgen token header ({e}); {_retokenize(path)}") from None


def _fix(path: str | Path) -> str:
    return (f"Copy the token folder again, or re-run `vqgen tokenize ... --out {path} --resume` (it checks every "
            "shard and writes the bad ones again).")


def load_tokens(path: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens int64 [N, *shape], labels int64 [N]) of one split of a token folder.

    Format 3: both are ``ShardedArray``s, read memory-mapped and lazily (each shard's size and shape are checked
    here, its checksum by ``check_token_folder`` and ``vqgen tokenize --resume``; the token range comes from the
    manifest, so nothing is scanned). Formats 1 and 2: tensors read whole and range-checked."""
    header = load_token_header(path)
    if header.streams:
        raise ValueError(f"{path} is a token streams folder (`vqgen tokenize --streams`): its rows are frames of whole "
                         "recordings, not token grids. Read it with pipelines.data.tokens.load_token_streams, or "
                         f"train on it with `vqgen train-prior --tokens {path} --window FRAMES`")
    if header.shards:
        if split not in header.shards:
            raise FileNotFoundError(f"{path} has no {split!r} split (it has {sorted(header.shards)})")
        recs = split_shards(header, split)
        fix = _fix(path)
        tokens = ShardedArray.open(Path(path), recs, "tokens", tuple(header.token_shape), fix)
        labels = ShardedArray.open(Path(path), recs, "labels", (), fix)
        lo, hi = tokens.bounds() or (0, -1)
        if lo < 0 or hi >= header.vocab_size:
            raise ValueError(f"{Path(path) / HEADER}: {split} tokens range [{lo}, {hi}] lies outside the vocabulary "
                             f"[0, {header.vocab_size}); {_retokenize(path)}")
        if len(tokens) != header.counts.get(split, len(tokens)):
            raise ValueError(f"{Path(path) / HEADER}: counts says {header.counts[split]} {split} grids but its shards "
                             f"hold {len(tokens)}; {_retokenize(path)}")
        return tokens, labels
    return _load_single_file(path, split, header)


def _load_single_file(path: str | Path, split: str, header: TokenHeader) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of a format-1 or format-2 folder: one int32 file, read whole."""
    f = Path(path) / f"{split}.safetensors"
    d = load_safetensors(f, f"Copy the token folder again or {_retokenize(path)}.")
    if "tokens" not in d or "labels" not in d:
        raise ValueError(f"{f} has no 'tokens' / 'labels' tensors: it is not a vqgen token file; {_retokenize(path)}")
    tokens, labels = d["tokens"].long(), d["labels"].long()
    # A corrupt or mismatched file is caught here, naming it; the trainer checks the data against the prior
    # separately (``PriorTask.validate_data``).
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


def check_token_folder(path: str | Path) -> dict[str, int]:
    """Read every byte of a token folder: each shard's SHA-256 against the manifest (format 3), or each split
    loaded whole with its range checks (formats 1, 2). Returns the grids per split; a corrupt or missing file is
    a ``ValueError`` naming it and the fix."""
    header = load_token_header(path)
    if not header.shards:
        return {s: len(load_tokens(path, s)[0]) for s in header.counts}
    for split in header.shards:
        for rec in split_shards(header, split):
            verify_shard(Path(path), rec, _fix(path))
    if header.streams:
        return {s: len(load_token_streams(path, s)[0]) for s in header.shards}
    return {s: len(load_tokens(path, s)[0]) for s in header.shards}


def load_token_streams(path: str | Path, split: str) -> tuple[ShardedArray, np.ndarray, np.ndarray]:
    """One split of a streams folder (``vqgen tokenize --streams``): (frames ``ShardedArray`` int64 [N, *row]
    (row: () or (K,)), read memory-mapped and lazily; offsets int64 [R + 1] (recording i is frames
    ``[offsets[i], offsets[i + 1])``, offsets[-1] == N); labels int64 [R], -1 = none). A grid folder is a
    ``ValueError`` pointing to ``load_tokens``."""
    header = load_token_header(path)
    if not header.streams:
        raise ValueError(f"{path} holds token grids, not streams: read it with load_tokens (train on it without "
                         "--window), or write streams with `vqgen tokenize --streams`")
    if split not in header.shards:
        raise FileNotFoundError(f"{path} has no {split!r} split (it has {sorted(header.shards)})")
    info, fix = header.shards[split], _fix(path)
    frames = ShardedArray.open(Path(path), split_shards(header, split), "tokens", tuple(header.token_shape), fix)
    offsets = np.asarray(info.get("offsets", [0]), dtype=np.int64)
    labels = np.asarray(info.get("labels", []), dtype=np.int64)
    where = f"{Path(path) / HEADER} [{split}]"
    if (len(offsets) != len(labels) + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0)
            or offsets[-1] != len(frames)):
        raise ValueError(f"{where}: recording offsets (ending at {int(offsets[-1])}, {len(offsets)} of them) and "
                         f"{len(labels)} labels do not describe its {len(frames)} frames; {_retokenize(path)}")
    lo, hi = frames.bounds() or (0, -1)
    if lo < 0 or hi >= header.vocab_size:
        raise ValueError(f"{where}: tokens range [{lo}, {hi}] lies outside the vocabulary [0, {header.vocab_size}); "
                         f"{_retokenize(path)}")
    return frames, offsets, labels


def take_rows(tokens: torch.Tensor, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of what ``load_tokens`` returned: a lazy view of a ``ShardedArray`` (nothing read yet), a
    copy of a tensor's."""
    if isinstance(tokens, ShardedArray):
        return tokens.subset(rows)  # type: ignore[return-value]
    return tokens[torch.as_tensor(rows, dtype=torch.long)]


def row_chunks(tokens: torch.Tensor, labels: torch.Tensor | None = None,
               chunk_tokens: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(tokens, labels) of what ``load_tokens`` returned (or ``take_rows`` of it), block by block: a
    ``ShardedArray`` (or a lazy view of one) is read in row blocks of about ``chunk_tokens`` (default
    ``CHUNK_TOKENS``) tokens, one block in memory at a time; a tensor, already in memory, is one block. labels:
    the same rows' labels, or None."""
    if not isinstance(tokens, ShardedArray):
        yield tokens, labels
        return
    step = max(1, (chunk_tokens or CHUNK_TOKENS) // max(1, math.prod(tokens.shape[1:])))
    for a in range(0, len(tokens), step):
        yield tokens[a: a + step], None if labels is None else labels[a: a + step]
