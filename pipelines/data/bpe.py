"""Byte-pair encoding over codec token sequences (Sennrich et al. 2016), learnt with Hugging Face ``tokenizers``.

A token grid is read in raster order (images row by row, audio in time, codebook axes innermost) and each
code c in [0, V) becomes one character, chr(BASE_CHAR + c), so a grid is a string with no whitespace and
the library's BPE learns merges of frequent neighbouring codes. Every code is in the initial alphabet and
nothing is normalised or pre-split, so encoding is a bijection onto the canonical merged sequences and
decoding (each merged id -> its string -> its codes) gives the original tokens exactly.

A BPE folder (``vqgen bpe train``) holds ``tokenizer.json`` (the library's file) and ``bpe.json``
(``BPEInfo``). A merged token folder (``vqgen tokenize --bpe DIR``) holds 1-D sequences of length
``max_len`` over a vocabulary of ``merged_vocab + 1``: the merged ids, then the end token ``eos`` (=
merged_vocab), then more ``eos`` up to ``max_len`` as padding; ``lengths`` (merged ids before the first
``eos``) are stored beside the tokens. Any 1-D prior models these padded sequences directly: the padding
after the first ``eos`` is deterministic, so a prior's likelihood of the padded sequence is a proper
likelihood of the merged sequence (the model learns p(eos | eos) ~ 1, which costs ~0 bits after training).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vqgen_io import atomic_write_text, load_safetensors, save_safetensors

from .shards import SHARD_TOKENS

BASE_CHAR = 0x4E00  # CJK ideographs: 20,992 printable, non-space, single-code-point characters
MAX_BASE_VOCAB = 20_992
INFO = "bpe.json"
CHUNK_TOKENS = SHARD_TOKENS  # ``grid_strings``: tokens per block turned into strings at a time


@dataclass
class BPEInfo:
    """What a BPE folder encodes: ``base_vocab`` codec codes, ``merged_vocab`` merged ids in [0, merged_vocab)
    (base codes included), the end/pad id ``eos`` = merged_vocab, and the codec's token grid shape."""

    base_vocab: int
    merged_vocab: int
    base_token_shape: tuple[int, ...]
    codec: dict[str, Any]

    @property
    def eos(self) -> int:
        return self.merged_vocab


