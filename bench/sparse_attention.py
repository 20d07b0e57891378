"""Sparse (strided, fixed; Child et al. 2019) vs dense causal attention: forward + backward time and peak memory.

One attention call, B = 1, 4 heads of 64, sequence lengths 1k..16k, stride l = isqrt(L) (the paper's
l ~ sqrt(n)), summary c = max(1, l // 16) (the paper's c / l is 1/8 .. 1/16). Methods:

  * ``dense causal``: ``scaled_dot_product_attention(is_causal=True)``, the peer every number is compared to;
  * ``<pattern> dense-mask``: ``SparseAttention.dense``, SDPA with the boolean pattern mask (the CPU path
    of ``SparseTransformerNet``): the same work as dense, plus the mask;
  * ``<pattern> flex`` (CUDA only): ``SparseAttention.flex`` with compiled FlexAttention on the block-friendly
    layouts (transposed stride heads, split fixed keys), which skips fully masked 128 x 128 tiles.

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over one forward + backward, minus the memory held before
it (inputs, masks). CPU: each (method, L) runs in a fresh child process; we report the child's peak
resident set size (``ru_maxrss``) minus its RSS just before the first forward + backward, i.e. the extra
memory that attention call needed at its peak (including the allocator's behaviour; inputs and masks are
excluded and the mask size is given separately). On CPU, FlexAttention has no backward in torch 2.14 and
compiling it takes ~1 minute per shape, so the CPU run measures the dense-mask path only; run this script
on a GPU for the flex numbers (bf16).

Run: ``python bench/sparse_attention.py`` (CPU: 1k..8k; writes
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when a script runs)

from prior.sparse import SparseAttention  # noqa: E402

H, HEAD_DIM = 4, 64




def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def setup(method: str, L: int, device: str, dtype: torch.dtype):
    """-> (fn running one forward + backward, bytes of mask buffers)."""
    stride = max(1, math.isqrt(L))
    summary = max(1, stride // 16)
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
        else:
            attend = lambda: sa.flex(q, k, v, compiled=True)  # noqa: E731

    def fwd_bwd() -> None:
        out = attend()
        out.backward(grad)
        q.grad = k.grad = v.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
    return fwd_bwd, mask_bytes


def measure(method: str, L: int, device: str, dtype: torch.dtype, repeats: int) -> dict:
    fn, mask_bytes = setup(method, L, device, dtype)
    if device == "cuda":
        fn()  # compile / warm up
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = rss_bytes()
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"method": method, "L": L, "ms": 1e3 * statistics.median(times), "peak_mib": peak / 2**20,
            "mask_mib": mask_bytes / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k and 2k only, print only")
    ap.add_argument("--lengths", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "L"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, 2 OpenMP threads whose peer is descheduled "
                         "spin at every barrier, which made 1-token decoding steps ~40x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    if args.child:  # one CPU measurement in a fresh process (clean peak RSS)
        print(json.dumps(measure(args.child[0], int(args.child[1]), "cpu", dtype, args.repeats)))
        return

    cuda = args.device == "cuda"
    lengths = args.lengths or ([1024, 2048] if args.quick else [1024, 2048, 4096, 8192, 16384] if cuda
                               else [1024, 2048, 4096, 8192])
    methods = ["dense causal", "strided dense-mask", "fixed dense-mask"]
    if cuda:
        methods += ["strided flex", "fixed flex"]
    rows = []
    for L in lengths:
        for m in methods:
            if cuda:
                r = measure(m, L, "cuda", dtype, args.repeats)
            else:
                out = subprocess.run([sys.executable, __file__, "--child", m, str(L), "--repeats", str(args.repeats),
                                      "--device", "cpu", "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"L={L:6d} {m:20s} {r['ms']:9.1f} ms  peak +{r['peak_mib']:8.1f} MiB  (mask {r['mask_mib']:.1f} MiB)",
                  flush=True)

    base = {r["L"]: r for r in rows if r["method"] == "dense causal"}
    if cuda:
        dev = torch.cuda.get_device_name()
        machine = {"gpu": dev, "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__}
        where = f"{dev}, bf16, compiled FlexAttention, torch {torch.__version__}"
        mem_what = "`torch.cuda.max_memory_allocated` during one forward + backward minus the memory held before"
    else:
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "load_average_1min": os.getloadavg()[0]}
        where = f"CPU ({machine['cpu']}, {machine['torch_threads']} threads), float32, torch {torch.__version__}"
        mem_what = ("peak RSS of a fresh process during its first forward + backward minus its RSS just before "
                    "(inputs and masks excluded)")
    table = ["| L | method | fwd+bwd ms | x dense | extra peak MiB | mask MiB |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['L']} | {r['method']} | {r['ms']:.1f} | {r['ms'] / base[r['L']]['ms']:.2f} | "
                     f"{r['peak_mib']:.1f} | {r['mask_mib']:.1f} |")
    header = (f"One attention call, forward + backward, B=1, {H} heads x {HEAD_DIM}, l = isqrt(L), "
              f"c = max(1, l // 16), on {where}")
    print(header)
    print("\n".join(table))
    if not args.quick:
        name = "sparse_attention" + ("_cuda" if cuda else "")
        out = ROOT / "bench" / "results" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "heads": H, "head_dim": HEAD_DIM, "rows": rows}, indent=2) + "\n")
        md = ROOT / "docs" / "benchmarks" / f"{name}.md"
        md.parent.mkdir(parents=True, exist_ok=True)
        note = ("On CPU the sparse patterns run as dense SDPA with a boolean mask: the same O(L^2) work as dense "
                "causal attention plus the mask, so they are not faster (the `x dense` column); the mask also "
                "prevents SDPA's causal fast path. The block-sparse speed-up needs compiled FlexAttention, which "
                "in torch 2.14 has no CPU backward: run this script on a GPU for those rows. "
                "The machine was shared with other jobs, so times are noisy."
                if not cuda else
                "`flex` rows use the block-friendly layouts of `prior/sparse.py` (stride heads transposed into "
                "contiguous segments, fixed keys split into block-diagonal + summary strip), so whole 128x128 "
                "tiles are skipped.")
        md.write_text("\n".join([f"## Sparse attention ({'CUDA' if cuda else 'CPU'})", "", header + ".", "",
                                 *table, "", f"Memory: {mem_what}. {note} "
                                 f"Command: `python bench/sparse_attention.py` ({args.threads} torch thread(s)).",
                                 ""]))
        print(f"wrote {out.relative_to(ROOT)} and {md.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
