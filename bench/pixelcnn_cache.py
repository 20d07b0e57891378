"""Compressing binarised digits with a gated PixelCNN prior: cached generation vs a forward per position.

A default-size PixelCNN (``build_prior(arch="pixelcnn", vocab_size=2, shape=(32, 32))``: 6 layers, 64
channels, untrained weights, which cost the same time as trained ones) drives
``pipelines.likelihood.compress`` over binarised 32x32 ``mnist5k`` test digits, two ways:

  * cached:   ``GatedPixelCNN.step`` with its cache (vertical stack once per row, horizontal stack once
              per pixel; O(1) amortised work per position);
  * uncached: the same instance with ``use_cache=False``, so ``_code_loop`` runs the full forward
              on the whole grid buffer for every position (the behaviour before the cache existed).

Compress and decompress each run the prior position by position through the same code path, so both are
timed, and every round trip is checked token for token. The uncached path is ~1000x slower, so it codes
fewer digits (``--n-uncached``, in one chunk of that size) than the cached one (``--n-cached``, in chunks
of ``--chunk``). The cached path's per-position overhead amortises over the chunk, so it is also run on
``--n-cached-small`` digits in chunks of ``--n-uncached`` grids: like for like with the uncached row.

Run: ``OMP_NUM_THREADS=1 python -m bench.pixelcnn_cache`` (writes bench/results/pixelcnn_cache.json and
docs/benchmarks/pixelcnn_cache.md); ``--quick`` for a short run that only prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from bench.common import cpu_model, timed, write_results
from pipelines.data import DataSpec, load_data
from pipelines.likelihood.compress import compress_grids, decompress_grids
from prior import Prior, build_prior
from tokenizers_vq import quantize_raw


def test_digits(n: int) -> torch.Tensor:
    """int64 [n, 32, 32] in {0, 1}: n binarised mnist5k test digits spread evenly over the (digit-sorted)
    test split, so every class appears."""
    test = load_data(DataSpec("mnist5k", image_size=32, channels=1)).test
    idx = torch.linspace(0, len(test) - 1, n).round().long().unique()
    if len(idx) != n:
        raise SystemExit(f"the test split has {len(test)} digits, asked for {n}")
    return quantize_raw(torch.stack([test[int(i)][0] for i in idx]), levels=2)


def code(prior: Prior, grids: torch.Tensor, chunk: int, cached: bool) -> dict:
    """Compress then decompress ``grids`` with the cache on or off; timings and the exactness check."""
    t_enc, data = timed(lambda: compress_grids(prior, grids, chunk_size=chunk, use_cache=cached))
    t_dec, out = timed(lambda: decompress_grids(prior, data, use_cache=cached))
    n = len(grids)
    return {"digits": n, "chunk": min(chunk, n), "compress_s": t_enc, "decompress_s": t_dec,
            "compress_digits_per_s": n / t_enc, "decompress_digits_per_s": n / t_dec,
            "bytes": len(data), "round_trip_exact": bool(torch.equal(out.tokens, grids))}


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 cached / 1 uncached digits, print only")
    ap.add_argument("--n-cached", type=int, default=200, help="digits coded with the cache (default 200)")
    ap.add_argument("--n-uncached", type=int, default=1,
                    help="digits coded without it (default 1: it costs 2 x 1024 whole-grid forwards, ~2 min here)")
    ap.add_argument("--n-cached-small", type=int, default=4,
                    help="digits coded with the cache in chunks of --n-uncached grids (default 4)")
    ap.add_argument("--chunk", type=int, default=64, help="grids coded together (compress_grids' chunk_size)")
    args = ap.parse_args()
    n_c, n_u, n_s = (8, 1, 2) if args.quick else (args.n_cached, args.n_uncached, args.n_cached_small)

    torch.manual_seed(0)
    prior = build_prior(arch="pixelcnn", vocab_size=2, shape=(32, 32)).eval()
    grids = test_digits(max(n_c, n_u, n_s))
    code(prior, grids[:2], args.chunk, cached=True)  # untimed warm-up (allocator, thread pool)

    cached = code(prior, grids[:n_c], args.chunk, cached=True)
    cached_small = code(prior, grids[:n_s], n_u, cached=True)
    uncached = code(prior, grids[:n_u], n_u, cached=False)
    rows = [(f"cached (`net.step`), chunk {cached['chunk']}", cached),
            (f"cached (`net.step`), chunk {cached_small['chunk']}", cached_small),
            (f"uncached (full forward per position), chunk {uncached['chunk']}", uncached)]
    if not all(r["round_trip_exact"] for _, r in rows):
        raise SystemExit(f"round trip failed: {[(name, r['round_trip_exact']) for name, r in rows]}")
    speedup = {k: cached[f"{k}_digits_per_s"] / uncached[f"{k}_digits_per_s"] for k in ("compress", "decompress")}
    speedup_same_chunk = {k: cached_small[f"{k}_digits_per_s"] / uncached[f"{k}_digits_per_s"]
                          for k in ("compress", "decompress")}

    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}".strip(), "python -m",
                        "bench.pixelcnn_cache", *sys.argv[1:]])
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "note": "2 cores shared with other jobs while measuring: absolute numbers are noisy"}
    cfg = prior.config
    results = {
        "config": {"arch": "pixelcnn", "shape": [32, 32], "vocab_size": 2, "pixelcnn_layers": cfg.pixelcnn_layers,
                   "pixelcnn_channels": cfg.pixelcnn_channels, "weights": "untrained (seed 0)",
                   "data": "mnist5k test split, binarised (levels=2), evenly spaced digits"},
        "machine": machine,
        "cached": cached,
        "cached_same_chunk_as_uncached": cached_small,
        "uncached": uncached,
        "speedup": speedup,
        "speedup_same_chunk": speedup_same_chunk,
        "quick": args.quick,
        "command": command,
    }

    header = (f"Gated PixelCNN ({cfg.pixelcnn_layers} layers, {cfg.pixelcnn_channels} channels, untrained) coding "
              f"binarised 32x32 mnist5k test digits, CPU ({machine['cpu']}, {machine['torch_threads']} threads, "
              f"torch {machine['torch']})")
    table = ["| path | digits | chunk | compress s | compress digits/s | decompress s | decompress digits/s | exact |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows:
        table.append(f"| {name} | {r['digits']} | {r['chunk']} | {r['compress_s']:.1f} | "
                     f"{r['compress_digits_per_s']:.3g} | {r['decompress_s']:.1f} | {r['decompress_digits_per_s']:.3g} | "
                     f"{r['round_trip_exact']} |")
    print(header)
    print("\n".join(table))
    print(f"speedup: compress {speedup['compress']:.0f}x, decompress {speedup['decompress']:.0f}x; same chunk: "
          f"compress {speedup_same_chunk['compress']:.0f}x, decompress {speedup_same_chunk['decompress']:.0f}x")

    if not args.quick:
        write_results("pixelcnn_cache", results, "\n".join([
            "## PixelCNN cached generation for compression", "",
            header + ".", "",
            *table, "",
            f"The cache (vertical stack computed once per row from the rows above, horizontal stack once per "
            f"pixel from per-layer buffers of the current row) makes compression **{speedup['compress']:.0f}x** and "
            f"decompression **{speedup['decompress']:.0f}x** faster than a full forward per position "
            f"({speedup_same_chunk['compress']:.0f}x and {speedup_same_chunk['decompress']:.0f}x at the same chunk "
            f"size of {n_u}); at chunk {cached['chunk']} its cost per grid is about one full forward. The uncached path "
            f"codes only {n_u} digit{'s' if n_u > 1 else ''} because each costs 2 x 1024 whole-grid forwards; it "
            f"is compute-bound (each forward covers every grid of the chunk), so its digits/s barely change with the "
            f"chunk size, whereas the cached path at chunk {n_u} is bound by per-position overhead (a few dozen "
            f"small tensor operations per position), which a larger chunk amortises. All paths round-trip "
            f"exactly (encoder and decoder share `_code_loop`). The machine's 2 cores were shared with other jobs, "
            f"so absolute times are noisy. Command: `{command}`.", ""]))


if __name__ == "__main__":
    main()
