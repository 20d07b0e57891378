"""Transformer sampling speed on CPU: KV cache vs recomputing the whole prefix for every token.

Two ways to draw the same sequence (same generator seed, checked token for token):
  * cached:   ``Prior.sample(use_cache=True)``: preallocated per-layer KV buffers, one token through the
              network per step, attention over the cached keys: O(L) work per token;
  * uncached: ``Prior.sample(use_cache=False)``: the whole prefix through the network for every token,
              O(L^2) per token with attention (what a model without a cache has to do).

Run: ``python -m bench.prior_sampling`` (writes bench/results/prior_sampling.json and
docs/benchmarks/prior_sampling.md); ``--quick`` for a short run that only prints.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from bench.common import cpu_model, timed, write_results
from prior import build_prior


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (256 tokens), print only")
    ap.add_argument("--length", type=int, default=None, help="tokens to generate (default 1024; quick 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--arch", default="transformer", choices=["transformer", "sparse_transformer"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, 2 OpenMP threads whose peer is descheduled "
                         "spin at every barrier, which made 1-token decoding steps ~40x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    L = args.length or (256 if args.quick else 1024)
    cfg = dict(arch=args.arch, vocab_size=512, shape=(L,), n_layer=4, n_head=4, d_model=128)  # the PriorConfig defaults
    torch.manual_seed(0)
    prior = build_prior(**cfg).eval()
    build_prior(**{**cfg, "shape": (32,)}).eval().sample(args.batch)  # untimed warm-up (allocator, thread pool)

    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t_cached, x_cached = timed(lambda: prior.sample(args.batch, generator=gen(), use_cache=True))
    t_full, x_full = timed(lambda: prior.sample(args.batch, generator=gen(), use_cache=False))
    same = bool(torch.equal(x_cached, x_full))
    ratio = t_full / t_cached

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "load_average_1min": os.getloadavg()[0]}
    rows = [("KV cache (`use_cache=True`)", t_cached), ("whole prefix (`use_cache=False`)", t_full)]
    header = (f"{args.arch} sampling, CPU ({machine['cpu']}, {machine['torch_threads']} threads, torch "
              f"{machine['torch']}): {cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['n_head']} heads, "
              f"vocab {cfg['vocab_size']}, {L} tokens, batch {args.batch}")
    table = ["| method | total s | ms / token | cache is x faster |", "|---|---:|---:|---:|"]
    for name, t in rows:
        table.append(f"| {name} | {t:.2f} | {1e3 * t / L:.2f} | {t / t_cached:.1f} |")
    print(header)
    print("\n".join(table))
    print(f"identical tokens: {same}; speed-up {ratio:.1f}x (target >= 10x)")

    if not args.quick:
        results = {"config": {**cfg, "shape": [L], "batch": args.batch}, "machine": machine,
                   "seconds": {"cached": t_cached, "uncached": t_full},
                   "ms_per_token": {"cached": 1e3 * t_cached / L, "uncached": 1e3 * t_full / L},
                   "speedup": ratio, "identical_tokens": same}
        write_results("prior_sampling", results, "\n".join([
            "## Transformer sampling: KV cache vs recomputation", "",
            header + ".", "",
            *table, "",
            f"The preallocated KV cache (gpt-fast style) is **{ratio:.1f}x** faster than recomputing the prefix for "
            f"each of the {L} tokens, and both draw {'the same' if same else 'DIFFERENT'} tokens from the same "
            f"generator seed. The machine was shared (1-minute load average {machine['load_average_1min']:.1f} "
            "at the end of the run), so absolute times are noisy; both methods ran back to back in one process. "
            f"Command: `python -m bench.prior_sampling --threads {args.threads}`.", ""]))


if __name__ == "__main__":
    main()
