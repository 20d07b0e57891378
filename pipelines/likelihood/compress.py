"""Lossless compression of token grids: the prior's conditionals drive a range coder (constriction).

An autoregressive prior gives p(x_i | x_<i, label) for every grid position; a range (arithmetic) coder
turns those into a bit stream within a few bits of the ideal code length sum_i -log2 p(x_i | x_<i)
(Shannon's source coding theorem; see the "likelihood for compression" background notes).

Why the decoder reproduces the encoder's probabilities bit for bit
-----------------------------------------------------------------
The decoder can only run the prior step by step (it needs token i before it can compute p(x_{i+1})).
Batched full-sequence logits and step-by-step (KV-cache) logits agree mathematically but not in floating
point, and a single differing rounding changes the integer model the coder uses, after which the decoder
emits garbage. So the encoder never uses the batched logits: encoder and decoder both call ``_code_loop``,
which fills a token buffer position by position exactly as decoding does (``net.step`` with a cache when
``net.supports_cache``, else a full forward on the buffer) in fixed-size chunks of grids, so every logit is
computed from identical inputs by an identical sequence of operations. Probabilities are then a float64
softmax on the CPU, and constriction quantizes them to a 24-bit fixed-point categorical model whose
"leaky" quantization gives every symbol non-zero mass (so even tokens the model calls impossible encode).
What remains outside our control is the device: compress and decompress on the same kind of device with
the same dtype (a GPU's kernels round differently from a CPU's). A CRC32 of the tokens in the header turns
any divergence into a clear error instead of silently wrong tokens.

Container format (little-endian)
--------------------------------
``b"VQGZ"``, format version u8, prior fingerprint (16 bytes: SHA-256 of its config and weights),
vocab_size u32, ndim u8, shape u32 x ndim, N u32, chunk u32, has_labels u8 [+ width u8 + labels
(signed, 1, 2 or 4 bytes each) x N],
tokens CRC32 u32, metadata length u32 + metadata JSON, payload length u32 + payload (u32 words),
and a CRC32 of everything before it (u32), so truncation and corruption are detected before decoding.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import constriction
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prior import Prior

from .score import dequantize_raw, net_labels, raw_grid_shape, to_grids

MAGIC = b"VQGZ"
FORMAT_VERSION = 1
DEFAULT_CHUNK = 64  # grids coded together: one batched step of the prior per position per chunk
_FAMILY = constriction.stream.model.Categorical(perfect=False)  # same setting on both sides (required)


# ---------------------------------------------------------------------------------------------- fingerprints
def module_fingerprint(model: nn.Module) -> bytes:
    """16-byte SHA-256 digest of a model's config JSON and every tensor of its state dict (name, dtype,
    shape, raw bytes): two models share it only if they compute the same function."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=list).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:16]


def _tokens_crc(tokens: Tensor) -> int:
    return zlib.crc32(tokens.to(torch.int32).contiguous().numpy().astype("<i4").tobytes())


# ---------------------------------------------------------------------------------------------- the shared loop
@torch.no_grad()
def _code_loop(prior: Prior, labels: Tensor | None, n: int, chunk: int,
               code_position: Callable[[int, slice, np.ndarray], np.ndarray], progress: bool = False) -> None:
    """Run the prior position by position over ``n`` grids in chunks of ``chunk``; both sides use this.

    For each chunk and position, computes probabilities float64 [b, V] from a token buffer whose earlier
    positions are filled, calls ``code_position(pos, rows, probs)`` (which encodes the known tokens or
    decodes new ones) and writes the int tokens [b] it returns into the buffer. labels: net labels int64
    [n] in [0, num_classes] or None.
    """
    net = prior.net
    device = next(prior.parameters(), torch.empty(0)).device
    L = prior.config.seq_len
    was_training = prior.training
    prior.eval()  # dropout off: the same function at both ends
    try:
        bar = tqdm(total=n * L, desc="coding", disable=not progress, leave=False, unit="tok")
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            b = rows.stop - rows.start
            lab = None if labels is None else labels[rows].to(device)
            x = torch.zeros(b, L, dtype=torch.long, device=device)
            cache = net.init_cache(b, device) if net.supports_cache else None
            for pos in range(L):
                if cache is not None:
                    logits = net.step(cache, x, pos, lab)
                else:
                    inp = x[:, : pos + 1] if net.variable_length else x
                    logits = net(inp, lab)[:, pos]
                probs = torch.softmax(logits.detach().double().cpu(), -1).numpy()  # [b, V] float64
                sym = code_position(pos, rows, probs)
                x[:, pos] = torch.as_tensor(sym, dtype=torch.long, device=device)
                bar.update(b)
        bar.close()
    finally:
        prior.train(was_training)


