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
from typing import Any

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
    where that does not exist). Writable mappings are left out: DONTNEED would discard what was written."""
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


def inner_pages(a: int, b: int) -> tuple[int, int]:
    """[a, b) shrunk to whole pages (start rounded up, end down): advising it touches no byte outside [a, b)."""
    return -(-a // _PAGE) * _PAGE, b // _PAGE * _PAGE


class TablePages:
    """The pages of one Arrow table's own buffers that lie in read-only mappings of its files (``files``):
    ``drop()`` takes them out of this process's RSS.

    Only this table's buffers are advised, each shrunk to the whole pages inside it, and only where a read-only
    mapping of one of ``files`` holds them (checked against /proc/self/maps once per process; a DataLoader worker
    checks its own): the caller keeps the table, hence its buffers and their mapping, alive, so the ranges stay
    valid. Advising every mapping of the files instead would reach mappings of other tables of the same file, whose
    addresses anything may reuse once they are unmapped; and a table held in memory (no file mapping) is never
    advised, since DONTNEED zeroes anonymous memory."""

    def __init__(self, table: Any, files: Iterable[str | Path]):
        self.table, self.files = table, [str(f) for f in files]
        self._pid, self._ranges = -1, []

    def _table_ranges(self) -> list[tuple[int, int]]:
        maps = read_only_mappings(self.files)
        out = []
        for column in getattr(self.table, "columns", []):
            for chunk in column.chunks:
                for buf in chunk.buffers():
                    if buf is None or not buf.size:
                        continue
                    a, b = inner_pages(buf.address, buf.address + buf.size)
                    if b > a and any(lo <= a and b <= hi for lo, hi in maps):
                        out.append((a, b))
        return out

    def drop(self) -> int:
        if self._pid != os.getpid():
            self._pid, self._ranges = os.getpid(), self._table_ranges()
        return drop_ranges(self._ranges)

    def __getstate__(self) -> dict:
        raise TypeError("TablePages is not pickled (that would copy its table): its owner makes a new one")


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
