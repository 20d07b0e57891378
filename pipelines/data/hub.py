"""Hugging Face ``datasets`` sources: Hub ids, and local folders ``datasets`` reads itself (parquet/arrow
files, ``save_to_disk`` output; the tests use these to run the Hub code path offline).

Images: the ``spec.image_column`` column, cast to ``Image(decode=False)`` and read row by row from the Arrow
table (memory-mapped: ``ArrowColumn``, never copied into a list), decoded with PIL on access and checked there
(``EncodedImageDataset``): ``(x float32 [C, H, W] in [0, 1], label int64)``. Audio: the ``spec.audio_column`` column, cast to
``Audio(decode=False)``, referenced by row (``ArrowCell``, the bytes stay in the table) and read with soundfile (``datasets`` 5 decodes through torchcodec, which needs
FFmpeg): ``(x float32 [clip_samples] in [-1, 1], label int64)``. Labels come from ``spec.label_column``
(-1 without one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .audio_io import holdout, holds_out_tails, make_audio_splits
from .image_io import EncodedImageDataset
from .pages import PageBudget, TablePages
from .spec import DataSpec, SkipLog, Splits, unknown_dataset_error

DATASET_FILE_EXTS = {".parquet", ".arrow", ".csv", ".jsonl"}


def is_dataset_folder(path: Path) -> bool:
    """True for a folder ``datasets`` can load itself (save_to_disk output, or parquet/arrow/csv/json files)."""
    if _is_saved_to_disk(path):
        return True
    return any(f.suffix in DATASET_FILE_EXTS for f in path.rglob("*") if f.is_file())


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file())


def load_dataset_dict(spec: DataSpec) -> Any:
    """A ``datasets.DatasetDict`` for ``spec.name``: ``save_to_disk`` output (a lone ``Dataset`` becomes the
    train split), or anything ``datasets.load_dataset`` accepts (Hub id at ``spec.revision``, data folder)."""
    import datasets

    if _is_saved_to_disk(Path(spec.name)):
        dd = datasets.load_from_disk(spec.name)
        return datasets.DatasetDict({spec.train_split: dd}) if isinstance(dd, datasets.Dataset) else dd
    try:
        return datasets.load_dataset(spec.name, revision=spec.revision)
    except FileNotFoundError as e:
        raise unknown_dataset_error(spec.name) from e


def _train_split(spec: DataSpec, dataset_dict: Any, where: str) -> Any:
    if spec.train_split not in dataset_dict:
        raise ValueError(f"{where}: no split {spec.train_split!r}; splits are {list(dataset_dict)}")
    return dataset_dict[spec.train_split]


# ---------------------------------------------------------------------------- images
def _cells(ds: Any, column: str, feature: Any, flag: str, where: str) -> tuple[Any, list[ArrowCell]]:
    """(the split with ``column`` cast to the undecoded ``feature``, a reference to each row's cell): audio, whose
    files are all read once when loaded, each cell read again from the table when a window of it is needed."""
    ds = _cast(ds, column, feature, flag, where)
    col = ArrowColumn(ds, column)
    return ds, [ArrowCell(col, i) for i in range(len(col))]


def _cast(ds: Any, column: str, feature: Any, flag: str, where: str) -> Any:
    if column not in ds.column_names:
        raise ValueError(f"{where}: no column {column!r}; columns are {ds.column_names}. Pass {flag} NAME")
    return ds.cast_column(column, feature)


def _labels(ds: Any, spec: DataSpec, n: int, index: dict[str, int] | None = None) -> list[int]:
    """The int labels of a split's n rows (``index`` maps string labels), or -1 without a label column."""
    if spec.label_column and spec.label_column in ds.column_names:
        raw = ds[spec.label_column]
        return [index[str(v)] for v in raw] if index is not None else [int(v) for v in raw]
    return [-1] * n


class ArrowColumn(Sequence):
    """One column of an Arrow-backed ``datasets.Dataset`` (Hub download, imagefolder cache, ``save_to_disk``
    folder) read by row index from its memory-mapped table: ``c[i]`` is row i's cell (for an ``Image(decode=False)``
    column, ``{"bytes": bytes | None, "path": str | None}``). Nothing is copied into Python objects until a row is
    asked for, so memory does not grow with the split; a DataLoader worker gets the table by its file, not a copy.
    Every few tens of rows read, the pages of this table's buffers are dropped from the process's resident memory
    (``pages.TablePages``): a pass over a table larger than RAM keeps a flat RSS."""

    def __init__(self, ds: Any, column: str):
        self.ds, self.column = ds.select_columns([column]), column
        self._watch_pages()

    def _watch_pages(self) -> None:
        table = getattr(self.ds.data, "table", self.ds.data)  # datasets' Table wraps a pyarrow.Table
        self.mapped = TablePages(table, (c["filename"] for c in self.ds.cache_files))
        self._pages = PageBudget(self.mapped.drop)

    def __getstate__(self) -> dict[str, Any]:  # datasets pickles a mapped table by its files; the page state is redone
        return {"ds": self.ds, "column": self.column}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.ds, self.column = state["ds"], state["column"]
        self._watch_pages()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: Any) -> Any:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        cell = self.ds[int(i)][self.column]
        self._pages.add(len(cell.get("bytes") or b"") if isinstance(cell, dict) else 0)
        return cell


