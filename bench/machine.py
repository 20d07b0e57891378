"""Shared by the benchmarks: what they record about the machine, and how they time a call."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(fn):
    """(seconds, result) of one call of ``fn()``, by ``time.perf_counter``."""
    import time

    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


ROOT = Path(__file__).resolve().parents[1]


def write_results(name: str, results: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``bench/results/<name>.json`` and ``docs/benchmarks/<name>.md`` (assembled into
    docs/BENCHMARKS.md by ``bench/assemble_docs.py``); returns both paths."""
    import json

    out = ROOT / "bench" / "results" / f"{name}.json"
    md = ROOT / "docs" / "benchmarks" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    md.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    md.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(f"wrote {out.relative_to(ROOT)} and {md.relative_to(ROOT)}")
    return out, md
