"""Codebook patterns for (t, q) token grids: "flatten" (raster over t * q positions) vs MusicGen's "delay"
(t + q - 1 steps, all q codebooks of a step predicted at once), with the same Transformer sizes.

Measures training seconds per step, KV-cached sampling tokens/s, and held-out NLL after the same number of
steps. Tokens: synthesised (t, q) grids with RVQ-like structure (default), or a token folder written by
``vqgen tokenize`` with a codebook axis (``--tokens DIR``; its train/test splits). The synthetic process:

* codebook 0 is a random walk over time: c0[i] = c0[i-1] + d mod V, d uniform in {-2..2} (log 5 nats);
* codebook k refines codebook k-1 at the same time: ck[i] = 7 c(k-1)[i] + 13 k + e mod V, e uniform in
  {0, 1, 2} (log 3 nats), so the entropy floor is (log V + (t-1) log 5 + t (q-1) log 3) / (t q) nats/token.

Both patterns can reach that floor (under delay, ck[i] comes one step after c(k-1)[i]).

Run: ``python -m bench.codebook_pattern`` (about a minute of one CPU core; prints a table; ``--json FILE``
writes the numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from prior import build_prior


def synth(n: int, t: int, q: int, V: int, g: torch.Generator) -> torch.Tensor:
    """int64 [n, t, q] in [0, V): the RVQ-like process of the module docstring."""
    c0 = torch.randint(0, V, (n, 1), generator=g) + torch.randint(-2, 3, (n, t), generator=g).cumsum(1)
    cols = [c0 % V]
    for k in range(1, q):
        cols.append((7 * cols[-1] + 13 * k + torch.randint(0, 3, (n, t), generator=g)) % V)
    return torch.stack(cols, -1)


def floor_nats_per_token(t: int, q: int, V: int) -> float:
    return (math.log(V) + (t - 1) * math.log(5) + t * (q - 1) * math.log(3)) / (t * q)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default=None, help="a token folder with a codebook axis (default: synthetic)")
    ap.add_argument("--t", type=int, default=50)
    ap.add_argument("--q", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=120, help="training steps per pattern")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--sample-n", type=int, default=4, help="grids per sampling run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    if args.tokens:
        from pipelines.data.tokens import load_token_header, load_tokens

        header = load_token_header(args.tokens)
        train, test = load_tokens(args.tokens, "train")[0].long(), load_tokens(args.tokens, "test")[0].long()
        V, shape = header.vocab_size, tuple(header.token_shape)
        floor, source = None, args.tokens
    else:
        V, shape = args.vocab, (args.t, args.q)
        train, test = synth(4096, *shape, V, g), synth(256, *shape, V, g)
        floor, source = floor_nats_per_token(*shape, V), "synthetic"
    q = shape[-1]
    results = {"source": source, "shape": list(shape), "vocab_size": V, "steps": args.steps, "batch": args.batch,
               "n_layer": args.n_layer, "d_model": args.d_model, "threads": torch.get_num_threads(),
               "floor_nats_per_token": floor, "patterns": {}}
    for pattern in ("flatten", "delay"):
        torch.manual_seed(0)
        p = build_prior(arch="transformer", vocab_size=V, shape=shape, num_codebooks=q, codebook_pattern=pattern,
                        n_layer=args.n_layer, n_head=4, d_model=args.d_model)
        opt = torch.optim.Adam(p.parameters(), lr=args.lr)
        p.train()
        bg = torch.Generator().manual_seed(1)  # the same batches for both patterns
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = p.loss(train[torch.randint(0, len(train), (args.batch,), generator=bg)], check_values=False)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = (time.perf_counter() - t0) / args.steps
        p.eval()
        with torch.no_grad():
            nll = -torch.cat([p.log_prob(test[i: i + 64]) for i in range(0, len(test), 64)]).double().mean().item()
        t0 = time.perf_counter()
        x = p.sample(args.sample_n, generator=torch.Generator().manual_seed(2))
        sample_s = time.perf_counter() - t0
        with torch.no_grad():
            sample_nll = -p.log_prob(x).double().mean().item()
        L = math.prod(shape)
        results["patterns"][pattern] = {
            "train_s_per_step": train_s, "sample_tokens_per_s": args.sample_n * L / sample_s,
            "sequence_steps": L if pattern == "flatten" else L // q + q - 1,
            "heldout_nats_per_token": nll / L, "heldout_nats_per_grid": nll, "own_samples_nats_per_token": sample_nll / L}
    results["load_average_1min"] = os.getloadavg()[0]

    print(f"{source} tokens {shape}, vocab {V}; transformer {args.n_layer} layers d_model {args.d_model}; "
          f"{args.steps} steps of batch {args.batch}, lr {args.lr}; {results['threads']} thread(s), load "
          f"{results['load_average_1min']:.1f}" + (f"; entropy floor {floor:.3f} nats/token" if floor else ""))
    print("| pattern | sequence steps | train s/step | sampling tokens/s | held-out nats/token |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results["patterns"].items():
        print(f"| {name} | {r['sequence_steps']} | {r['train_s_per_step']:.3f} | {r['sample_tokens_per_s']:.0f} | "
              f"{r['heldout_nats_per_token']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
