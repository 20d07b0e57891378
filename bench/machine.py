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
