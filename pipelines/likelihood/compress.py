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
which fills a token buffer position by position through the prior's one decoding loop (``Prior.decoder``:
the net's cached step when it ``supports_cache``, else a full forward) in fixed-size chunks of grids, so
every logit is computed from identical inputs by an identical sequence of operations. Probabilities are
then a float64 softmax on the CPU, and constriction quantizes them to a 24-bit fixed-point categorical
model whose "leaky" quantization gives every symbol non-zero mass (so even tokens the model calls
impossible encode).
What remains outside our control is the device: compress and decompress on the same kind of device with
the same dtype (a GPU's kernels round differently from a CPU's). A CRC32 of the tokens in the header turns
any divergence into a clear error instead of silently wrong tokens.

The file format lives in ``container.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import constriction
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prior import Prior
from prior.decoding import evaluating
from tokenizers_vq import Codec
from vqgen_io import atomic_write_bytes, fingerprint_module

from .container import ContainerHeader, DecompressedGrids, pack, read_header, tokens_crc
from .score import encode_batch, net_labels

MAX_CHUNK = 512  # auto chunks: a bigger batch spreads each position's fixed Python cost over more grids
CACHE_BUDGET_BYTES = 256 * 2**20  # auto chunks of attention priors and WaveNets: their caches grow with the chunk
_FAMILY = constriction.stream.model.Categorical(perfect=False)  # same setting on both sides (required)


# ---------------------------------------------------------------------------------------------- fingerprints
def module_fingerprint(model: nn.Module) -> bytes:
    """16 bytes: ``vqgen_io.fingerprint_module`` of a model and its config (two models share it only if they
    compute the same function)."""
    return bytes.fromhex(fingerprint_module(model, getattr(model, "config", None)))


