"""Token shards: the files of a format-3 token folder, written in fixed-size pieces and read memory-mapped.

Shard ``k`` of a split is ``{split}-{k:05d}.safetensors`` and holds rows ``[k R, (k + 1) R)`` of the split (R =
``rows_per_shard``, the last shard shorter), whatever the number of processes that wrote it:

- ``tokens``: [rows, *token_shape] in the smallest dtype that holds the vocabulary (``token_dtype``: uint8 up
  to 256 codes, uint16 up to 65,536, else int32), so a token costs 1 or 2 bytes on disk instead of 4;
- ``labels``: [rows], the smallest signed dtype that holds them (-1 = no label).

Each shard has a record (``ShardRecord``): its file, rows, first row, token range and the SHA-256 of the file.
While a folder is being written, each finished shard's record sits beside it as ``{split}-{k:05d}.json``
(written after the shard, atomically), so a shard counts as finished only when its file and its checksum
exist: ``vqgen tokenize --resume`` keeps those whose checksum still matches. The finished folder's
``tokens.json`` holds every record and the sidecars are removed.

Reading: ``ShardedArray`` maps each file read-only (the safetensors layout is a JSON header and raw little-endian
bytes, so a tensor is a plain offset into the file; nanoGPT reads its uint16 token files the same way) and gathers
rows on demand; every few tens of MB read, the pages it mapped are dropped from the process's resident memory
(``pages.PageBudget``), so memory does not grow with the corpus or with the length of the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as safetensors_bytes

from vqgen_io import atomic_write_bytes, atomic_write_text

from .pages import READ_COST, PageBudget, drop_mmap_pages

log = logging.getLogger("vqgen.tokens")

SHARD_TOKENS = 1 << 22  # default shard size, in tokens: 4 MiB (uint8) to 8 MiB (uint16) per file
MIN_SHARDS = 16  # a split of MIN_SHARD_ROWS * MIN_SHARDS grids or more is cut into at least this many shards
MIN_SHARD_ROWS = 256  # ...but no shard is cut smaller than this by default (tiny splits stay one file)


def _open_limit() -> int:
    """Memory maps kept open per array: each holds a file descriptor, so an eighth of the process's limit (a
    training process has a tokens and a labels array, DataLoader workers their own), between 16 and 1024. Random
    batches over more shards than this reopen maps (tens of microseconds each)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        soft = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    except (ImportError, OSError, ValueError):  # not POSIX
        soft = 1024
    return max(16, min(1024, soft // 8))


OPEN_SHARDS = _open_limit()

# safetensors dtype names <-> numpy (little-endian, as the format stores them)
_ST_DTYPES = {"U8": "<u1", "I8": "<i1", "U16": "<u2", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
_SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<k>\d{5})\.(?:safetensors|json)$")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype for tokens in [0, vocab_size): uint8 up to 256 codes, uint16 up to 65,536, else int32."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def label_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest signed dtype that holds labels in [lo, hi] (-1 marks an unknown label)."""
    for dt in (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def default_shard_rows(n_rows: int, row_tokens: int) -> int:
    """Grids per shard when none is given: about ``SHARD_TOKENS`` tokens per file, but at least ``MIN_SHARDS``
    shards for a split of ``MIN_SHARDS * MIN_SHARD_ROWS`` grids or more, so that a launch of up to that many
    processes has work for each. Depends on the split alone, never on the number of processes, so that a resumed
    run (with any number of processes) cuts the split the same way."""
    by_tokens = max(1, SHARD_TOKENS // max(1, row_tokens))
    return max(1, min(by_tokens, max(MIN_SHARD_ROWS, math.ceil(n_rows / MIN_SHARDS))))


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.safetensors"


def sidecar_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.json"


def shard_files(folder: Path, split: str) -> list[Path]:
    """Shard files and sidecars of ``split`` present in ``folder`` (any index)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (m := _SHARD_NAME.match(p.name)) and m["split"] == split)


@dataclass
class ShardRecord:
    """What the manifest says about one shard: its file (relative to the folder), its rows ``[start, start +
    rows)`` of the split, the range of its tokens (``lo``, ``hi``; 0, -1 when it has none), the SHA-256 of the
    file, and the ``plan`` (``shard_plan``) it was written for."""

    file: str
    rows: int
    start: int
    lo: int
    hi: int
    sha256: str
    plan: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardRecord:
        return cls(**{k: d[k] for k in ("file", "rows", "start", "lo", "hi", "sha256")}, plan=d.get("plan", ""))


def shard_plan(**what: Any) -> str:
    """A digest of everything that decides a split's shards (dataset, codec, split size, rows per shard, ...):
    a resumed run keeps only shards written for the same plan."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_bytes(tokens: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> tuple[bytes, int, int]:
    """A shard file's bytes for tokens int [rows, *shape] in [0, vocab_size) and labels int [rows], with the
    tokens' (min, max) ((0, -1) for none). Raises ``ValueError`` for tokens outside the vocabulary."""
    t = tokens.detach().cpu().numpy()
    lo, hi = (int(t.min()), int(t.max())) if t.size else (0, -1)
    if t.size and (lo < 0 or hi >= vocab_size):
        raise ValueError(f"tokens range [{lo}, {hi}] lies outside the vocabulary [0, {vocab_size}): the codec or "
                         "the header's vocab_size is wrong")
    y = labels.detach().cpu().numpy().astype(np.int64)
    if y.shape != (t.shape[0],):
        raise ValueError(f"{t.shape[0]} token grids but labels of shape {tuple(y.shape)}")
    ydt = label_dtype(int(y.min()), int(y.max())) if y.size else np.dtype(np.int8)
    data = safetensors_bytes({"tokens": np.ascontiguousarray(t.astype(token_dtype(vocab_size))),
                              "labels": np.ascontiguousarray(y.astype(ydt))}, metadata={"format": "vqgen-tokens"})
    return data, lo, hi


def write_shard(folder: Path, split: str, k: int, start: int, tokens: torch.Tensor, labels: torch.Tensor,
                vocab_size: int, plan: str = "", sidecar: bool = True) -> ShardRecord:
    """Write shard ``k`` of ``split`` (rows ``start...``) atomically, then (``sidecar``) its record beside it: once
    the record exists the shard is finished. Returns the record."""
    data, lo, hi = shard_bytes(tokens, labels, vocab_size)
    rec = ShardRecord(shard_name(split, k), int(tokens.shape[0]), int(start), lo, hi,
                      hashlib.sha256(data).hexdigest(), plan)
    atomic_write_bytes(folder / rec.file, data)
    if sidecar:
        atomic_write_text(folder / sidecar_name(split, k), json.dumps(asdict(rec), indent=1))
    return rec


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_shard(folder: Path, rec: ShardRecord, fix: str) -> None:
    """Raise ``ValueError`` naming the file and ``fix`` unless the shard exists with its recorded checksum."""
    path = folder / rec.file
    if not path.is_file():
        raise ValueError(f"{path} is missing. {fix}")
    got = file_sha256(path)
    if got != rec.sha256:
        raise ValueError(f"{path} is corrupt: its SHA-256 is {got[:16]}..., the manifest says {rec.sha256[:16]}... "
                         f"{fix}")


def finished_shard(folder: Path, split: str, k: int, plan: str) -> ShardRecord | None:
    """The record of shard ``k`` (its sidecar) when a run for ``plan`` finished it and the file still has its
    checksum, else None: then it is to be written again."""
    side = folder / sidecar_name(split, k)
    if not side.is_file():
        return None
    try:
        rec = ShardRecord.from_dict(json.loads(side.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    if rec.plan != plan or rec.file != shard_name(split, k):
        return None
    try:
        verify_shard(folder, rec, "")
    except ValueError as e:
        log.warning("%s: written again", e)
        return None
    return rec


# ---------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Layout:
    """Where one tensor of a safetensors file lies: numpy dtype, shape, byte offset of its data."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


def read_layout(path: Path, fix: str) -> dict[str, _Layout]:
    """The tensors of a safetensors file from its header (no data read), checked against the file's size: a
    truncated or foreign file is a ``ValueError`` naming it and ending with ``fix``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            head = json.loads(f.read(n))
        out, end = {}, 0
        for name, d in head.items():
            if name == "__metadata__":
                continue
            if d["dtype"] not in _ST_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {d['dtype']}, not an integer dtype of token shards")
            dt, shape, (a, b) = np.dtype(_ST_DTYPES[d["dtype"]]), tuple(d["shape"]), d["data_offsets"]
            if b - a != dt.itemsize * math.prod(shape):
                raise ValueError(f"tensor {name!r}: {b - a} bytes for shape {shape}")
            out[name], end = _Layout(dt, shape, 8 + n + a), max(end, 8 + n + b)
        if end != size:
            raise ValueError(f"the header describes {end:,} bytes but the file has {size:,}")
    except FileNotFoundError:
        raise ValueError(f"{path} is missing. {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e}). {fix}") from None
    return out


def _torch_index(key: Any) -> np.ndarray:
    """A row index (tensor, array or sequence of ints or bools) as an int64 numpy array."""
    a = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    if a.dtype == np.bool_:
        return np.flatnonzero(a)
    if not np.issubdtype(a.dtype, np.integer) and a.size:
        raise IndexError(f"rows are indexed by integers or booleans, got {a.dtype}")
    return a.astype(np.int64)


class ShardedArray:
    """One tensor (``tokens`` [N, *shape] or ``labels`` [N]) stored as row blocks across shard files, read
    lazily as int64: it stands in for the int64 tensor ``load_tokens`` returned before shards.

    Indexing reads only the rows asked for (through each file's memory map): ``a[i]`` -> int64 [*shape],
    ``a[i:j]`` and ``a[index]`` (int or bool tensor / array) -> int64 [n, *shape]. ``len``, ``shape``, ``dtype``
    (always ``torch.int64``), ``dim()``, ``numel()``, ``min()``, ``max()`` work without a copy of the whole array;
    ``subset(rows)`` is a lazy view of some rows (``TokenGridDataset`` trains on one). Anything else a tensor
    does (``torch.cat``, ``.reshape``, ``.tolist()``, arithmetic, comparisons) works on ``materialize()``, the
    whole array as an int64 tensor, at the memory cost of one.
    """

    def __init__(self, files: Sequence[Path], key: str, rows: Sequence[int], row_shape: tuple[int, ...],
                 dtypes: Sequence[np.dtype], offsets: Sequence[int], bounds: tuple[int, int] | None = None,
                 index: np.ndarray | None = None):
        self.files, self.key, self.row_shape = list(files), key, tuple(row_shape)
        self.dtypes, self.byte_offsets = list(dtypes), list(offsets)
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(rows, dtype=np.int64))]).astype(np.int64)
        self.bounds_ = bounds  # the writer's (min, max) over the files, for a check without a scan
        self.index = index  # int64 [n] rows of the files this view shows (None: all, in order)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._budget: PageBudget | None = None

    @classmethod
    def open(cls, folder: Path, records: Sequence[ShardRecord], key: str, row_shape: tuple[int, ...],
             fix: str) -> ShardedArray:
        """``key`` of the shard files named in ``records``, each checked from its header and size (not its
        checksum: ``check_token_folder`` reads every byte) against the record's rows and ``row_shape``."""
        files, dtypes, offsets = [], [], []
        for rec in records:
            path = folder / rec.file
            lay = read_layout(path, fix).get(key)
            want = (rec.rows, *row_shape) if key == "tokens" else (rec.rows,)
            if lay is None or lay.shape != want:
                got = "no such tensor" if lay is None else f"shape {lay.shape}"
                raise ValueError(f"{path}: {key!r} has {got}, but the manifest says {want}. {fix}")
            files.append(path)
            dtypes.append(lay.dtype)
            offsets.append(lay.offset)
        bounds = None
        if key == "tokens" and records:
            full = [r for r in records if r.rows]
            bounds = (min((r.lo for r in full), default=0), max((r.hi for r in full), default=-1))
        return cls(files, key, [r.rows for r in records], row_shape if key == "tokens" else (), dtypes, offsets,
                   bounds)

    # -- what a tensor would tell without reading data
    def __len__(self) -> int:
        return int(self.starts[-1]) if self.index is None else len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return math.prod(self.shape)

    def bounds(self) -> tuple[int, int] | None:
        """(min, max) of the values as the writer recorded them (None when unknown): bounds for any view."""
        return self.bounds_

    def __repr__(self) -> str:
        return (f"ShardedArray({self.key!r}, shape={tuple(self.shape)}, files={len(self.files)}"
                + (", a view" if self.index is not None else "") + ")")

    # -- reading rows
    def _open_map(self, f: int) -> np.ndarray:
        """File f's rows as a read-only array over a memory map (the map holds its own descriptor)."""
        shape = (int(self.starts[f + 1] - self.starts[f]), *self.row_shape)
        if shape[0] == 0:
            return np.zeros(shape, dtype=self.dtypes[f])
        with open(self.files[f], "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.ndarray(shape, dtype=self.dtypes[f], buffer=mm, offset=self.byte_offsets[f])

    def _map(self, f: int) -> np.ndarray:
        m = self._maps.get(f)
        if m is None:
            if not self._maps:
                # The first read opens the maps together (as many as may stay open). Opened one by one as random
                # batches first touch them, each map's small long-lived allocations land between the batches' large
                # short-lived buffers and pin glibc's heap: measured +50 MB of private memory over the first 1,000
                # batches of a 262-shard folder, against +6 MB with the maps opened at once.
                for g in range(min(len(self.files), OPEN_SHARDS)):
                    if g != f:
                        self._maps[g] = self._open_map(g)
            m = self._maps[f] = self._open_map(f)
            if len(self._maps) > OPEN_SHARDS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(f)
        return m

    def _pages(self) -> PageBudget:
        """Counts what is read through the maps; past its budget, the maps' pages leave this process's RSS (they
        stay in the page cache): resident memory does not grow with the number of rows a long run has read."""
        if self._budget is None:
            self._budget = PageBudget(self.drop_pages)
        return self._budget

    def drop_pages(self) -> None:
        """Drop the pages of every open map from this process's resident memory (``pages.drop_mmap_pages``)."""
        for m in self._maps.values():
            if isinstance(m.base, mmap.mmap):
                drop_mmap_pages(m.base)

    def _file_rows(self, rows: np.ndarray) -> np.ndarray:
        """int64 [len(rows), *row_shape] of file rows ``rows`` (global row numbers of the files)."""
        out = np.empty((len(rows), *self.row_shape), dtype=np.int64)
        if not len(rows):
            return out
        n = int(self.starts[-1])
        if rows.min() < 0 or rows.max() >= n:
            raise IndexError(f"row index out of range for {n} rows")
        which = np.searchsorted(self.starts, rows, side="right") - 1
        self._pages().add(out.size * self.dtypes[0].itemsize + READ_COST * (len(rows) - 1))  # ~a fault per row
        if np.all(which == which[0]):  # the common case (a batch from one shard, a slice): no grouping
            out[:] = self._map(int(which[0]))[rows - self.starts[which[0]]]
            return out
        order = np.argsort(which, kind="stable")  # group the rows by shard: one gather per shard
        bounds = np.flatnonzero(np.diff(which[order])) + 1
        for group in np.split(order, bounds):
            f = int(which[group[0]])
            out[group] = self._map(f)[rows[group] - self.starts[f]]
        return out

    def _range(self, a: int, b: int) -> np.ndarray:
        """int64 rows [a, b) of the files, block by block."""
        out = np.empty((max(0, b - a), *self.row_shape), dtype=np.int64)
        if not out.size:
            return out
        self._pages().add(out.size * self.dtypes[0].itemsize)
        f = int(np.searchsorted(self.starts, a, side="right") - 1)
        i = a
        while i < b:
            stop = min(b, int(self.starts[f + 1]))
            if stop > i:
                out[i - a: stop - a] = self._map(f)[i - self.starts[f]: stop - self.starts[f]]
            i, f = stop, f + 1
        return out

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (int64 [n], indices of this view, negative from the end) -> int64 [n, *row_shape]."""
        idx = np.where(idx < 0, idx + len(self), idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        file_rows = idx if self.index is None else self.index[idx]
        return torch.from_numpy(self._file_rows(file_rows))

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple):
            if not key:
                return self.materialize()
            if key[0] is Ellipsis or key[0] is None:
                return self.materialize()[key]
            first = self[key[0]]
            rest = key[1:] if isinstance(key[0], (int, np.integer)) else (slice(None), *key[1:])
            return first[rest]
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.dim() == 0
                                                  and not key.dtype.is_floating_point and key.dtype != torch.bool):
            return self.rows(np.array([int(key)], dtype=np.int64))[0]
        if isinstance(key, slice):
            a, b, step = key.indices(len(self))
            if step == 1 and self.index is None:
                return torch.from_numpy(self._range(a, max(a, b)))
            return self.rows(np.arange(a, b, step, dtype=np.int64))
        if key is Ellipsis:
            return self.materialize()
        idx = _torch_index(key)  # any shape: the result is [*idx.shape, *row_shape], as for a tensor
        return self.rows(idx.reshape(-1)).reshape(*idx.shape, *self.row_shape)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for a in range(0, len(self), 4096):
            yield from self[a: a + 4096]

    def subset(self, idx: Any) -> ShardedArray:
        """A lazy view of rows ``idx`` (int or bool index) of this one: nothing is read until it is indexed."""
        idx = _torch_index(idx).reshape(-1)
        idx = np.where(idx < 0, idx + len(self), idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        view = ShardedArray.__new__(ShardedArray)
        view.__dict__.update(self.__dict__)  # the same files: the same open maps
        view.index = idx if self.index is None else self.index[idx]
        return view

    def materialize(self) -> torch.Tensor:
        """The whole array as an int64 tensor (a copy in memory)."""
        if self.index is None:
            return torch.from_numpy(self._range(0, len(self)))
        return self.rows(np.arange(len(self), dtype=np.int64))

    def _chunks(self) -> Iterator[torch.Tensor]:
        step = max(1, SHARD_TOKENS // max(1, math.prod(self.row_shape)))
        for a in range(0, len(self), step):
            yield self[a: a + step]

    def min(self) -> torch.Tensor:
        """The smallest value (a 0-d int64 tensor), read chunk by chunk."""
        if not len(self):
            raise RuntimeError("min() of an empty array")
        return torch.stack([c.min() for c in self._chunks() if c.numel()]).min()

    def max(self) -> torch.Tensor:
        """The largest value (a 0-d int64 tensor), read chunk by chunk."""
        if not len(self):
            raise RuntimeError("max() of an empty array")
        return torch.stack([c.max() for c in self._chunks() if c.numel()]).max()

    def long(self) -> torch.Tensor:
        return self.materialize()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.materialize().numpy()
        return a if dtype is None else a.astype(dtype)

    # -- everything else a tensor does, on the materialized tensor
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        def real(x: Any) -> Any:
            if isinstance(x, ShardedArray):
                return x.materialize()
            if isinstance(x, (list, tuple)):
                return type(x)(real(v) for v in x)
            return x

        return func(*real(args), **{k: real(v) for k, v in (kwargs or {}).items()})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if not hasattr(torch.Tensor, name):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        log.debug("%s.%s: materializing %d rows", self.key, name, len(self))
        return getattr(self.materialize(), name)

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened where the array is unpickled (a DataLoader worker), never copied into the pickle
        return {k: (OrderedDict() if k == "_maps" else None if k == "_budget" else v) for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    __hash__ = None  # type: ignore[assignment]  # compares elementwise, like a tensor


def _materializing(op: str) -> Any:
    def f(self: ShardedArray, *args: Any) -> Any:
        return getattr(self.materialize(), op)(*(a.materialize() if isinstance(a, ShardedArray) else a for a in args))

    f.__name__ = op
    return f


for _op in ("eq", "ne", "lt", "le", "gt", "ge", "add", "radd", "sub", "rsub", "mul", "rmul", "floordiv", "mod",
            "neg", "and", "or", "invert"):
    setattr(ShardedArray, f"__{_op}__", _materializing(f"__{_op}__"))
