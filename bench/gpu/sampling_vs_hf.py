"""Step 5 of bench/gpu_check.sh: KV-cached sampling tokens/s of our Transformer prior against Hugging Face
transformers' GPT-2 ``generate()`` at the same sizes, on one GPU.

Sizes and method are issue 12 item 5's (as in ``bench/vs_transformers.py``, which measures the same on CPU):
vocabulary 1024, 256 positions, 4 layers, 4 heads, d 256, dropout 0, fp32, batch 1 and 16.

* ours: ``build_prior(arch="transformer", vocab_size=1024, shape=(256,), ...)``, ``prior.sample(n, generator=g)``
  (KV cache on, the default), 256 positions;
* peer: ``GPT2LMHeadModel`` (``attn_implementation="sdpa"``), ``generate(prompt [n, 1], do_sample=True,
  max_new_tokens=255, min_new_tokens=255, top_k=0)``: 1 prompt token + 255 new = its 256 positions (``top_k=0``
  turns off GPT-2's default top-50 filter, so both draw from the full softmax), its default dynamic KV cache.

One untimed warm-up call each, then ``--rounds`` rounds that time each model once per batch size, alternating which
goes first; tokens/s = n x 256 / the median seconds; ratio = median over rounds of HF seconds / our seconds (> 1: ours
is faster). Dry run: vocabulary 64, 16 positions, 1 layer, 2 heads, d 32, batch 1 and 2, on the CPU.
"""

from __future__ import annotations

import statistics
import time

from bench.gpu import stepkit

FULL = dict(vocab=1024, positions=256, layers=4, heads=4, d=256, batches=(1, 16))
DRY = dict(vocab=64, positions=16, layers=1, heads=2, d=32, batches=(1, 2))


def build(s: dict, device: str):  # noqa: ANN201
    """(our prior, the GPT-2 peer): ``bench/vs_transformers.py``'s pair, fp32, eval mode, on ``device``."""
    from bench.vs_transformers import build_models

    return tuple(m.to(device).eval() for m in build_models(s))


def sampler(model, batch: int, length: int, device: str, peer: bool):  # noqa: ANN001, ANN201
    """() -> int64 [batch, length]: one KV-cached sampling call, as ``bench/vs_transformers.py`` times it."""
    from bench.vs_transformers import sample_fn

    return sample_fn(model, batch, length, peer, device)


def main() -> None:
    args = stepkit.parse_args(__doc__, lambda ap: ap.add_argument("--rounds", type=int, default=None,
                                                                   help="default 5 (dry run 2)"))
    with stepkit.Record("sampling", args) as rec:
        import transformers

        device = stepkit.device_for(args)
        s = DRY if args.dry_run else FULL
        rounds = args.rounds or (2 if args.dry_run else 5)
        ours, peer = build(s, device)
        L = s["positions"]
        rec.data |= {"machine": stepkit.machine(device) | {"transformers": transformers.__version__},
                     "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}, "rounds": rounds,
                     "dtype": "float32"}
        for b in s["batches"]:
            if rec.time_left() < 5:
                rec.row({"batch": b, "skipped": f"budget: {rec.time_left():.0f} s left"})
                continue
            fns = {"ours": sampler(ours, b, L, device, False), "hf": sampler(peer, b, L, device, True)}
            try:
                shapes = {who: tuple(fn().shape) for who, fn in fns.items()}  # warm-up, untimed
                if shapes["ours"] != (b, L) or shapes["hf"] != (b, L):
                    raise RuntimeError(f"expected [{b}, {L}] tokens from both, got {shapes}")
                secs: dict[str, list[float]] = {"ours": [], "hf": []}
                for r in range(rounds):
                    for who in (("ours", "hf") if r % 2 == 0 else ("hf", "ours")):
                        stepkit.sync(device)
                        t = time.perf_counter()
                        fns[who]()
                        stepkit.sync(device)
                        secs[who].append(time.perf_counter() - t)
                med = {who: statistics.median(v) for who, v in secs.items()}
                row = {"batch": b, "tokens": L, "seconds": secs, "median_seconds": med,
                       "tokens_per_s": {who: b * L / t for who, t in med.items()},
                       "ours_speedup": statistics.median(h / o for h, o in zip(secs["hf"], secs["ours"]))}
            except Exception as e:  # noqa: BLE001 - keep the other batch size
                row = {"batch": b, "error": stepkit.first_line(e)}
            rec.row(row)
            if "error" not in row:
                tps = row["tokens_per_s"]
                print(f"batch {b:3d}: ours {tps['ours']:10,.0f} tokens/s  HF generate {tps['hf']:10,.0f} tokens/s  "
                      f"ours {row['ours_speedup']:.2f}x", flush=True)
            else:
                print(f"batch {b:3d}: {row['error']}", flush=True)


if __name__ == "__main__":
    main()