def _tensor_bytes(obj: Any, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (tensors, dicts, lists, tuples, objects)."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = vars(obj).values()
    else:
        return 0
    return sum(_tensor_bytes(v, seen) for v in items)


def cache_bytes_per_grid(prior: Prior) -> int:
    """Bytes the net's decoding cache grows by per grid of the batch, measured on the caches of decoders of
    1 and 2 grids (what a batch of any size shares, such as weight snapshots, cancels out); 0 without one."""
    if not prior.supports_cache:
        return 0
    one, two = (_tensor_bytes(prior.decoder(b).cache, set()) for b in (1, 2))
    return max(0, two - one)


def auto_chunk(prior: Prior, n: int) -> int:
    """Grids coded together when no chunk size is given: all ``n`` up to ``MAX_CHUNK`` (each position costs one
    batched network step whatever the batch, so big chunks code faster), fewer where the decoding cache (a
    Transformer's keys and values, a WaveNet's queues) would pass ``CACHE_BUDGET_BYTES``."""
    per_grid = cache_bytes_per_grid(prior)
    cap = CACHE_BUDGET_BYTES // per_grid if per_grid else MAX_CHUNK
    return max(1, min(n, MAX_CHUNK, cap))


def _chunk(prior: Prior, n: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return auto_chunk(prior, n)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


# ---------------------------------------------------------------------------------------------- the shared loop
@torch.no_grad()
def _code_loop(prior: Prior, labels: Tensor | None, n: int, chunk: int,
               code_position: Callable[[int, slice, np.ndarray], np.ndarray], progress: bool = False,
               use_cache: bool = True) -> None:
    """Run the prior position by position over ``n`` grids in chunks of ``chunk``; both sides use this.

    For each chunk, a ``Prior.decoder`` (cached when the net supports it, unless ``use_cache=False``) walks
    the positions in decode order (raster, or the delay pattern's: both sides alike); at each, probabilities
    float64 [b, V] from its logits go to ``code_position(pos, rows, probs)`` (which encodes the known tokens
    or decodes new ones), and the int tokens [b] it returns are accepted. labels: net labels int64 [n] in
    [0, num_classes] or None.
    """
    device = prior.device
    L = prior.config.seq_len
    with evaluating(prior):  # dropout off: the same function at both ends
        bar = tqdm(total=n * L, desc="coding", disable=not progress, leave=False, unit="tok")
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            b = rows.stop - rows.start
            lab = None if labels is None else labels[rows].to(device)

            def choose(pos: int, logits: Tensor, rows: slice = rows, b: int = b) -> Tensor:
                probs = torch.softmax(logits.detach().double().cpu(), -1).numpy()  # [b, V] float64
                sym = code_position(pos, rows, probs)
                bar.update(b)
                return torch.as_tensor(sym, dtype=torch.long, device=device)

            prior.decoder(b, lab, use_cache=use_cache).run(choose)
        bar.close()


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


def _encode(prior: Prior, tokens: Tensor, labels: Tensor | None, chunk: int, progress: bool,
            use_cache: bool = True) -> tuple[bytes, float]:
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

    _code_loop(prior, net_labels(prior, labels, n, torch.device("cpu")), n, chunk, code, progress, use_cache)
    return enc.get_compressed().astype("<u4").tobytes(), ideal[0]


def _check_raster_order(prior: Prior) -> None:
    """The coder walks positions in the net's decode order with its cache (raster, or the delay pattern's);
    a net with another order and no cache (a MADE with a random ordering) is refused: a full forward per
    position would be too slow to code with."""
    if prior.decode_order is not None and not prior.supports_cache:
        raise ValueError("compression codes positions in raster order, but this prior factorises p(x) in another "
                         f"order (made_order={prior.config.made_order!r}); train it with made_order='raster' to "
                         "compress with it")


def compress_grids(prior: Prior, tokens: Tensor, labels: Tensor | None = None, *, chunk_size: int | None = None,
                   metadata: dict[str, Any] | None = None, progress: bool = False,
                   use_cache: bool = True) -> bytes:
    """Losslessly compress grids with ``prior``: tokens int [N, *prior.shape] in [0, vocab_size) -> bytes.

    labels: int64 [N] (-1 = unknown) or None; stored in the header. A conditional prior codes with them
    (unknown -> the null label); an unconditional prior only carries them. ``metadata``: a JSON-able dict
    stored verbatim (file names etc.). ``chunk_size``: grids coded together (None: ``auto_chunk``). Decode
    with ``decompress_grids`` and the same prior on the same kind of device. ``use_cache=False`` codes with a
    full forward of the prior per position instead of its cache (benchmarks of the cache): cached and uncached
    logits round differently, so decompress with the same setting.
    """
    _check_raster_order(prior)
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (tokens.shape[0],):
            raise ValueError(f"labels must have shape [{tokens.shape[0]}], got {tuple(labels.shape)}")
    tokens = tokens.cpu()
    chunk_size = _chunk(prior, tokens.shape[0], chunk_size)
    payload, _ = _encode(prior, tokens, labels, chunk_size, progress, use_cache)
    return pack(module_fingerprint(prior), prior.vocab_size, tokens, labels, chunk_size, metadata or {}, payload)


def decompress_grids(prior: Prior, data: bytes, *, name: str = "the compressed data",
                     progress: bool = False, use_cache: bool = True) -> DecompressedGrids:
    """Inverse of ``compress_grids``: bytes -> (tokens int64 [N, *shape], labels int64 [N] or None).

    Raises ``ValueError`` when the data is not a vqgen container, is truncated or corrupted, was made with
    another prior, or decodes to tokens whose checksum differs (device/dtype mismatch, see module doc).
    ``use_cache``: as the data was compressed (``compress_grids``).
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

    _code_loop(prior, net_labels(prior, h.labels, h.n, torch.device("cpu")), h.n, h.chunk, code, progress,
               use_cache)
    tokens = torch.from_numpy(out).reshape(h.n, *h.shape)
    if tokens_crc(tokens) != h.tokens_crc:
        raise ValueError(f"decoding {name} produced tokens that fail their checksum: the prior computed different "
                         "probabilities than at compression time. Decompress on the same kind of device (CPU vs "
                         "GPU) and dtype that compressed it; CPU kernels also round differently per instruction set "
                         f"(this CPU runs torch's {torch.backends.cpu.get_cpu_capability()} kernels): a file compressed "
                         "on an AVX2 CPU decodes on a newer one with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
                         "MKL_ENABLE_INSTRUCTIONS=AVX2 set before vqgen starts.")
    return DecompressedGrids(tokens, h.labels)


# ---------------------------------------------------------------------------------------------- stats
@dataclass
class CompressionStats:
    """Sizes of one set of compressed grids, in bytes, bits and bits per input dimension: what `vqgen
    compress` reports (PNG and gzip of the same grids, for comparison, are bench code: bench/baselines.py)."""

    n: int
    seq_len: int
    dims_per_input: int
    file_bytes: int  # the whole container
    payload_bytes: int  # the range coder's stream alone
    ideal_bits: float  # sum over all tokens of -log2 p(token): the model's ideal code length
    payload_overhead_percent: float  # (payload bits - ideal bits) / ideal bits * 100
    bits_per_dim_file: float
    bits_per_dim_ideal: float
    kbit_per_second: float | None = None  # audio: the file's bitrate over the input's duration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compression_stats(prior: Prior, tokens: Tensor, labels: Tensor | None = None, *, codec: Codec | None = None,
                      chunk_size: int | None = None, metadata: dict[str, Any] | None = None,
                      progress: bool = False) -> CompressionStats:
    """Compress ``tokens`` int [N, *prior.shape] and compare the actual size with the ideal code length.
    ``codec`` (optional) gives bits per input dimension (``codec.dims_per_input``; default: per grid
    position)."""
    return _compress_with_stats(prior, tokens, labels, codec, chunk_size, metadata, progress)[1]


def _compress_with_stats(prior: Prior, tokens: Tensor, labels: Tensor | None, codec: Codec | None, chunk_size: int,
                         metadata: dict[str, Any] | None, progress: bool, seconds: float | None = None
                         ) -> tuple[bytes, CompressionStats]:
    tokens = tokens.cpu()
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
    chunk_size = _chunk(prior, tokens.shape[0], chunk_size)
    payload, ideal = _encode(prior, tokens, labels, chunk_size, progress)
    data = pack(module_fingerprint(prior), prior.vocab_size, tokens, labels, chunk_size, metadata or {}, payload)
    n, L = tokens.shape[0], prior.config.seq_len
    dims = codec.dims_per_input() if codec is not None else L
    return data, CompressionStats(
        n=n, seq_len=L, dims_per_input=dims, file_bytes=len(data), payload_bytes=len(payload), ideal_bits=ideal,
        payload_overhead_percent=100.0 * (8 * len(payload) - ideal) / max(ideal, 1e-12),
        bits_per_dim_file=8.0 * len(data) / (n * dims), bits_per_dim_ideal=ideal / (n * dims),
        kbit_per_second=8.0 * len(data) / seconds / 1000 if seconds else None,
    )


# ---------------------------------------------------------------------------------------------- files
def _load_inputs(codec: Codec, paths: list[Path]) -> tuple[Tensor, dict[str, Any]]:
    """Files -> the codec's inputs float32 [N, *codec.input_shape] and what decompression needs to write them
    back: images one input per file (of the codec's exact size); audio cut into clips of the codec's length (the
    last zero-padded), with each file's sample count and clip count so the decoder can trim and join them (the
    modality's ``pack``). Files are read by the data layer (``read_file``: the modality's reader, with limits)."""
    from ..data import read_file

    items = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
        items.append(read_file(codec.modality, p, codec.input_shape, codec.sample_rate))
    return codec.modality.pack(items, codec.input_shape, codec.sample_rate)


def _check_codec(codec: Any) -> None:
    if not isinstance(codec, Codec):
        raise ValueError(f"pass a codec (a Tokenizer from load_tokenizer, or a RawCodec for raw pixels / mu-law samples), "
                         f"got {type(codec).__name__}")


def compress_files(prior: Prior, codec: Codec, inputs: Sequence[str | Path], out_file: str | Path, *,
                   chunk_size: int | None = None, progress: bool = False) -> CompressionStats:
    """Compress image or audio files into one file with ``prior`` over ``codec``'s tokens; returns its
    ``CompressionStats``.

    Images must have the codec's size (they are converted to its channel count); audio is read at any rate,
    resampled to the codec's and cut into clips of its length. A ``RawCodec`` makes this exact at its
    quantization; a tokenizer stores only its tokens, so decompression gives its (lossy) reconstruction.
    The container records the codec's fingerprint and the file names.
    """
    if not inputs:
        raise ValueError("compress_files: no input files given")
    _check_codec(codec)
    paths = [Path(p) for p in inputs]
    x, extra = _load_inputs(codec, paths)
    grids = encode_batch(codec, x)
    if tuple(grids.shape[1:]) != prior.shape:
        raise ValueError(f"the inputs give token grids of shape {tuple(grids.shape[1:])} but the prior models "
                         f"{prior.shape}: use the codec and input size the prior was trained on")
    meta = {"modality": str(codec.modality), "codec_fingerprint": codec.fingerprint,
            "codec_class": type(codec).__name__, "input_shape": list(codec.input_shape),
            "names": [p.name for p in paths], **extra}
    seconds = codec.modality.duration(extra)  # audio: the inputs' length, for the bitrate; None for images
    data, stats = _compress_with_stats(prior, grids, None, codec, chunk_size, meta, progress, seconds)
    atomic_write_bytes(out_file, data)
    return stats


def _safe_name(name: str, i: int, used: set[str], suffix: str) -> str:
    # names come from the file: keep only the base name, so a crafted file cannot write outside out_dir
    stem = Path(os.path.basename(str(name))).stem or f"input_{i:05d}"
    out = f"{stem}{suffix}"
    if out in used:
        out = f"{stem}_{i:05d}{suffix}"
    used.add(out)
    return out


def container_codec_fingerprint(in_file: str | Path) -> str | None:
    """The codec fingerprint a ``compress_files`` output records (None for bare ``compress_grids`` data)."""
    p = Path(in_file)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    return read_header(p.read_bytes(), str(p)).metadata.get("codec_fingerprint")


def decompress_file(prior: Prior, codec: Codec, in_file: str | Path, out_dir: str | Path,
                    *, progress: bool = False) -> list[Path]:
    """Decode a ``compress_files`` output into PNG or WAV files under ``out_dir``; returns the paths written.

    ``codec`` must be the one that compressed it (its fingerprint is checked). Raw codecs give back exactly
    the quantized inputs (binarised pixels as 0/255); tokenizers give their reconstruction of the tokens.
    """
    _check_codec(codec)
    in_file = Path(in_file)
    if not in_file.is_file():
        raise FileNotFoundError(f"{in_file}: no such file")
    data = in_file.read_bytes()
    meta = read_header(data, str(in_file)).metadata
    if "codec_fingerprint" not in meta:
        raise ValueError(f"{in_file} holds grids from compress_grids, not files; use decompress_grids")
    if meta["codec_fingerprint"] != codec.fingerprint:
        raise ValueError(f"{in_file} was compressed with the codec {meta['codec_fingerprint']}, but the codec given is "
                         f"{codec.fingerprint} (a {type(codec).__name__}): pass the --tokenizer that compressed it, or none to use "
                         "the one the prior records")
    grids = decompress_grids(prior, data, name=str(in_file), progress=progress).tokens
    x = codec.decode(grids.to(codec.device)).cpu()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names, used, written = meta.get("names") or [], set(), []
    # The fingerprint matched, so the codec's modality is the file's: it turns the decoded batch back into one
    # input per file (audio: clips joined and trimmed) and writes each as PNG or WAV.
    kind = codec.modality
    for i, item in enumerate(kind.unpack(x, meta)):
        path = out_dir / _safe_name(names[i] if i < len(names) else "", i, used, kind.file_suffix)
        kind.write(item, path, meta.get("sample_rate"))
        written.append(path)
    return written


__all__ = ["CompressionStats", "DecompressedGrids", "compress_files", "compress_grids", "compression_stats",
           "container_codec_fingerprint", "decompress_file", "decompress_grids", "module_fingerprint",
           "read_header"]