class BPE:
    """Learnt merges over codec tokens. ``encode`` / ``decode`` map between codec grids and merged ids."""

    def __init__(self, tokenizer: Any, info: BPEInfo):
        self.tokenizer, self.info = tokenizer, info
        vocab = tokenizer.get_vocab()
        self.id_to_codes: list[list[int]] = [[]] * len(vocab)
        for piece, i in vocab.items():
            self.id_to_codes[i] = [ord(ch) - BASE_CHAR for ch in piece]

    # ------------------------------------------------------------------ training and files
    @classmethod
    def train(cls, tokens: torch.Tensor, vocab_size: int, base_vocab: int, codec: dict[str, Any] | None = None) -> BPE:
        """Learn merges on tokens int [N, *grid] in [0, base_vocab) until ``vocab_size`` ids (base codes
        included; vocab_size >= base_vocab). The library's BpeTrainer counts adjacent pairs within each grid.
        ``tokens`` may be a ``ShardedArray`` (``load_tokens`` of a sharded folder): the grids reach the trainer as
        strings made block by block (``grid_strings``), never as one tensor or one list of strings; the trainer
        itself keeps a count per distinct grid."""
        from tokenizers import Tokenizer, models, trainers

        if not 2 <= base_vocab <= MAX_BASE_VOCAB:
            raise ValueError(f"BPE over codes needs 2 <= vocabulary <= {MAX_BASE_VOCAB}, got {base_vocab}")
        if vocab_size < base_vocab:
            raise ValueError(f"--vocab {vocab_size} must be at least the codec's vocabulary {base_vocab}")
        alphabet = [chr(BASE_CHAR + c) for c in range(base_vocab)]
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, limit_alphabet=base_vocab,
                                      min_frequency=2, show_progress=False, special_tokens=[])
        tok.train_from_iterator(grid_strings(tokens), trainer=trainer, length=len(tokens))
        info = BPEInfo(base_vocab=base_vocab, merged_vocab=tok.get_vocab_size(),
                       base_token_shape=tuple(int(s) for s in tokens.shape[1:]), codec=codec or {})
        return cls(tok, info)

    def save(self, out: str | Path) -> None:
        """Write ``tokenizer.json`` and ``bpe.json`` into the folder ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "tokenizer.json", self.tokenizer.to_str())
        atomic_write_text(out / INFO, json.dumps(asdict(self.info), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> BPE:
        """Read a folder written by ``save`` (``vqgen bpe train``)."""
        from tokenizers import Tokenizer

        p = Path(path)
        if not (p / INFO).is_file() or not (p / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} is not a BPE folder (no {INFO} / tokenizer.json); make one with "
                                    "`vqgen bpe train --tokens DIR --vocab N --out DIR`")
        d = json.loads((p / INFO).read_text())
        d["base_token_shape"] = tuple(d["base_token_shape"])
        return cls(Tokenizer.from_file(str(p / "tokenizer.json")), BPEInfo(**d))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, tokens: torch.Tensor, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens int [N, *grid] in [0, base_vocab) -> (ids int64 [N, max_len] in [0, merged_vocab], lengths int64
        [N]): each row the merged ids, then ``eos`` padding. ``max_len`` default: longest + 1 (room for one
        ``eos``); a sequence longer than max_len - 1 is a ValueError."""
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.info.base_vocab):
            raise ValueError(f"tokens must lie in [0, {self.info.base_vocab}) (the codec this BPE was trained on)")
        enc = [e.ids for e in self.tokenizer.encode_batch(to_strings(tokens), add_special_tokens=False)]
        lengths = torch.tensor([len(e) for e in enc], dtype=torch.long)
        longest = int(lengths.max()) if len(enc) else 0
        max_len = longest + 1 if max_len is None else max_len
        if longest >= max_len:
            raise ValueError(f"a merged sequence has {longest} ids, more than max_len - 1 = {max_len - 1}")
        ids = torch.full((len(enc), max_len), self.info.eos, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        return ids, lengths

    def decode_sequence(self, ids: list[int] | torch.Tensor) -> list[int]:
        """Merged ids (up to the first ``eos``; later ids ignored) -> the codec codes they stand for."""
        out: list[int] = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i >= self.info.eos:
                break
            out.extend(self.id_to_codes[i])
        return out

    def decode(self, ids: torch.Tensor, fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """ids int [N, M] in [0, merged_vocab] -> (tokens int64 [N, *base_token_shape] in [0, base_vocab),
        decoded lengths int64 [N] in codes). A sampled sequence that decodes to other than prod(base_token_shape)
        codes is cut, or padded with ``fill``; the lengths say which (encoded data always fits exactly)."""
        L = math.prod(self.info.base_token_shape)
        out = torch.full((len(ids), L), fill, dtype=torch.long)
        lengths = torch.zeros(len(ids), dtype=torch.long)
        for n, row in enumerate(ids):
            codes = self.decode_sequence(row)
            lengths[n] = len(codes)
            codes = codes[:L]
            out[n, : len(codes)] = torch.tensor(codes, dtype=torch.long)
        return out.reshape(len(ids), *self.info.base_token_shape), lengths


def to_strings(tokens: torch.Tensor) -> list[str]:
    """tokens int [N, *grid] -> N strings, one character per code in raster order."""
    flat = tokens.reshape(len(tokens), -1).tolist()
    return ["".join(chr(BASE_CHAR + c) for c in row) for row in flat]


def grid_strings(tokens: torch.Tensor, chunk_tokens: int | None = None) -> Iterator[str]:
    """``to_strings`` of tokens int [N, *grid] (a tensor or a ``ShardedArray``), in order, made from row blocks of
    about ``chunk_tokens`` (default ``CHUNK_TOKENS``) tokens: one block is read and held at a time."""
    step = max(1, (chunk_tokens or CHUNK_TOKENS) // max(1, math.prod(tokens.shape[1:])))
    for a in range(0, len(tokens), step):
        yield from to_strings(tokens[a: a + step])


# ---------------------------------------------------------------------------- merged token folders
def write_bpe_token_folder(src: str | Path, bpe_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Merge every split of the token folder ``src`` with the BPE in ``bpe_dir`` into the token folder ``out``
    (may be ``src``): tokens int32 [N, max_len] (ids then ``eos`` padding, max_len shared by the splits), the
    header's ``vocab_size`` = merged_vocab + 1 and ``token_shape`` = (max_len,), its ``bpe`` record (folder,
    eos, base shape and vocabulary), and ``lengths.safetensors`` (per split, merged ids before eos). Returns
    the length statistics."""
    from .tokens import load_token_header, load_tokens, save_tokens

    bpe = BPE.load(bpe_dir)
    header = load_token_header(src)
    if header.vocab_size != bpe.info.base_vocab or tuple(header.token_shape) != bpe.info.base_token_shape:
        raise ValueError(f"{src} holds grids {tuple(header.token_shape)} over {header.vocab_size} codes, but the BPE "
                         f"in {bpe_dir} was trained on {bpe.info.base_token_shape} over {bpe.info.base_vocab}")
    splits = {s: load_tokens(src, s) for s in header.counts}
    enc = {s: bpe.encode(t) for s, (t, _) in splits.items()}
    max_len = max(int(lengths.max()) for _, lengths in enc.values()) + 1
    merged = {s: (bpe.encode(splits[s][0], max_len)[0], splits[s][1]) for s in splits}
    L = math.prod(header.token_shape)
    header.bpe = {"path": str(Path(bpe_dir).resolve()), "eos": bpe.info.eos, "base_vocab": header.vocab_size,
                  "base_token_shape": list(header.token_shape), "max_len": max_len}
    header.vocab_size, header.token_shape = bpe.info.merged_vocab + 1, (max_len,)
    save_tokens(out, header, merged)
    save_safetensors({s: lengths for s, (_, lengths) in enc.items()}, Path(out) / "lengths.safetensors")
    all_lengths = torch.cat([lengths for _, lengths in enc.values()]).double()
    return {"original_length": L, "mean_merged_length": all_lengths.mean().item(), "max_len": max_len,
            "reduction": L / all_lengths.mean().item(), "merged_vocab": bpe.info.merged_vocab}


def load_lengths(path: str | Path, split: str) -> torch.Tensor:
    """Merged lengths int64 [N] of one split of a BPE token folder."""
    return load_safetensors(Path(path) / "lengths.safetensors", "re-run `vqgen tokenize --bpe`")[split].long()
