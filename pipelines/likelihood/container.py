"""The ``vqgen compress`` file format: a header that lets the decoder check it has the right prior and codec
before decoding, the range coder's payload, and CRCs that turn truncation or corruption into a clear error.

Container format (little-endian)
--------------------------------
``b"VQGZ"``, format version u8, prior fingerprint (16 bytes: SHA-256 of its config and weights),
vocab_size u32, ndim u8, shape u32 x ndim, N u32, chunk u32, has_labels u8 [+ width u8 + labels
(signed, 1, 2 or 4 bytes each) x N],
tokens CRC32 u32, metadata length u32 + metadata JSON (version 2: deflated with zlib, since per-file names
and lengths of many short clips cost as much as their audio; version 1 files, plain JSON, still read),
payload length u32 + payload (u32 words),
and a CRC32 of everything before it (u32), so truncation and corruption are detected before decoding.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

MAGIC = b"VQGZ"
FORMAT_VERSION = 2


@dataclass
class ContainerHeader:
    """Everything in a compressed file except the payload (``read_header`` parses it)."""

    version: int
    fingerprint: bytes
    vocab_size: int
    shape: tuple[int, ...]
    n: int
    chunk: int
    labels: Tensor | None  # int64 [n] or None
    tokens_crc: int
    metadata: dict[str, Any]
    payload: bytes = field(repr=False)


class DecompressedGrids(NamedTuple):
    tokens: Tensor  # int64 [N, *shape] in [0, vocab_size)
    labels: Tensor | None  # int64 [N] (-1 = unknown) or None when none were stored


def read_header(data: bytes, name: str = "the compressed data") -> ContainerHeader:
    """Parse and check a container (magic, lengths, CRC, version) without a prior. ``name`` (e.g. the file
    path) appears in errors. Raises ``ValueError`` for a file that is not ours, truncated or corrupted."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise ValueError(f"{name} is not a vqgen compressed file (no {MAGIC!r} magic); make one with "
                         "`vqgen compress --prior DIR INPUT... --out FILE`")
    # the trailing CRC covers every byte, so check it before trusting any field
    crc_ok = len(data) >= 8 and zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")
    again = "compress the inputs again"
    if crc_ok and len(data) > 4 and data[4] > FORMAT_VERSION:  # before parsing: a newer layout may not parse
        raise ValueError(f"{name} uses container format {data[4]}, newer than this vqgen ({FORMAT_VERSION}): "
                         "upgrade vqgen")
    try:
        h, end = _parse(data)
    except (struct.error, ValueError, UnicodeDecodeError, zlib.error):
        if crc_ok:  # pragma: no cover - only a writer bug gets here
            raise ValueError(f"{name} is corrupted (its fields are inconsistent); {again}") from None
        raise ValueError(f"{name} is truncated or corrupted ({len(data)} bytes, shorter than its header says): "
                         f"the file was cut short while copying or writing; {again}") from None
    if end != len(data):
        raise ValueError(f"{name} has {len(data) - end} unexpected trailing bytes: it is corrupted (or two files "
                         f"were concatenated); {again}")
    if not crc_ok:
        raise ValueError(f"{name} is corrupted (checksum mismatch): some bytes changed after it was written; {again}")
    if h.version > FORMAT_VERSION:
        raise ValueError(f"{name} uses container format {h.version}, newer than this vqgen ({FORMAT_VERSION}): "
                         "upgrade vqgen")
    return h


def _parse(data: bytes) -> tuple[ContainerHeader, int]:
    """The fields of a container and the offset just past its CRC; struct.error / ValueError when short."""
    off = 4
    (version,) = struct.unpack_from("<B", data, off)
    fp = data[off + 1: off + 17]
    off += 17
    vocab, ndim = struct.unpack_from("<IB", data, off)
    off += 5
    shape = struct.unpack_from(f"<{ndim}I", data, off)
    off += 4 * ndim
    n, chunk, has_labels = struct.unpack_from("<IIB", data, off)
    off += 9
    labels = None
    if has_labels:
        (width,) = struct.unpack_from("<B", data, off)
        off += 1
        if width not in (1, 2, 4) or off + width * n > len(data):
            raise ValueError("bad labels")
        labels = torch.from_numpy(np.frombuffer(data, dtype=f"<i{width}", count=n, offset=off).astype(np.int64))
        off += width * n
    tokens_crc, meta_len = struct.unpack_from("<II", data, off)
    off += 8
    meta_raw = data[off: off + meta_len]
    off += meta_len
    (payload_len,) = struct.unpack_from("<I", data, off)
    off += 4
    payload = data[off: off + payload_len]
    off += payload_len
    struct.unpack_from("<I", data, off)  # the CRC itself must be there
    if len(meta_raw) != meta_len or len(payload) != payload_len or payload_len % 4 or chunk < 1 or not ndim:
        raise ValueError("inconsistent lengths")
    meta = json.loads((zlib.decompress(meta_raw) if version >= 2 else meta_raw).decode())
    return ContainerHeader(version, fp, vocab, tuple(shape), n, chunk, labels, tokens_crc, meta, payload), off + 4




def tokens_crc(tokens: Tensor) -> int:
    """CRC32 of the tokens as little-endian int32 (the decoder's check that it reproduced them)."""
    return zlib.crc32(tokens.to(torch.int32).contiguous().numpy().astype("<i4").tobytes())


def pack(fingerprint: bytes, vocab_size: int, tokens: Tensor, labels: Tensor | None, chunk: int,
         metadata: dict[str, Any], payload: bytes) -> bytes:
    """The container bytes: tokens int [N, *shape] (only their shape and CRC are stored), labels int64 [N] or
    None, the prior's 16-byte fingerprint, a JSON-able metadata dict and the range coder's payload."""
    shape = tuple(tokens.shape[1:])
    out = [MAGIC, struct.pack("<B", FORMAT_VERSION), fingerprint,
           struct.pack("<IB", vocab_size, len(shape)), struct.pack(f"<{len(shape)}I", *shape),
           struct.pack("<II", tokens.shape[0], chunk), struct.pack("<B", labels is not None)]
    if labels is not None:  # the narrowest signed width that holds them (labels are usually < 128)
        lo, hi = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
        width = 1 if -128 <= lo and hi < 128 else 2 if -32768 <= lo and hi < 32768 else 4
        out += [struct.pack("<B", width), labels.numpy().astype(f"<i{width}").tobytes()]
    meta = zlib.compress(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode(), 9)
    out += [struct.pack("<I", tokens_crc(tokens)), struct.pack("<I", len(meta)), meta,
            struct.pack("<I", len(payload)), payload]
    body = b"".join(out)
    return body + struct.pack("<I", zlib.crc32(body))