class ArrowCell:
    """Row ``row`` of an ``ArrowColumn``, read when needed (``read_cell()`` -> the cell): what an audio split holds
    per file instead of the file's bytes, so a Hub dataset of encoded audio is not copied into memory. The audio
    readers (``audio_io``) and ``describe_source`` accept it wherever they accept a cell."""

    __slots__ = ("column", "row")

    def __init__(self, column: ArrowColumn, row: int):
        self.column, self.row = column, row

    def read_cell(self) -> Any:
        return self.column[self.row]

    def __repr__(self) -> str:
        return f"ArrowCell(row {self.row} of {self.column.column!r})"


def _label_array(ds: Any, spec: DataSpec) -> np.ndarray:
    """int64 [N] labels of a split (-1 without a label column), read as one Arrow column."""
    if spec.label_column and spec.label_column in ds.column_names:
        return np.asarray(ds.with_format("numpy")[spec.label_column], dtype=np.int64)
    return np.full(len(ds), -1, dtype=np.int64)


def _image_column(ds: Any, spec: DataSpec, where: str) -> tuple[ArrowColumn, np.ndarray]:
    """(the split's encoded image cells, read on demand; int64 [N] labels or -1) of one split."""
    from datasets import Image as HFImage

    ds = _cast(ds, spec.image_column, HFImage(decode=False), "--image-column", where)
    return ArrowColumn(ds, spec.image_column), _label_array(ds, spec)


def load_hf_images(spec: DataSpec, dataset_dict: Any, where: str) -> Splits:
    """Turn a ``datasets.DatasetDict`` (from imagefolder or the Hub) into ``Splits`` of
    ``EncodedImageDataset``s over the Arrow tables (read row by row on access, nothing decoded or checked here);
    holds out ``test_fraction`` of train (seeded, stratification not attempted) when there is no test split. Bad
    images are skipped where they are read, counted in one ``SkipLog`` for both splits (``report_skips`` warns)."""
    train = _train_split(spec, dataset_dict, where)
    label_names: list[str] = []
    if spec.label_column and spec.label_column in train.column_names:
        feat = train.features[spec.label_column]
        label_names = list(getattr(feat, "names", []) or [])
    if spec.test_split and spec.test_split in dataset_dict:
        test = dataset_dict[spec.test_split]
    else:  # an indices mapping over the same table (datasets caches it beside the table's files)
        parts = train.train_test_split(test_size=spec.test_fraction, seed=spec.seed)
        train, test = parts["train"], parts["test"]
    if spec.limit:
        train = train.select(range(min(spec.limit, len(train))), keep_in_memory=True)
    tr_items, tr_labels = _image_column(train, spec, where)
    te_items, te_labels = _image_column(test, spec, where)
    skips = SkipLog(where, "image", spec.strict)  # one warning per dataset, not per split
    top = max((int(a.max()) for a in (tr_labels, te_labels) if len(a)), default=-1)
    num_classes = len(label_names) or top + 1
    make = lambda items, labels: EncodedImageDataset(items, labels, spec.image_size, spec.channels,  # noqa: E731
                                                     skips=skips)
    return Splits(train=make(tr_items, tr_labels), test=make(te_items, te_labels),
                  modality="image", num_classes=num_classes,
                  class_names=label_names or [str(i) for i in range(num_classes)],
                  input_shape=(spec.channels, spec.image_size, spec.image_size))


