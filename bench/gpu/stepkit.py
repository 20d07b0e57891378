"""What the steps of ``bench/gpu_check.sh`` share: their arguments, one JSON record per step (rewritten after every
measured row, so a step killed at its time cap still leaves what it measured), and small timing helpers.

Every step script takes ``--results DIR`` (where ``<step>.json`` goes), ``--budget SECONDS`` (the step's share of the
8-minute run: rows that would start after it are recorded as skipped, not run) and ``--dry-run`` (CPU, toy sizes:
the same code path, for machines without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks (vendor)


def parse_args(description: str, extra: Any = None) -> argparse.Namespace:
    """The common arguments (``--results``, ``--budget``, ``--dry-run``) plus ``extra(parser)``'s own."""
    main = sys.modules["__main__"].__spec__  # the step's module, run as `python -m bench.gpu.NAME`
    ap = argparse.ArgumentParser(prog=f"python -m {main.name}" if main else None,
                                 description=description.strip().splitlines()[0])
    ap.add_argument("--results", required=True, help="folder that receives <step>.json")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds this step may spend (rows after it: skipped)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: walks the step without a GPU")
    if extra is not None:
        extra(ap)
    return ap.parse_args()


def device_for(args: argparse.Namespace) -> str:
    """"cpu" for a dry run, else "cuda"; a ``RuntimeError`` naming the interpreter when CUDA is missing."""
    import torch

    if args.dry_run:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(f"CUDA is not available to {sys.executable} (torch {torch.__version__}, built for CUDA "
                           f"{torch.version.cuda}); on a machine without a GPU run `bash bench/gpu_check.sh --dry-run`")
    return "cuda"


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, python, torch, and the GPU when ``device`` is cuda."""
    import torch

    from bench.common import cpu_model

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "python_executable": sys.executable, "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                 "cuda": torch.version.cuda}
    else:
        info["torch_threads"] = torch.get_num_threads()
        info["load_average"] = list(os.getloadavg())
    return info


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing on CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters (for tables)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Record:
    """The JSON record of one step, ``<results>/<name>.json``:
    ``{"step", "status", "dry_run", "budget_s", "seconds", "rows": [...], "error"?, ...}``.

    status: "running" while it runs, then "ok" (every row measured), "partial" (some rows failed or were skipped for
    time) or "failed" (an exception escaped; its traceback is kept). Used as a context manager: the record is written
    on entry, after every ``row`` and on exit; an escaping exception marks it failed and exits with status 1.
    """

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.t0 = name, time.monotonic()
        self.budget = float(args.budget)
        self.path = Path(args.results) / f"{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"step": name, "status": "running", "dry_run": bool(args.dry_run),
                                     "budget_s": self.budget, "seconds": 0.0, "rows": []}
        self.problems: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def time_left(self) -> float:
        """Seconds of the budget still unspent."""
        return self.budget - self.elapsed()

    def row(self, row: dict[str, Any]) -> None:
        """Add one measured (or failed / skipped) row and rewrite the record. A row with "error" or "skipped"
        makes the step partial."""
        self.data["rows"].append(row)
        if "error" in row or "skipped" in row:
            self.problems.append(row.get("error") or row["skipped"])
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(self.elapsed(), 2)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)  # never a half-written record, even when the step is killed at its cap

    def __enter__(self) -> Record:
        self.save()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self.data["status"] = "failed"
            self.data["error"] = first_line(exc)
            self.data["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))[-4000:]
            self.save()
            traceback.print_exception(exc_type, exc, tb)
            print(f"{self.name}: FAILED ({self.data['error']})", flush=True)
            sys.exit(1)
        self.data["status"] = "partial" if self.problems else "ok"
        self.save()
        print(f"{self.name}: {self.data['status']} in {self.elapsed():.1f} s -> {self.path}", flush=True)
        return False


def read_step(results: str | Path, name: str) -> dict[str, Any]:
    """Another step's record from the same run ({} when it has none), e.g. step 1's measured matmul peak."""
    path = Path(results) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}
