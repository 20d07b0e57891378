"""Step 3 of bench/gpu_check.sh: the sparse Transformer prior with compiled FlexAttention against the dense causal
prior, one training step (forward + backward of ``Prior.loss``) at L = 4k .. 64k tokens, bf16, on one GPU.

The models and the step are ``bench/sparse_attention.py``'s prior table (``setup_prior``: 2 layers, d_model 128,
4 heads, vocabulary 512, batch 1, stride l = isqrt(L), summary c = max(1, l // 16)), so the CPU and GPU tables
compare like with like. Per (method, L): the first call (for flex: dynamo + inductor compilation of forward and
backward, which the block masks' closures make once per pattern and length), the extra peak memory of one step
(``torch.cuda.max_memory_allocated`` minus what was held before), and the median of ``--repeats`` timed steps.

Lengths run in the order 4k, 16k, 64k, 8k, 32k, so that when the step's time budget runs out the missing rows are
the in-between lengths; a row that would start with less than ``--min-row-seconds`` left is recorded as skipped.
An out-of-memory step is a result (``"oom": true``), not a failure. With time left, the factorised path (the CPU
default) is also timed on the GPU at 16k and 64k, for the choice of "flex where it is faster".

Dry run: L = 256 and 512 on the CPU, float32, the factorised path in place of flex (FlexAttention has no CPU
backward in this torch).
"""

from __future__ import annotations

import gc
import statistics
import time

from bench.gpu import stepkit

LENGTHS = (4096, 16384, 65536, 8192, 32768)
EXTRA = (("strided factorised", 16384), ("fixed factorised", 16384), ("strided factorised", 65536),
         ("fixed factorised", 65536))
DRY_LENGTHS = (256, 512)
RECOMPILE_LIMIT = 64  # dynamo's default (8) is below the 3 mask_mods x 5 lengths compiled here


def raise_recompile_limit() -> dict[str, int]:
    """Let dynamo compile flex once per (pattern, length) instead of falling back to eager flex (which
    materialises the L x L scores) after its default 8 recompilations; returns what was set."""
    import torch._dynamo

    done = {}
    for name, value in (("recompile_limit", RECOMPILE_LIMIT), ("cache_size_limit", RECOMPILE_LIMIT),
                        ("accumulated_recompile_limit", 4 * RECOMPILE_LIMIT),
                        ("accumulated_cache_size_limit", 4 * RECOMPILE_LIMIT)):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, value)
            done[name] = value
    return done


def measure(method: str, L: int, device: str, repeats: int) -> dict:
    """One row: {"method", "L", "first_call_s", "ms", "ms_min", "peak_mib"} of a training step (module docstring)."""
    import torch

    from bench.sparse_attention import setup_prior

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fn, _ = setup_prior(method, L, device, dtype)
    t = time.perf_counter()
    fn()  # flex: compiles forward and backward for this pattern and length
    stepkit.sync(device)
    first = time.perf_counter() - t
    peak = None
    if device == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        stepkit.sync(device)
        times.append(time.perf_counter() - t)
    return {"method": method, "L": L, "first_call_s": round(first, 3), "ms": 1e3 * statistics.median(times),
            "ms_min": 1e3 * min(times), "peak_mib": peak, "repeats": repeats}


def plan(dry_run: bool) -> list[tuple[str, int]]:
    """(method, L) in the order they run."""
    if dry_run:
        return [(m, L) for L in DRY_LENGTHS for m in ("dense causal", "strided factorised", "fixed factorised")]
    return [(m, L) for L in LENGTHS for m in ("dense causal", "strided flex", "fixed flex")] + list(EXTRA)


def vs_dense(rows: list[dict]) -> dict[str, dict]:
    """{"<method> @ <L>": {"speedup": dense ms / ms, "memory_ratio": peak / dense peak}} for measured rows."""
    base = {r["L"]: r for r in rows if r["method"] == "dense causal" and "ms" in r}
    out = {}
    for r in rows:
        b = base.get(r["L"])
        if r["method"] == "dense causal" or "ms" not in r or b is None:
            continue
        mem = r["peak_mib"] / b["peak_mib"] if r.get("peak_mib") and b.get("peak_mib") else None
        out[f"{r['method']} @ {r['L']}"] = {"speedup": b["ms"] / r["ms"], "memory_ratio": mem}
    return out


def main() -> None:
    args = stepkit.parse_args(__doc__, lambda ap: (
        ap.add_argument("--repeats", type=int, default=None, help="timed steps per row (default 5; dry run 2)"),
        ap.add_argument("--min-row-seconds", type=float, default=None,
                        help="start a row only with this much budget left (default 25 for flex, 8 otherwise)")))
    with stepkit.Record("sparse_attention", args) as rec:
        import torch

        from bench.sparse_attention import PRIOR

        device = stepkit.device_for(args)
        repeats = args.repeats or (2 if args.dry_run else 5)
        rec.data |= {"machine": stepkit.machine(device), "prior": PRIOR, "batch": 1,
                     "dtype": "bfloat16" if device == "cuda" else "float32",
                     "dynamo": raise_recompile_limit(), "command": "bash bench/gpu_check.sh"}
        torch.manual_seed(0)
        for method, L in plan(args.dry_run):
            need = args.min_row_seconds if args.min_row_seconds is not None else (25.0 if "flex" in method else 8.0)
            if rec.time_left() < need:
                rec.row({"method": method, "L": L, "skipped": f"budget: {rec.time_left():.0f} s left < {need:.0f} s"})
                continue
            try:
                row = measure(method, L, device, repeats)
            except Exception as e:  # noqa: BLE001 - one failing row (OOM, a compile error) must not stop the others
                row = {"method": method, "L": L}
                if stepkit.is_oom(e):
                    row |= {"oom": True, "note": stepkit.first_line(e)}
                else:
                    row["error"] = stepkit.first_line(e)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            rec.row(row)
            shown = (f"{row['ms']:9.2f} ms  first {row['first_call_s']:6.1f} s  peak +{row['peak_mib'] or 0:8.1f} MiB"
                     if "ms" in row else ("OOM" if row.get("oom") else row.get("error", "")))
            print(f"L={L:6d} {method:20s} {shown}", flush=True)
        rec.data["vs_dense"] = vs_dense(rec.data["rows"])


if __name__ == "__main__":
    main()
