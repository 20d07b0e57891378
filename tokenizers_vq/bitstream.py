"""The fixed-rate token stream of ``vqgen codec`` (issue 24): a small header, then one packed frame per token position.

Layout::

    b"VQGC" | version (1 byte) | header length n (uint16, little-endian) | n bytes of JSON | frame | frame | ...

The JSON names the codec (``fingerprint``), its ``sample_rate`` and ``hop`` (samples per frame), ``codebooks`` (q,
tokens per frame), ``vocab_size`` and ``bits`` (ceil(log2 vocab_size) per token). A frame is the q tokens of one
position, most significant bit first, zero-padded to ``frame_bytes`` = ceil(q * bits / 8) bytes: a frame can be sent
as soon as it is encoded (5 codebooks of 512 codes: 45 bits in 6 bytes per 20 ms, 2.4 kbit/s, as Codec2 2400 packs
48 bits). The stream has no length field, so it can be written before the audio ends; a stream cut inside a frame is
an error naming the bytes of the partial frame. There is no checksum: a corrupt byte is caught only where it makes a
token beyond ``vocab_size`` (never, when vocab_size is a power of two) or a header that does not parse.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAGIC = b"VQGC"
VERSION = 1
MAX_HEADER = 4096


class StreamError(ValueError):
    """A byte stream that is not a (complete) vqgen codec stream, or one for another codec."""


@dataclass(frozen=True)
class StreamHeader:
    fingerprint: str  # the codec's (Tokenizer.fingerprint)
    sample_rate: int  # Hz
    hop: int  # samples per frame
    codebooks: int  # tokens per frame (q)
    vocab_size: int  # codes per codebook
    causal: bool = False  # encoded by a streaming (causal) codec

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.vocab_size)))

    @property
    def frame_bytes(self) -> int:
        return math.ceil(self.codebooks * self.bits / 8)

    @property
    def kbit_per_s(self) -> float:
        """The stream's rate: whole bytes per frame, header excluded."""
        return self.frame_bytes * 8 * self.sample_rate / self.hop / 1000

    def to_bytes(self) -> bytes:
        body = json.dumps({**asdict(self), "bits": self.bits, "frame_bytes": self.frame_bytes}).encode()
        return MAGIC + bytes([VERSION]) + struct.pack("<H", len(body)) + body

    @classmethod
    def read(cls, read: Any, source: str = "the stream") -> StreamHeader:
        """The header from ``read(n)`` (a binary file's read); ``StreamError`` for anything else."""
        head = _read_exactly(read, 7)
        if not head:
            raise StreamError(f"{source} is empty: no codec stream header")
        if head[:4] != MAGIC:
            raise StreamError(f"{source} is not a vqgen codec stream (it starts with {head[:4]!r}, not {MAGIC!r}): "
                              "make one with `vqgen codec encode`")
        if len(head) < 7:
            raise StreamError(f"{source} ends inside its header ({len(head)} bytes): the stream was cut off")
        if head[4] != VERSION:
            raise StreamError(f"{source} is a version-{head[4]} codec stream; this vqgen reads version {VERSION}")
        (n,) = struct.unpack("<H", head[5:7])
        body = _read_exactly(read, n)
        if len(body) < n or n > MAX_HEADER:
            raise StreamError(f"{source} ends inside its header: the stream was cut off")
        try:
            d = json.loads(body)
            header = cls(**{k: d[k] for k in ("fingerprint", "sample_rate", "hop", "codebooks", "vocab_size", "causal")})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StreamError(f"{source} has a corrupt header ({type(e).__name__}: {e})") from None
        header.check(source)
        return header

    def check(self, source: str = "the stream") -> None:
        """``StreamError`` for a field of the wrong type or out of range (a corrupt header)."""
        ints = {"sample_rate": 1, "hop": 1, "codebooks": 1, "vocab_size": 2}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise StreamError(f"{source} has a corrupt header: {name} = {v!r} (an integer >= {low} expected)")
        if not isinstance(self.fingerprint, str) or not isinstance(self.causal, bool):
            raise StreamError(f"{source} has a corrupt header: fingerprint {self.fingerprint!r}, causal "
                              f"{self.causal!r}")


def _read_exactly(read: Any, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream (pipes return what is there)."""
    parts, got = [], 0
    while got < n:
        part = read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def pack_frames(tokens: np.ndarray, header: StreamHeader) -> bytes:
    """int tokens [t, q] (or [t] when q = 1) in [0, vocab_size) -> t * frame_bytes bytes."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(len(tokens), header.codebooks)
    if not len(tokens):
        return b""
    if tokens.min() < 0 or tokens.max() >= header.vocab_size:  # the bits would wrap into another code
        raise ValueError(f"tokens must be in [0, {header.vocab_size}), got values in [{int(tokens.min())}, "
                         f"{int(tokens.max())}]")
    b = header.bits
    bits = ((tokens[:, :, None] >> np.arange(b - 1, -1, -1)) & 1).reshape(len(tokens), -1).astype(np.uint8)
    bits = np.pad(bits, ((0, 0), (0, header.frame_bytes * 8 - bits.shape[1])))
    return np.packbits(bits, axis=1).tobytes()


def unpack_frames(data: bytes, header: StreamHeader, strict: bool = True) -> np.ndarray:
    """len(data) / frame_bytes whole frames -> int64 tokens [t, q]; ``StreamError`` for a token beyond vocab_size
    (``strict=False``: only the frames before the first such frame, for a caller that keeps what was good)."""
    fb, b, q = header.frame_bytes, header.bits, header.codebooks
    frames = np.frombuffer(data, dtype=np.uint8).reshape(-1, fb)
    bits = np.unpackbits(frames, axis=1)[:, : q * b].reshape(len(frames), q, b).astype(np.int64)
    tokens = (bits << np.arange(b - 1, -1, -1)).sum(-1)
    bad = np.flatnonzero((tokens >= header.vocab_size).any(axis=1))
    if len(bad) and strict:
        raise StreamError(f"corrupt stream: frame {int(bad[0])} holds token {int(tokens[bad[0]].max())}, beyond the "
                          f"codec's {header.vocab_size} codes")
    return tokens[: bad[0]] if len(bad) else tokens
