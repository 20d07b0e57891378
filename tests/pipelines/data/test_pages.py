"""Dropping the pages of memory-mapped data files from resident memory (pipelines.data.pages) keeps the data
readable and unchanged, never touches writable mappings, and the shard and Arrow readers call it as they read."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.data import pages
from pipelines.data.shards import ShardedArray, ShardRecord, write_shard

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/maps are Linux's")


def _mapping_rss_kb(path: Path) -> int:
    """Resident KB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5 and line[0] in "0123456789abcdef":
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@linux
def test_dropping_a_file_mapping_empties_it_and_keeps_the_data(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    f = tmp_path / "blob.bin"
    f.write_bytes(data.tobytes())
    with f.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, dtype=np.uint8)
    assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page read: all resident
    before = _mapping_rss_kb(f)
    assert before >= 4 << 10
    assert pages.drop_ranges(pages.read_only_mappings([f])) >= len(data)
    assert _mapping_rss_kb(f) < before / 4
    assert np.array_equal(view, data)  # read again from the page cache, unchanged
    pages.drop_mmap_pages(mm)
    assert np.array_equal(view[::4096], data[::4096])
    del view
    mm.close()


@linux
def test_writable_mappings_are_never_advised(tmp_path: Path) -> None:
    f = tmp_path / "rw.bin"
    f.write_bytes(b"\0" * (1 << 16))
    with f.open("r+b") as fh:
        mm = mmap.mmap(fh.fileno(), 0)  # shared, writable
    mm[:5] = b"hello"
    assert pages.read_only_mappings([f]) == []
    assert pages.drop_ranges(pages.read_only_mappings([f])) == 0
    assert mm[:5] == b"hello"
    mm.close()


def test_page_budget_drops_once_per_budget() -> None:
    calls = []
    b = pages.PageBudget(lambda: calls.append(1), budget=10 * pages.READ_COST)
    for _ in range(25):
        b.add(0)
    assert len(calls) == 2  # at reads 10 and 20


def test_sharded_array_drops_pages_as_it_reads_and_returns_the_same_rows(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 300, (64, 4, 4), generator=g)
    recs = [write_shard(tmp_path, "train", k, 16 * k, tokens[16 * k: 16 * (k + 1)], torch.zeros(16, dtype=torch.long),
                        300, sidecar=False) for k in range(4)]
    arr = ShardedArray.open(tmp_path, [ShardRecord(**vars(r)) for r in recs], "tokens", (4, 4), "")
    drops = []
    real = arr.drop_pages
    monkeypatch.setattr(arr, "drop_pages", lambda: (drops.append(1), real()))
    arr._budget = pages.PageBudget(arr.drop_pages, budget=8 * pages.READ_COST)
    order = torch.randperm(64, generator=g)
    got = torch.stack([arr[int(i)] for i in order])  # one random row at a time, as a DataLoader reads
    assert torch.equal(got, tokens[order])
    assert len(drops) == 8  # one drop per 8 reads: 64 reads
    assert torch.equal(arr[:], tokens)  # the maps still read after their pages were dropped


def test_arrow_column_drops_table_pages_as_it_reads(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from pipelines.data.hub import ArrowColumn

    rows = [{"image": {"bytes": bytes([i]) * 10000, "path": f"{i}.png"}} for i in range(40)]  # buffers of whole pages
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    col = ArrowColumn(ds, "image")
    assert col.mapped.files and all(Path(f).suffix == ".arrow" for f in col.mapped.files)
    drops = []
    col._pages = pages.PageBudget(lambda: drops.append(col.mapped.drop()), budget=10 * pages.READ_COST)
    got = [col[i]["bytes"] for i in range(40)]
    assert got == [r["image"]["bytes"] for r in rows]
    assert len(drops) == 4
    if sys.platform.startswith("linux"):
        assert all(d > 0 for d in drops)  # the table's mapping was found and advised


def test_only_the_tables_own_pages_are_advised_and_memory_tables_never(tmp_path: Path) -> None:
    """Two tables of one Arrow file: dropping the pages of one, after the other is freed and its addresses reused,
    leaves fresh allocations intact (only the live table's own buffers are advised); an in-memory table (no file
    mapping) is never advised, since DONTNEED zeroes anonymous memory."""
    import gc

    datasets = pytest.importorskip("datasets")
    from pipelines.data.hub import ArrowColumn

    rows = [{"image": {"bytes": bytes([i % 251]) * 20000, "path": f"{i}.png"}} for i in range(200)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    a = ArrowColumn(datasets.load_from_disk(str(tmp_path / "ds")), "image")
    b = ArrowColumn(datasets.load_from_disk(str(tmp_path / "ds")), "image")
    a[0], b[0]
    assert a.mapped.drop() > 0 and b.mapped.drop() > 0
    mapped = pages.read_only_mappings(b.mapped.files)
    assert all(any(lo <= x and y <= hi for lo, hi in mapped) for x, y in b.mapped._ranges)  # inside b's own mapping
    del a
    gc.collect()
    fresh = [np.full(1 << 18, 7.0) for _ in range(8)]  # may land where a's table was mapped
    b.mapped.drop()
    assert all(float(v.sum()) == 7.0 * (1 << 18) for v in fresh)
    assert [b[i]["bytes"] for i in (0, 150)] == [rows[0]["image"]["bytes"], rows[150]["image"]["bytes"]]
    memory = ArrowColumn(datasets.Dataset.from_list(rows[:20]), "image")
    assert memory.mapped.drop() == 0 and memory[5]["bytes"] == rows[5]["image"]["bytes"]


def test_collate_readable_gives_unknown_labels_minus_one() -> None:
    """With worker processes, ``input_batches`` batches through ``collate_readable``: a None label becomes -1, as
    reading in the scoring process gives, and unreadable items (None) are left out."""
    from pipelines.likelihood.score import collate_readable, input_batches

    items = [(torch.full((2,), float(i)), None if i % 2 else i) for i in range(5)]
    x, y = collate_readable([items[0], None, items[1], items[2]])
    assert y.tolist() == [0, -1, 2] and x[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert collate_readable([None, None]) is None

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(items)

        def __getitem__(self, i: int):
            return items[i]

    mine = [(x.tolist(), y.tolist()) for x, y in input_batches(Items(), 2)]
    workers = [(x.tolist(), y.tolist()) for x, y in input_batches(Items(), 2, num_workers=2)]
    assert mine == workers and mine[0][1] == [0, -1]