def load_hub_images(spec: DataSpec) -> Splits:
    """A Hub image dataset id (or any folder ``load_dataset_dict`` reads) -> ``Splits``."""
    return load_hf_images(spec, load_dataset_dict(spec), spec.name)


# ---------------------------------------------------------------------------- audio
def _audio_column(ds: Any, spec: DataSpec, where: str, index: dict[str, int] | None) -> tuple[list[Any], list[int]]:
    """(a reference to each row's undecoded audio cell, read from the table when needed; int labels or -1) of one
    split; ``index`` maps string labels to ints."""
    from datasets import Audio

    ds, sources = _cells(ds, spec.audio_column, Audio(decode=False), "--audio-column", where)
    return sources, _labels(ds, spec, len(sources), index)


def load_hf_audio(spec: DataSpec, dataset_dict: Any, where: str) -> Splits:
    """A ``datasets.DatasetDict`` (from the Hub or a local dataset folder) -> ``Splits``. Labels: a
    ``ClassLabel`` column keeps its names; string labels are mapped to their sorted order; integers are
    kept. Without ``spec.test_split``, ``test_fraction`` of train is held out: seeded whole rows, or the last
    ``test_fraction`` of every row when there are too few rows for that (``holds_out_tails``)."""
    train = _train_split(spec, dataset_dict, where)
    test = dataset_dict[spec.test_split] if spec.test_split and spec.test_split in dataset_dict else None
    if spec.label_column and spec.label_column not in train.column_names and spec.label_column != "label":
        raise ValueError(f"{where}: no label column {spec.label_column!r}; columns are {train.column_names}. "
                         "Pass --label-column NAME (or none)")
    class_names: list[str] = []
    index: dict[str, int] | None = None
    if spec.label_column and spec.label_column in train.column_names:
        feat = train.features[spec.label_column]
        class_names = list(getattr(feat, "names", None) or [])
        if not class_names:
            values = list(train[spec.label_column]) + (list(test[spec.label_column]) if test is not None else [])
            if values and isinstance(values[0], str):
                class_names = sorted(set(values))
                index = {n: i for i, n in enumerate(class_names)}
            elif values:
                class_names = [str(i) for i in range(max(int(v) for v in values) + 1)]
    tr_src, tr_lab = _audio_column(train, spec, where, index)
    tails = False
    if test is not None:
        te_src, te_lab = _audio_column(test, spec, where, index)
    elif holds_out_tails(tr_src, spec.test_fraction, spec.clip_samples, spec.sample_rate):
        te_src, te_lab, tails = [], [], True  # a few long recordings: the last part of each is held out
    else:
        tr, te = holdout(len(tr_src), spec.test_fraction, spec.seed)
        te_src, te_lab = [tr_src[i] for i in te], [tr_lab[i] for i in te]
        tr_src, tr_lab = [tr_src[i] for i in tr], [tr_lab[i] for i in tr]
    return make_audio_splits((tr_src, tr_lab), (te_src, te_lab), class_names, spec, where, tails=tails)


def load_hub_audio(spec: DataSpec) -> Splits:
    """A Hub audio dataset id, or a local folder ``datasets`` can read (parquet files, or ``save_to_disk``
    output): one code path for both, so the tests exercise the Hub path offline."""
    return load_hf_audio(spec, load_dataset_dict(spec), spec.name)
