"""Keep memory-mapped data files out of a process's resident memory.

A page of a memory-mapped file that a process has read counts in its RSS until the kernel reclaims it, so a pass
over a 1 GB Arrow table or a month of random batches from token shards shows up as a process "using" as much memory
as it has read, although the kernel could drop those pages at any time. Schedulers, containers and OOM killers
look at RSS. ``madvise(MADV_DONTNEED)`` on a read-only file mapping removes the process's page-table entries: the
pages leave its RSS but stay in the page cache, so reading them again costs a minor fault, not disk I/O, and the
data is unchanged (the mapping is of an unmodified file). Never used on writable mappings, where it would discard
writes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_PAGE = mmap.PAGESIZE


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def read_only_mappings(files: Iterable[str | Path]) -> list[tuple[int, int]]:
    """(start, end) address ranges of this process's read-only mappings of ``files`` (from /proc/self/maps; []
    where that does not exist)."""
    want = {os.path.realpath(str(f)) for f in files}
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or "w" in parts[1]:
                    continue
                if os.path.realpath(parts[5].rstrip("\n")) in want:
                    a, b = parts[0].split("-")
                    out.append((int(a, 16), int(b, 16)))
    except OSError:
        return []
    return out


def drop_ranges(ranges: Iterable[tuple[int, int]]) -> int:
    """``madvise(MADV_DONTNEED)`` on address ranges of read-only file mappings (``read_only_mappings``). Returns the
    bytes advised (0 off Linux)."""
    if _LIBC is None:
        return 0
    done = 0
    for a, b in ranges:
        if _LIBC.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), MADV_DONTNEED) == 0:
            done += b - a
    return done


class MappedFiles:
    """The read-only mappings of some files (an Arrow table's) in the current process: ``drop()`` takes their
    pages out of its RSS. The address ranges are read from /proc once per process (a DataLoader worker has its
    own) and kept: a table's mappings live as long as the table."""

    def __init__(self, files: Iterable[str | Path]):
        self.files = [str(f) for f in files]
        self._pid, self._ranges = -1, []

    def drop(self) -> int:
        if self._pid != os.getpid():
            self._pid, self._ranges = os.getpid(), read_only_mappings(self.files)
        return drop_ranges(self._ranges)

    def __getstate__(self) -> dict:
        return {"files": self.files, "_pid": -1, "_ranges": []}


def drop_file_pages(files: Iterable[str | Path]) -> int:
    """``madvise(MADV_DONTNEED)`` on every read-only mapping of ``files`` in this process: their pages leave its
    RSS (they stay in the page cache; the next read maps them again). Linux only, a no-op elsewhere. Returns the
    bytes of address space advised."""
    return drop_ranges(read_only_mappings(files))


def drop_mmap_pages(mm: mmap.mmap) -> None:
    """The same for one read-only ``mmap.mmap`` this process made (no /proc lookup)."""
    if hasattr(mm, "madvise"):
        try:
            mm.madvise(MADV_DONTNEED)
        except (OSError, ValueError):  # closed, or an OS without it: the pages are only kept longer
            pass


# What one read of a mapped file may map beyond its bytes: the page cache holds large folios (read-ahead of up to
# read_ahead_kb, 8 MB on this VM's disk) and a fault maps the whole folio, so one 12 KB row read at random was
# measured to add about 1 MB of RSS.
READ_COST = 2 << 20
BUDGET = 32 << 20  # file pages a reader lets accumulate before dropping them


class PageBudget:
    """Calls ``drop`` once reads since the last call may have mapped about ``budget`` bytes: ``add(n)`` after each
    read of n bytes, counted as ``n + READ_COST`` (a page fault maps more than the bytes asked for). The file pages
    a reader keeps resident then stay near ``budget``, whatever the size of the files."""

    def __init__(self, drop: Callable[[], object], budget: int = BUDGET):
        self.drop, self.budget, self.read = drop, budget, 0

    def add(self, n: int) -> None:
        self.read += n + READ_COST
        if self.read >= self.budget:
            self.read = 0
            self.drop()
