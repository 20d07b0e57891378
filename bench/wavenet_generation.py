"""WaveNet generation speed on CPU: fast generation (Paine et al. 2016) vs naive recomputation.

Three ways to draw the same sequence (same generator seed, checked token for token):
  * fast:     ``Prior.sample(use_cache=True)``: per-layer ring buffers, one matmul per layer per token;
  * naive:    ``Prior.sample(use_cache=False)``: the whole prefix recomputed for every token;
  * windowed: only the last receptive field (R + 1 tokens) recomputed per token, the naive baseline of
              Paine et al. (what a careful implementation without queues would do).

Run: ``OMP_NUM_THREADS=1 python -m bench.wavenet_generation`` (writes bench/results/wavenet_generation.json
and docs/benchmarks/wavenet_generation.md); ``--quick`` for a short run that only prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from bench.common import cpu_model, timed, write_results
from prior import Prior, build_prior
from prior.sampling import logits_to_probs, sample_from_probs


@torch.no_grad()
def sample_windowed(prior: Prior, n: int, generator: torch.Generator) -> torch.Tensor:
    """Same loop as ``Prior.sample`` but each step runs the net on x[pos - R : pos + 1] only: the logits at
    pos depend on x[pos - R : pos], and the window's start slot and zero padding fall outside that cone."""
    L, R = prior.config.seq_len, prior.receptive_field
    x = torch.zeros(n, L, dtype=torch.long)
    for pos in range(L):
        s = max(0, pos - R)
        logits = prior.flat_logits(x[:, s: pos + 1])[:, -1]
        x[:, pos] = sample_from_probs(logits_to_probs(logits), generator)
    return x




def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (smaller model, shorter sequence), print only")
    ap.add_argument("--length", type=int, default=None, help="tokens to generate (default 2048; quick 1100)")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    C = 32 if args.quick else 64
    L = args.length or (1100 if args.quick else 2048)
    torch.manual_seed(0)
    prior = build_prior(arch="wavenet", vocab_size=256, shape=(L,), residual_channels=C, skip_channels=C,
                        dilation_cycle=10, n_cycles=1).eval()
    R = prior.receptive_field
    layers = prior.config.dilation_cycle * prior.config.n_cycles  # one dilated layer per dilation
    assert R >= 1024, R

    # one untimed short warm-up of each path (allocator, thread pool)
    small = build_prior(arch="wavenet", vocab_size=256, shape=(64,), residual_channels=C, skip_channels=C).eval()
    small.sample(args.batch, use_cache=True)
    small.sample(args.batch, use_cache=False)

    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t_fast, x_fast = timed(lambda: prior.sample(args.batch, generator=gen(), use_cache=True))
    t_naive, x_naive = timed(lambda: prior.sample(args.batch, generator=gen(), use_cache=False))
    t_win, x_win = timed(lambda: sample_windowed(prior, args.batch, gen()))
    same = bool(torch.equal(x_fast, x_naive) and torch.equal(x_fast.reshape(args.batch, -1), x_win))

    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}".strip(), "python -m",
                        "bench.wavenet_generation", *sys.argv[1:]])
    rows = [("fast (ring buffers)", t_fast), ("naive (whole prefix)", t_naive), ("windowed (last R+1 tokens)", t_win)]
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    results = {
        "config": {"residual_channels": C, "skip_channels": C, "dilation_cycle": 10, "n_cycles": 1, "vocab_size": 256,
                   "receptive_field": R, "length": L, "batch": args.batch, "layers": layers},
        "machine": machine,
        "seconds": {name: t for name, t in rows},
        "ms_per_token": {name: 1e3 * t / L for name, t in rows},
        "speedup_vs_naive": t_naive / t_fast,
        "speedup_vs_windowed": t_win / t_fast,
        "identical_tokens": same,
        "quick": args.quick,
        "command": command,
    }

    header = (f"WaveNet generation, CPU ({machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}): "
              f"{layers} layers, {C} channels, receptive field {R}, {L} tokens, batch {args.batch}")
    table = ["| method | total s | ms / token | fast is x faster |", "|---|---:|---:|---:|"]
    for name, t in rows:
        table.append(f"| {name} | {t:.2f} | {1e3 * t / L:.3f} | {t / t_fast:.1f} |")
    print(header)
    print("\n".join(table))
    print(f"identical tokens across the three methods: {same}")

    if not args.quick:
        write_results("wavenet_generation", results, "\n".join([
            "## WaveNet fast generation", "",
            header + ".", "",
            *table, "",
            f"Fast generation (Paine et al. 2016: one queue per layer, O(layers) work per token) is "
            f"**{t_naive / t_fast:.1f}x** faster than recomputing the prefix (`use_cache=False`) and "
            f"{t_win / t_fast:.1f}x faster than recomputing one receptive field per token; all three draw "
            f"{'the same' if same else 'DIFFERENT'} tokens from the same generator seed. "
            f"Command: `{command}`.", ""]))


if __name__ == "__main__":
    main()
