"""Step 1 of bench/gpu_check.sh: the machine (nvidia-smi, torch, CUDA, the GPU, package versions) and the measured
bf16 matrix-multiply rate that step 4's MFU is computed against.

The rate: C = A @ B with A, B bf16 [n, n] of random normal values (n = 8192 on GPU), 2 n^3 FLOP per product, after
``--warmup`` untimed products; the mean of ``--reps`` products between two synchronisations. Dry run: n = 256, fp32,
on the CPU (toy numbers; it only walks the code).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import time

from bench.gpu import stepkit

PACKAGES = ("torch", "triton", "transformers", "accelerate", "safetensors", "einops", "einx",
            "vector-quantize-pytorch", "numpy", "huggingface_hub", "tokenizers", "torchaudio", "pytest",
            "constriction", "soundfile", "mlxtend", "onnx", "onnxruntime")


def versions() -> dict[str, str | None]:
    """Installed version of each package in ``PACKAGES`` (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_smi() -> dict[str, object]:
    """The GPU as the driver sees it: one CSV query and the start of the plain report (or why there is none)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi is not on PATH"}
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu"
    try:
        q = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True,
                           timeout=30)
        full = subprocess.run([exe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": stepkit.first_line(e)}
    return {"query": dict(zip(fields.split(","), (v.strip() for v in q.stdout.strip().split(",")))),
            "report": full.stdout.splitlines()[:25]}


def matmul_tflops(n: int, dtype_name: str, device: str, warmup: int, reps: int) -> dict[str, float]:
    """Measured TFLOP/s of an n x n x n matrix product (module docstring): {"n", "tflops", "ms"}."""
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(warmup):
        c = a @ b
    stepkit.sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    stepkit.sync(device)
    dt = (time.perf_counter() - t) / reps
    del c
    return {"n": n, "dtype": dtype_name, "reps": reps, "ms": 1e3 * dt, "tflops": 2 * n**3 / dt / 1e12}


def main() -> None:
    args = stepkit.parse_args(__doc__)
    with stepkit.Record("environment", args) as rec:
        import torch

        rec.data["packages"] = versions()
        rec.data["nvidia_smi"] = nvidia_smi() if not args.dry_run else {"skipped": "dry run"}
        device = stepkit.device_for(args)
        rec.data["machine"] = stepkit.machine(device)
        rec.data["cuda_available"] = torch.cuda.is_available()
        for k, v in rec.data["machine"].items():
            print(f"{k:>18}: {v}")
        for k, v in rec.data["packages"].items():
            print(f"{k:>24}: {v or 'not installed'}")
        if args.dry_run:
            mm = matmul_tflops(256, "float32", device, warmup=1, reps=3)
        else:
            mm = matmul_tflops(8192, "bfloat16", device, warmup=3, reps=10)
        rec.row(mm)
        rec.data["peak_tflops_measured"] = mm["tflops"]
        name = rec.data["machine"].get("gpu", "")
        rec.data["peak_tflops_datasheet"] = next((v for k, v in stepkit.DATASHEET_BF16_TFLOPS.items() if k in name),
                                                 None)
        print(f"matmul {mm['n']}^3 {mm['dtype']}: {mm['tflops']:.1f} TFLOP/s ({mm['ms']:.2f} ms per product)")


if __name__ == "__main__":
    main()