# ---------------------------------------------------------------------------------------------- container
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


def _pack(prior: Prior, tokens: Tensor, labels: Tensor | None, chunk: int, metadata: dict[str, Any],
          payload: bytes) -> bytes:
    shape = prior.shape
    out = [MAGIC, struct.pack("<B", FORMAT_VERSION), module_fingerprint(prior),
           struct.pack("<IB", prior.vocab_size, len(shape)), struct.pack(f"<{len(shape)}I", *shape),
           struct.pack("<II", tokens.shape[0], chunk), struct.pack("<B", labels is not None)]
    if labels is not None:  # the narrowest signed width that holds them (labels are usually < 128)
        lo, hi = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
        width = 1 if -128 <= lo and hi < 128 else 2 if -32768 <= lo and hi < 32768 else 4
        out += [struct.pack("<B", width), labels.numpy().astype(f"<i{width}").tobytes()]
    meta = json.dumps(metadata, sort_keys=True).encode()
    out += [struct.pack("<I", _tokens_crc(tokens)), struct.pack("<I", len(meta)), meta,
            struct.pack("<I", len(payload)), payload]
    body = b"".join(out)
    return body + struct.pack("<I", zlib.crc32(body))


def read_header(data: bytes, name: str = "the compressed data") -> ContainerHeader:
    """Parse and check a container (magic, lengths, CRC, version) without a prior. ``name`` (e.g. the file
    path) appears in errors. Raises ``ValueError`` for a file that is not ours, truncated or corrupted."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise ValueError(f"{name} is not a vqgen compressed file (no {MAGIC!r} magic); make one with "
                         "`vqgen compress --prior DIR INPUT... --out FILE`")
    # the trailing CRC covers every byte, so check it before trusting any field
    crc_ok = len(data) >= 8 and zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")
    again = "compress the inputs again"
    try:
        h, end = _parse(data)
    except (struct.error, ValueError, UnicodeDecodeError):
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
    meta = json.loads(meta_raw.decode())
    return ContainerHeader(version, fp, vocab, tuple(shape), n, chunk, labels, tokens_crc, meta, payload), off + 4


# ---------------------------------------------------------------------------------------------- grids
def _check_prior_matches(prior: Prior, h: ContainerHeader, name: str) -> None:
    if (h.vocab_size, h.shape) != (prior.vocab_size, prior.shape):
        raise ValueError(f"{name} holds grids of shape {h.shape} with vocabulary {h.vocab_size}, but this prior "
                         f"models shape {prior.shape} with vocabulary {prior.vocab_size}: pass the --prior that "
                         "compressed it")
    if h.fingerprint != module_fingerprint(prior):
        raise ValueError(f"{name} was compressed with a different prior (fingerprint {h.fingerprint.hex()}, this "
                         f"prior {module_fingerprint(prior).hex()}): decoding needs exactly the same config and "
                         "weights; pass the --prior folder that compressed it")


def _encode(prior: Prior, tokens: Tensor, labels: Tensor | None, chunk: int, progress: bool
            ) -> tuple[bytes, float]:
    """(payload bytes, ideal code length in bits = sum of -log2 p(token) under the coder's float model)."""
    prior.check_tokens(tokens)
    n = tokens.shape[0]
    flat = tokens.reshape(n, -1).to(torch.int32).cpu().numpy()
    enc = constriction.stream.queue.RangeEncoder()  # a queue: decoded in the order encoded (FIFO)
    ideal = [0.0]

    def code(pos: int, rows: slice, probs: np.ndarray) -> np.ndarray:
        sym = np.ascontiguousarray(flat[rows, pos])
        enc.encode(sym, _FAMILY, probs)
        ideal[0] -= float(np.log2(probs[np.arange(len(sym)), sym]).sum())
        return sym

    _code_loop(prior, net_labels(prior, labels, n, torch.device("cpu")), n, chunk, code, progress)
    return enc.get_compressed().astype("<u4").tobytes(), ideal[0]


def _check_raster_order(prior: Prior) -> None:
    """The coder walks positions in raster order; a net that factorises p(x) in another order (a MADE with
    a random ordering sets ``decode_order``) has no raster-order conditionals to code with."""
    if prior.net.decode_order is not None:
        raise ValueError("compression codes positions in raster order, but this prior factorises p(x) in another "
                         f"order (made_order={prior.config.made_order!r}); train it with made_order='raster' to "
                         "compress with it")


def compress_grids(prior: Prior, tokens: Tensor, labels: Tensor | None = None, *, chunk_size: int = DEFAULT_CHUNK,
                   metadata: dict[str, Any] | None = None, progress: bool = False) -> bytes:
    """Losslessly compress grids with ``prior``: tokens int [N, *prior.shape] in [0, vocab_size) -> bytes.

    labels: int64 [N] (-1 = unknown) or None; stored in the header. A conditional prior codes with them
    (unknown -> the null label); an unconditional prior only carries them. ``metadata``: a JSON-able dict
    stored verbatim (file names etc.). Decode with ``decompress_grids`` and the same prior on the same
    kind of device.
    """
    _check_raster_order(prior)
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (tokens.shape[0],):
            raise ValueError(f"labels must have shape [{tokens.shape[0]}], got {tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    tokens = tokens.cpu()
    payload, _ = _encode(prior, tokens, labels, chunk_size, progress)
    return _pack(prior, tokens, labels, chunk_size, metadata or {}, payload)


def decompress_grids(prior: Prior, data: bytes, *, name: str = "the compressed data",
                     progress: bool = False) -> DecompressedGrids:
    """Inverse of ``compress_grids``: bytes -> (tokens int64 [N, *shape], labels int64 [N] or None).

    Raises ``ValueError`` when the data is not a vqgen container, is truncated or corrupted, was made with
    another prior, or decodes to tokens whose checksum differs (device/dtype mismatch, see module doc).
    """
    _check_raster_order(prior)
    h = read_header(data, name)
    _check_prior_matches(prior, h, name)
    words = np.frombuffer(h.payload, dtype="<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    out = np.zeros((h.n, prior.config.seq_len), dtype=np.int64)

    def code(pos: int, rows: slice, probs: np.ndarray) -> np.ndarray:
        sym = dec.decode(_FAMILY, probs)
        out[rows, pos] = sym
        return sym

    _code_loop(prior, net_labels(prior, h.labels, h.n, torch.device("cpu")), h.n, h.chunk, code, progress)
    tokens = torch.from_numpy(out).reshape(h.n, *h.shape)
    if _tokens_crc(tokens) != h.tokens_crc:
        raise ValueError(f"decoding {name} produced tokens that fail their checksum: the prior computed different "
                         "probabilities than at compression time. Decompress on the same kind of device (CPU vs "
                         "GPU) and dtype that compressed it.")
    return DecompressedGrids(tokens, h.labels)


# ---------------------------------------------------------------------------------------------- baselines & stats
def _grid_images(grids: Tensor, raw_levels: int | None, input_shape: tuple[int, ...] | None) -> list[Any]:
    """PIL images of each grid, the natural lossless image form of the same data (for the PNG baseline)."""
    from PIL import Image

    ims = []
    if raw_levels is not None and input_shape is not None and len(input_shape) == 3:
        c, h, w = input_shape
        arr = grids.reshape(-1, h, w, c).numpy()
        for a in arr:
            if raw_levels == 2 and c == 1:
                ims.append(Image.fromarray(a[..., 0].astype(bool)))  # 1-bit PNG
            else:
                a = (a * 255 if raw_levels == 2 else a).astype(np.uint8)
                ims.append(Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB"))
        return ims
    g = grids.numpy()
    if g.ndim == 2:  # 1-D grids (audio): one row per grid
        g = g[:, None, :]
    for a in g:  # token / mu-law grids: 8-bit grey if they fit, else 16-bit
        ims.append(Image.fromarray(a.astype(np.uint8), "L") if a.max(initial=0) < 256
                   else Image.fromarray(a.astype(np.uint16), "I;16"))
    return ims


def png_size(grids: Tensor, raw_levels: int | None = None, input_shape: tuple[int, ...] | None = None) -> int:
    """Total bytes of one optimised PNG per grid (how a folder of lossless images would store them)."""
    total = 0
    for im in _grid_images(grids.cpu(), raw_levels, input_shape):
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        total += buf.tell()
    return total


def gzip_size(grids: Tensor, vocab_size: int) -> int:
    """Bytes of gzip -9 on all grids in one stream, at the narrowest fixed width (bit-packed for V = 2)."""
    a = grids.cpu().numpy().reshape(-1)
    raw = (np.packbits(a.astype(np.uint8)) if vocab_size == 2
           else a.astype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32))
    return len(gzip.compress(raw.tobytes(), compresslevel=9, mtime=0))


@dataclass
class CompressionStats:
    """Sizes of one set of grids, all in bytes or bits per input dimension."""

    n: int
    seq_len: int
    dims_per_grid: int
    file_bytes: int  # the whole container
    payload_bytes: int  # the range coder's stream alone
    ideal_bits: float  # sum over all tokens of -log2 p(token): the model's ideal code length
    payload_overhead_percent: float  # (payload bits - ideal bits) / ideal bits * 100
    bits_per_dim_file: float
    bits_per_dim_ideal: float
    gzip_bytes: int
    png_bytes: int
    bits_per_dim_gzip: float
    bits_per_dim_png: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compression_stats(prior: Prior, tokens: Tensor, labels: Tensor | None = None, *,
                      dims_per_grid: int | None = None, raw_levels: int | None = None,
                      input_shape: tuple[int, ...] | None = None, chunk_size: int = DEFAULT_CHUNK,
                      metadata: dict[str, Any] | None = None, progress: bool = False) -> CompressionStats:
    """Compress ``tokens`` and compare: actual size vs the ideal code length vs PNG and gzip of the same grids.

    dims_per_grid: input dimensions one grid stands for (default: the grid size, right for raw grids;
    pass C*H*W for tokenizer tokens). raw_levels / input_shape let the PNG baseline store raw images as
    real (1-bit, grey or RGB) images.
    """
    return _compress_with_stats(prior, tokens, labels, dims_per_grid, raw_levels, input_shape, chunk_size,
                                metadata, progress)[1]


def _compress_with_stats(prior: Prior, tokens: Tensor, labels: Tensor | None, dims_per_grid: int | None,
                         raw_levels: int | None, input_shape: tuple[int, ...] | None, chunk_size: int,
                         metadata: dict[str, Any] | None, progress: bool) -> tuple[bytes, CompressionStats]:
    tokens = tokens.cpu()
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
    payload, ideal = _encode(prior, tokens, labels, chunk_size, progress)
    data = _pack(prior, tokens, labels, chunk_size, metadata or {}, payload)
    n, L = tokens.shape[0], prior.config.seq_len
    dims = dims_per_grid or L
    bpd = lambda nbytes: 8.0 * nbytes / (n * dims)  # noqa: E731
    gz, png = gzip_size(tokens, prior.vocab_size), png_size(tokens, raw_levels, input_shape)
    return data, CompressionStats(
        n=n, seq_len=L, dims_per_grid=dims, file_bytes=len(data), payload_bytes=len(payload), ideal_bits=ideal,
        payload_overhead_percent=100.0 * (8 * len(payload) - ideal) / max(ideal, 1e-12),
        bits_per_dim_file=bpd(len(data)), bits_per_dim_ideal=ideal / (n * dims),
        gzip_bytes=gz, png_bytes=png, bits_per_dim_gzip=bpd(gz), bits_per_dim_png=bpd(png),
    )


# ---------------------------------------------------------------------------------------------- files
def _load_image(path: Path, channels: int, size: tuple[int, int] | None) -> Tensor:
    """An image file -> float32 [C, H, W] in [0, 1]; exact size required (resizing would not be lossless)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); pass PNG/JPEG/... image files") from None
    x = torch.from_numpy(arr).reshape(arr.shape[0], arr.shape[1], channels).permute(2, 0, 1).contiguous()
    if size is not None and tuple(x.shape[1:]) != size:
        raise ValueError(f"{path} is {x.shape[2]}x{x.shape[1]} (WxH) but the prior/tokenizer expect {size[1]}x{size[0]}; "
                         f"resize it first (compression is lossless, so vqgen does not resize for you)")
    return x


def _raw_channels(prior: Prior, first: Path) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W) of raw images that give grids of ``prior.shape`` ([H, W*C])."""
    from PIL import Image

    if len(prior.shape) != 2:
        raise ValueError(f"the prior models 1-D grids {prior.shape} (audio); raw image compression needs an image "
                         "prior trained with `vqgen tokenize --raw` on images")
    h, wc = prior.shape
    try:
        with Image.open(first) as im:
            w = im.size[0]
    except FileNotFoundError:
        raise FileNotFoundError(f"{first}: no such file") from None
    except OSError as e:
        raise ValueError(f"{first} is not a readable image ({e})") from None
    for c in (1, 3):
        if w * c == wc:
            return c, (h, w)
    raise ValueError(f"{first} is {w} pixels wide but the raw prior models grids of shape {prior.shape} "
                     f"([H, W*C] with C = 1 or 3); use images of width {wc} (grey) or {wc // 3} (RGB)")


def compress_files(prior: Prior, tokenizer: Any | None, inputs: Sequence[str | Path], out_file: str | Path,
                   raw_levels: int | None = None, *, chunk_size: int = DEFAULT_CHUNK,
                   progress: bool = False) -> CompressionStats:
    """Compress image files into one file; returns its ``CompressionStats``.

    With a tokenizer: image -> ``tokenizer.encode`` tokens -> coded (only the tokens are stored, so
    decompression gives the tokenizer's lossy reconstruction). With ``raw_levels`` (2 or 256): the
    quantized pixels are coded and decompression is exact (at that quantization). Images are converted to
    the expected channel count and must already have the expected size. File names are stored.
    """
    if not inputs:
        raise ValueError("compress_files: no input files given")
    paths = [Path(p) for p in inputs]
    if tokenizer is not None:
        if raw_levels is not None:
            raise ValueError("pass either a tokenizer or raw_levels, not both")
        tc = tokenizer.config
        if tc.modality != "image":
            raise ValueError("compress_files handles image files; this tokenizer is for audio")
        channels, size = tc.channels, (tc.image_size, tc.image_size)
    else:
        if raw_levels is None:
            raise ValueError("pass a tokenizer (--tokenizer DIR) or raw_levels (--raw --levels 2|256)")
        channels, size = _raw_channels(prior, paths[0])
    x = torch.stack([_load_image(p, channels, size) for p in paths])  # [N, C, H, W]
    input_shape = tuple(x.shape[1:])
    grids = to_grids(x, tokenizer, raw_levels)
    if tuple(grids.shape[1:]) != prior.shape:
        raise ValueError(f"the images give grids of shape {tuple(grids.shape[1:])} but the prior models "
                         f"{prior.shape}: use the tokenizer and image size the prior was trained on")
    meta = {"kind": "tokens" if tokenizer is not None else "raw", "modality": "image", "levels": raw_levels,
            "input_shape": list(input_shape), "names": [p.name for p in paths],
            "tokenizer_fingerprint": module_fingerprint(tokenizer).hex() if tokenizer is not None else None}
    data, stats = _compress_with_stats(prior, grids, None, math.prod(input_shape), raw_levels,
                                       input_shape if tokenizer is None else None, chunk_size, meta, progress)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, out_file)
    return stats


def _safe_name(name: str, i: int, used: set[str]) -> str:
    # names come from the file: keep only the base name, so a crafted file cannot write outside out_dir
    stem = Path(os.path.basename(str(name))).stem or f"image_{i:05d}"
    out = f"{stem}.png"
    if out in used:
        out = f"{stem}_{i:05d}.png"
    used.add(out)
    return out


def decompress_file(prior: Prior, tokenizer: Any | None, in_file: str | Path, out_dir: str | Path,
                    *, progress: bool = False) -> list[Path]:
    """Decode a ``compress_files`` output into PNG images under ``out_dir``; returns the paths written.

    Raw files: the pixels are exactly the quantized input pixels (levels 2 as 0/255). Token files: the
    tokens are exact, the images are ``tokenizer.decode(tokens)``, a lossy reconstruction; pass the same
    tokenizer that compressed them.
    """
    from PIL import Image

    in_file = Path(in_file)
    if not in_file.is_file():
        raise FileNotFoundError(f"{in_file}: no such file")
    data = in_file.read_bytes()
    meta = read_header(data, str(in_file)).metadata
    grids = decompress_grids(prior, data, name=str(in_file), progress=progress).tokens
    kind, input_shape = meta.get("kind"), tuple(meta.get("input_shape") or ())
    if kind == "raw":
        if raw_grid_shape(input_shape) != prior.shape:
            raise ValueError(f"{in_file}: stored input shape {input_shape} does not match the prior's grid")
        x = dequantize_raw(grids, int(meta["levels"]), input_shape)
    elif kind == "tokens":
        if tokenizer is None:
            raise ValueError(f"{in_file} holds tokenizer tokens: pass the --tokenizer that compressed it to get images")
        if module_fingerprint(tokenizer).hex() != meta.get("tokenizer_fingerprint"):
            raise ValueError(f"{in_file} was made with a different tokenizer: pass the --tokenizer that compressed it")
        dev = next(tokenizer.parameters(), torch.empty(0)).device
        x = tokenizer.decode(grids.to(dev)).cpu().clamp(0, 1)
    else:
        raise ValueError(f"{in_file} holds grids from compress_grids, not image files; use decompress_grids")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = meta.get("names") or [f"image_{i:05d}" for i in range(len(x))]
    used: set[str] = set()
    written = []
    for i, img in enumerate(x):
        a = np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        path = out_dir / _safe_name(names[i] if i < len(names) else "", i, used)
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, "L" if a.shape[-1] == 1 else "RGB").save(path)
        written.append(path)
    return written


__all__ = ["ContainerHeader", "CompressionStats", "DecompressedGrids", "compress_files", "compress_grids",
           "compression_stats", "decompress_file", "decompress_grids", "gzip_size", "module_fingerprint",
           "png_size", "read_header"]
