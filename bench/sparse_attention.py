"""Sparse (strided, fixed; Child et al. 2019) vs dense causal attention: training-step time and peak memory.

Two tables, same run, same machine:

* ``prior``: one training step (forward + backward of ``Prior.loss``) of a 2-layer prior, d_model 128, 4 heads,
  vocabulary 512, batch 1, 1-D sequence of L tokens: the dense ``transformer`` prior (causal SDPA) against the
  ``sparse_transformer`` prior with each pattern. This is the number the factorised implementation is judged on.
* ``attention``: one attention call (4 heads x 64, B = 1), forward + backward, the same methods without the rest
  of the network.

Stride l = isqrt(L) (the paper's l ~ sqrt(n); the config's default for 1-D), summary c = max(1, l // 16) (the
paper's c / l is 1/8 .. 1/16). Methods:

  * ``dense causal``: ``scaled_dot_product_attention(is_causal=True)`` (the ``transformer`` prior), the peer every
    number is compared to;
  * ``<pattern> factorised``: ``SparseAttention.factorised`` (the CPU default of ``SparseTransformerNet``): local
    band blocks, stride heads on the (L / l, l) transposed layout, fixed blocks + gathered summary columns;
    O(L sqrt L) work and O(L (l + L / l)) memory, never an L x L tensor;
  * ``<pattern> dense-mask``: ``SparseAttention.dense``, SDPA with the boolean L x L mask (the reference the tests
    compare against, and the CPU path before the factorised one): the work of dense attention plus the mask.
    Measured up to ``--reference-max`` (default 4096; at 16k it needs ~15 s and up to 4 GiB per step);
  * ``<pattern> flex`` (CUDA only): ``SparseAttention.flex``, compiled FlexAttention on the block-friendly layouts.

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over one step, minus the memory held before it. CPU: each
(table, method, L) runs in a fresh child process; we report the child's peak resident set size (``ru_maxrss``)
minus its RSS just before its first step, i.e. the extra memory the step needed at its peak (activations,
gradients, the allocator's behaviour; the model, the inputs and the masks are excluded, the mask size is given
separately). Times: median of ``--repeats`` steps after that first one.

Run: ``OMP_NUM_THREADS=2 python -m bench.sparse_attention --threads 2`` (CPU: 1k, 4k, 16k; writes
bench/results/sparse_attention.json and docs/benchmarks/sparse_attention.md); ``--quick`` (1k, 2k; print only);
``--lengths 1024 4096 16384`` to choose.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import ROOT, cpu_model
from prior import build_prior
from prior.sparse import SparseAttention

H, HEAD_DIM = 4, 64  # attention table
PRIOR = dict(n_layer=2, n_head=4, d_model=128, vocab_size=512)  # prior table
PATTERNS = ("strided", "fixed")


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stride_summary(L: int) -> tuple[int, int]:
    stride = max(1, math.isqrt(L))
    return stride, max(1, stride // 16)


def setup_attention(method: str, L: int, device: str, dtype: torch.dtype):
    """-> (fn running one forward + backward of one attention call, bytes of mask buffers)."""
    stride, summary = stride_summary(L)
    q, k, v = (torch.randn(1, H, L, HEAD_DIM, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, H, L, HEAD_DIM, device=device, dtype=dtype)
    mask_bytes = 0
    if method == "dense causal":
        attend = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    else:
        pattern, impl = method.split()
        sa = SparseAttention(H, pattern, stride, summary)
        if impl == "dense-mask":
            masks = sa.masks(L).to(device)
            mask_bytes = masks.numel()
            attend = lambda: sa.dense(q, k, v, masks)  # noqa: E731
        elif impl == "factorised":
            attend = lambda: sa.factorised(q, k, v)  # noqa: E731
        else:
            attend = lambda: sa.flex(q, k, v, compiled=True)  # noqa: E731

    def fwd_bwd() -> None:
        attend().backward(grad)
        q.grad = k.grad = v.grad = None
    return fwd_bwd, mask_bytes


def setup_prior(method: str, L: int, device: str, dtype: torch.dtype):
    """-> (fn running one training step, forward + backward of ``Prior.loss``, bytes of mask buffers)."""
    stride, summary = stride_summary(L)
    if method == "dense causal":
        prior = build_prior(arch="transformer", shape=(L,), **PRIOR)
    else:
        pattern, impl = method.split()
        prior = build_prior(arch="sparse_transformer", shape=(L,), attention=pattern, stride=stride, summary=summary,
                            **PRIOR)
        prior.attention_impl = {"dense-mask": "dense"}.get(impl, impl)
    prior = prior.to(device=device, dtype=dtype).train()
    mask_bytes = 0
    if method.endswith("dense-mask"):
        mask_bytes = prior.attention_mask_bytes()  # built now, outside the measured step
    x = torch.randint(0, PRIOR["vocab_size"], (1, L), device=device)

    def step() -> None:
        prior.loss(x).backward()
        prior.zero_grad(set_to_none=True)
    return step, mask_bytes


def measure(table: str, method: str, L: int, device: str, dtype: torch.dtype, repeats: int) -> dict:
    fn, mask_bytes = (setup_prior if table == "prior" else setup_attention)(method, L, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        fn()  # compile / warm up
        sync()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = rss_bytes()
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return {"table": table, "method": method, "L": L, "ms": 1e3 * statistics.median(times),
            "peak_mib": peak / 2**20, "mask_mib": mask_bytes / 2**20}


def markdown_table(rows: list[dict]) -> list[str]:
    base = {r["L"]: r for r in rows if r["method"] == "dense causal"}
    out = ["| L | method | ms | x dense time | speed-up | extra peak MiB | x dense memory | mask MiB |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base.get(r["L"])
        t = r["ms"] / b["ms"] if b else float("nan")
        m = r["peak_mib"] / b["peak_mib"] if b and b["peak_mib"] > 0 else float("nan")
        out.append(f"| {r['L']} | {r['method']} | {r['ms']:.1f} | {t:.2f} | {1 / t:.1f}x | {r['peak_mib']:.1f} | "
                   f"{m:.2f} | {r['mask_mib']:.1f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k and 2k only, print only")
    ap.add_argument("--lengths", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-max", type=int, default=4096,
                    help="largest L at which the dense-mask reference is measured")
    ap.add_argument("--tables", nargs="*", default=["prior", "attention"], choices=["prior", "attention"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--child", nargs=3, metavar=("TABLE", "METHOD", "L"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, 2 OpenMP threads whose peer is descheduled "
                         "spin at every barrier, which made 1-token decoding steps ~40x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    if args.child:  # one CPU measurement in a fresh process (clean peak RSS)
        table, method, L = args.child
        print(json.dumps(measure(table, method, int(L), "cpu", dtype, args.repeats)))
        return

    cuda = args.device == "cuda"
    lengths = args.lengths or ([1024, 2048] if args.quick else [1024, 4096, 16384])
    load_before = os.getloadavg()
    rows = []
    for table in args.tables:
        for L in lengths:
            methods = ["dense causal"] + [f"{p} factorised" for p in PATTERNS]
            if cuda:
                methods += [f"{p} flex" for p in PATTERNS]
            if L <= args.reference_max:
                methods += [f"{p} dense-mask" for p in PATTERNS]
            for m in methods:
                if cuda:
                    r = measure(table, m, L, "cuda", dtype, args.repeats)
                else:
                    # this module again in a fresh process (clean peak RSS), from the root so that `bench` imports
                    out = subprocess.run([sys.executable, "-m", "bench.sparse_attention", "--child", table, m, str(L),
                                          "--repeats", str(args.repeats), "--device", "cpu", "--threads",
                                          str(args.threads)], capture_output=True, text=True, check=True, cwd=ROOT)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(r)
                print(f"{table:9s} L={L:6d} {m:20s} {r['ms']:9.1f} ms  peak +{r['peak_mib']:8.1f} MiB  "
                      f"(mask {r['mask_mib']:.1f} MiB)", flush=True)
    load_after = os.getloadavg()

    if cuda:
        dev = torch.cuda.get_device_name()
        machine = {"gpu": dev, "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__}
        where = f"{dev}, bf16, torch {torch.__version__}"
        mem_what = "`torch.cuda.max_memory_allocated` during one step minus the memory held before"
    else:
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "load_average_1min": load_before[0],
                   "load_average_before": list(load_before), "load_average_after": list(load_after)}
        where = f"CPU ({machine['cpu']}, {os.cpu_count()} cores, {machine['torch_threads']} threads), float32, " \
                f"torch {torch.__version__}"
        mem_what = ("peak RSS of a fresh process during its first step minus its RSS just before (model, inputs and "
                    "masks excluded)")
    headers = {
        "prior": (f"Training step (forward + backward of `Prior.loss`) of a {PRIOR['n_layer']}-layer prior, d_model "
                  f"{PRIOR['d_model']}, {PRIOR['n_head']} heads, vocabulary {PRIOR['vocab_size']}, batch 1"),
        "attention": f"One attention call, forward + backward, B=1, {H} heads x {HEAD_DIM}",
    }
    md_lines = [f"## Sparse attention ({'CUDA' if cuda else 'CPU'})", "",
                f"On {where}; l = isqrt(L), c = max(1, l // 16). `x dense` = time (or extra peak memory) / the dense "
                "causal row of the same L; `speed-up` = its inverse.", ""]
    summary = {}
    for table in args.tables:
        sel = [r for r in rows if r["table"] == table]
        print(headers[table])
        print("\n".join(markdown_table(sel)))
        md_lines += [f"### {table}", "", headers[table] + ".", "", *markdown_table(sel), ""]
        base = {r["L"]: r for r in sel if r["method"] == "dense causal"}
        summary[table] = {f"{r['method']} @ {r['L']}": {"speedup": base[r["L"]]["ms"] / r["ms"],
                                                       "memory_ratio": r["peak_mib"] / base[r["L"]]["peak_mib"]}
                          for r in sel if r["method"] != "dense causal" and r["L"] in base}
    if not args.quick:
        name = "sparse_attention" + ("_cuda" if cuda else "")
        out = ROOT / "bench" / "results" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "prior": PRIOR, "heads": H, "head_dim": HEAD_DIM,
                                   "rows": rows, "vs_dense": summary}, indent=2) + "\n")
        md = ROOT / "docs" / "benchmarks" / f"{name}.md"
        md.parent.mkdir(parents=True, exist_ok=True)
        note = ("`factorised` never builds an L x L tensor: the local heads attend per block of l to [previous "
                "block; block], the stride heads run causal attention on the sequence reshaped to (L / l, l) and "
                "transposed, fixed runs the causal block plus the summary columns of earlier blocks; on CPU each "
                "pattern is a disjoint union of flash-attention calls merged by log-sum-exp (exact backward), so "
                "backward keeps O(L hd) like dense causal SDPA. Work O(L sqrt L), against O(L^2) for dense causal "
                "and for `dense-mask` (which also cannot use SDPA's causal fast path). The machine was shared with "
                "other jobs (load average "
                f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores), so times are "
                "noisy; the ratios come from one run."
                if not cuda else
                "`flex` rows use the block-friendly layouts of `prior/sparse.py` (stride heads transposed into "
                "contiguous segments, fixed keys split into block-diagonal + summary strip), so whole 128x128 "
                "tiles are skipped.")
        md_lines += [f"Memory: {mem_what}. {note} Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
                     f"python -m bench.sparse_attention --threads {args.threads}`.", ""]
        md.write_text("\n".join(md_lines))
        print(f"wrote {out.relative_to(ROOT)} and {md.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
