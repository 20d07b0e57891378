"""Streamed Hugging Face image datasets (``--streaming``): the splits are read as ``datasets`` iterable datasets, a
row at a time, so a Hub dataset larger than the disk trains and tokenizes without being downloaded whole.

Sources: a Hub id (``datasets.load_dataset(name, revision=..., streaming=True)``), a local folder of
parquet/arrow files (the same call, offline), or a ``save_to_disk`` folder (``load_from_disk(...)[split]
.to_iterable_dataset(num_shards=...)``). Built-ins and folders of image files are refused: they are read lazily
already. Images only: audio streams are refused.

The image column is cast to ``Image(decode=False)`` and each cell is decoded by ``image_io.decode_image``, the
function the map-style path uses (same resize, centre crop and channels); unreadable cells are counted in a
``SkipLog`` (one warning at the end of the run, naming them) or raise under ``--strict``.

The test split: the dataset's ``spec.test_split`` when it has one; else the first N rows of the training stream
(N = ceil(test_fraction x rows), at most ``STREAM_TEST_ROWS``; rows counted from the dataset's metadata, or by
reading at most ``STREAM_TEST_ROWS / test_fraction`` rows when it has none), which the training stream then
skips: every row whose encoded image equals a held-out one (``cell_key``) is left out of training, whatever the
shard, shuffle or process it comes in. For training, the test split is materialised in memory (encoded, at most
``STREAM_TEST_ROWS`` rows) as an ordinary map-style ``EncodedImageDataset``; ``vqgen tokenize`` streams it whole.

Training order: a shuffle buffer of ``spec.shuffle_buffer`` rows (``StreamedImages.raw_rows``; 0 or 1: the stream's
order), re-drawn each epoch by ``set_epoch``, which also has datasets shuffle the order of the stream's shards
(epochs after the first). With several processes each takes ``split_dataset_by_node(stream, rank, world)``.
The buffer is ours, not ``IterableDataset.shuffle``: resumed from its ``state_dict``, datasets 5.2's buffered
stream yields rows again that it had yielded before the checkpoint (measured on a 40-row save_to_disk split:
one repeated row out of 12 for most buffer sizes); ours repeats none.

Resume: ``StreamedImages.state_dict`` is the stream's own ``IterableDataset.state_dict()`` (its position at the
last row it yielded, i.e. the last row read into the buffer) with the epoch, gathered from every process;
``load_state_dict`` gives each process its own entry back, and the next iteration continues at the next unseen
row. As datasets documents for its own buffer, the rows that sat in the shuffle buffer when the state was taken are
not restored (they are not in the checkpoint): the buffer is refilled from the rows after the saved position, so
those rows (at most ``shuffle_buffer`` per process) are not seen in that epoch, and none is seen twice. Without a
buffer the resumed run sees exactly the rows an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .image_io import EncodedImageDataset, decode_image
from .spec import DATASETS, IMAGE_EXTS, DataSpec, SkipLog, Splits, UnreadableFileError, unknown_dataset_error

STREAM_TEST_ROWS = 1000  # the held-out / evaluated test rows of a streamed dataset (kept in memory, encoded)
STREAM_SHARDS = 16  # a save_to_disk split is streamed as this many shards (the unit split_dataset_by_node deals)


def cell_key(cell: dict[str, Any]) -> str:
    """What identifies an undecoded image cell ``{"bytes", "path"}``: the SHA-1 of its bytes, else its path."""
    data = cell.get("bytes")
    if data is not None:
        return hashlib.sha1(data).hexdigest()
    return "path:" + str(cell.get("path"))


def check_streamable(spec: DataSpec, modality: str | None = None) -> None:
    """Refuse ``--streaming`` for what it cannot read (``ValueError`` naming the source and the fix): audio, the
    built-ins, folders of image files, and the options a stream cannot honour (``--augment``, ``--folds``,
    ``--limit``)."""
    if modality == "audio" or spec.modality == "audio":
        raise ValueError(f"--streaming reads image datasets; {spec.name} holds audio: drop --streaming (audio is "
                         "loaded by the map-style path)")
    if spec.name in DATASETS:
        raise ValueError(f"--streaming reads Hugging Face datasets (a Hub id or a local dataset folder); {spec.name} "
                         "is a built-in: drop --streaming")
    p = Path(spec.name)
    if p.is_dir() and not _is_saved_to_disk(p) and any(f.suffix.lower() in IMAGE_EXTS for f in p.rglob("*")
                                                       if f.is_file()):
        raise ValueError(f"--streaming reads Hugging Face datasets; {spec.name} is a folder of image files, which "
                         "is read lazily already: drop --streaming")
    for flag, given in (("--augment", spec.augment), ("--folds", spec.folds), ("--limit", spec.limit),
                        ("--fold", spec.fold), ("--validation", spec.validation)):
        if given:
            raise ValueError(f"{flag} does not work with --streaming (a stream has no item index to draw from, nor "
                             "a length to cut): drop one of them")


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file())


def open_streams(spec: DataSpec) -> tuple[dict[str, Any], dict[str, int]]:
    """(split name -> ``datasets.IterableDataset``, split name -> rows where the metadata says). Raises
    ``ValueError`` for a source that is none of a Hub id, a dataset folder or a ``save_to_disk`` folder."""
    import datasets

    p = Path(spec.name)
    if _is_saved_to_disk(p):
        dd = datasets.load_from_disk(spec.name)
        if isinstance(dd, datasets.Dataset):
            dd = {spec.train_split: dd}
        return ({k: v.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(v)))) for k, v in dd.items()},
                {k: len(v) for k, v in dd.items()})
    if not p.is_dir() and not ("/" in spec.name and not p.exists() and not spec.name.startswith((".", "/"))):
        raise unknown_dataset_error(spec.name)
    try:
        dd = datasets.load_dataset(spec.name, revision=spec.revision, streaming=True)
    except FileNotFoundError as e:
        raise unknown_dataset_error(spec.name) from e
    sizes = {}
    for k, v in dd.items():
        info = (v.info.splits or {}).get(k) if v.info is not None else None
        if info is not None and getattr(info, "num_examples", 0):
            sizes[k] = int(info.num_examples)
    return dict(dd), sizes


def _prepare(stream: Any, spec: DataSpec, where: str) -> Any:
    """The stream with only the image (undecoded) and label columns."""
    from datasets import Audio
    from datasets import Image as HFImage

    features = stream.features or {}
    if spec.image_column not in features:
        audio = [k for k, f in features.items() if isinstance(f, Audio)]
        if audio:
            raise ValueError(f"--streaming reads image datasets; {where} holds audio (column {audio[0]!r}): drop "
                             "--streaming")
        raise ValueError(f"{where}: no column {spec.image_column!r}; columns are {list(features)}. Pass "
                         "--image-column NAME")
    keep = [spec.image_column] + ([spec.label_column] if spec.label_column and spec.label_column in features else [])
    return stream.select_columns(keep).cast_column(spec.image_column, HFImage(decode=False))


def _label(row: dict[str, Any], spec: DataSpec) -> int:
    v = row.get(spec.label_column) if spec.label_column else None
    return -1 if v is None else int(v)


class StreamedImages(IterableDataset):
    """A split read from a ``datasets`` stream: yields ``(x float32 [channels, size, size] in [0, 1], label int64
    [])`` (-1 without a label column), one per readable row, in the stream's order (after the shuffle buffer, and
    this process's share under ``world`` > 1). Rows whose ``cell_key`` is in ``exclude`` (the held-out test rows)
    are passed over; unreadable rows are recorded in ``skips`` (``--strict``: raised) and passed over.

    ``set_epoch(e)`` re-draws the shuffle (and the shard order, as datasets does for e > 0); ``state_dict`` /
    ``load_state_dict`` carry the stream position of every process (see the module docstring), so that Accelerate's
    checkpoint of the training loop resumes at the next unseen row. Read it in the process that trains (no
    DataLoader worker processes: their stream positions would not come back to the checkpoint)."""

    def __init__(self, stream: Any, spec: DataSpec, skips: SkipLog, *, exclude: frozenset[str] = frozenset(),
                 shuffle_buffer: int = 0, rank: int = 0, world: int = 1, where: str = ""):
        from datasets.distributed import split_dataset_by_node

        self.spec, self.skips, self.exclude = spec, skips, exclude
        self.where = where or spec.name
        stream = _prepare(stream, spec, self.where)
        if world > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world)
        self.stream, self.rank, self.world, self.epoch = stream, rank, world, 0
        self.shuffle_buffer = shuffle_buffer
        self._resumed = 0  # resumes of this epoch so far: a resumed buffer draws other numbers than the first

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (its shuffle); a loaded state applies to the epoch it was saved in."""
        if int(epoch) != self.epoch:
            self._resumed = 0
        self.epoch = int(epoch)
        self.stream.set_epoch(self.epoch)

    def _source(self) -> Any:
        """The stream's rows that are not excluded, in stream order: ``(cell, label)``."""
        if get_worker_info() is not None:
            raise RuntimeError(f"{self.where}: a streamed dataset is read in the training process only (its position "
                               "goes into checkpoints): use --num-workers 0 with --streaming")
        col = self.spec.image_column
        for row in self.stream:
            cell = row[col]
            if self.exclude and cell_key(cell) in self.exclude:
                continue
            yield cell, _label(row, self.spec)

    def raw_rows(self) -> Any:
        """Per row that is not excluded, undecoded: ``(cell {"bytes", "path"}, label int)``, in stream order, or
        through the shuffle buffer: once ``shuffle_buffer`` rows are held, each new row takes the place of one drawn
        at random (numpy, seeded by seed, epoch and how many times this epoch was resumed), which is yielded; at
        the end the rest come in random order. The stream's position is always that of the last row read into
        the buffer, so a resumed epoch never repeats a row (the rows the buffer held are not seen in it)."""
        source = self._source()
        if self.shuffle_buffer <= 1:
            yield from source
            return
        rng = np.random.default_rng([self.spec.seed, self.epoch, self._resumed, 0x5B])
        buffer: list[Any] = []
        for item in source:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            out, buffer[j] = buffer[j], item
            yield out
        for j in rng.permutation(len(buffer)):
            yield buffer[j]

    def read(self, cell: dict[str, Any], label: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One row decoded (``decode_image``), or None when its image is unreadable (recorded in ``skips``;
        ``--strict``: raised, naming the dataset)."""
        try:
            x = decode_image(cell, self.spec.image_size, self.spec.channels)
        except UnreadableFileError as e:
            self.skips.record(e)
            return None
        return x, torch.tensor(label, dtype=torch.int64)

    def rows(self) -> Any:
        """Per row of the stream that is not excluded: ``(x, label)``, or None for an unreadable image (recorded)."""
        return (self.read(cell, label) for cell, label in self.raw_rows())

    def __iter__(self) -> Any:
        return (item for item in self.rows() if item is not None)

    def state_dict(self) -> dict[str, Any]:
        """{"world": W, "ranks": [{"epoch", "stream"} of each process]}. Every process of a launch must call it
        (an all-gather): Accelerate saves custom objects from the main process only."""
        mine = {"epoch": self.epoch, "stream": self.stream.state_dict(), "resumed": self._resumed}
        if self.world > 1 and torch.distributed.is_initialized():
            every: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(every, mine)
        else:
            every = [mine]
        return {"world": self.world, "ranks": every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """This process's entry of a ``state_dict``; ``ValueError`` when the run had another number of processes."""
        if int(state["world"]) != self.world:
            raise ValueError(f"--resume: the streamed run was checkpointed with {state['world']} process(es), this one "
                             f"has {self.world}: each process's stream position belongs to its own share of the "
                             "stream; resume with the same number of processes")
        mine = state["ranks"][self.rank]
        self.set_epoch(int(mine["epoch"]))
        if mine.get("stream") is not None:
            self.stream.load_state_dict(mine["stream"])
            self._resumed = int(mine.get("resumed", 0)) + 1


def _count_rows(stream: Any, cap: int) -> int:
    """Rows of a stream, reading at most ``cap`` (the count stops there)."""
    n = 0
    for _ in stream.take(cap):
        n += 1
    return n


def held_out_rows(spec: DataSpec, stream: Any, known: int | None) -> int:
    """How many leading rows of the training stream are held out as the test split: ceil(test_fraction x rows),
    at least 1 and at most ``STREAM_TEST_ROWS``; rows from the metadata (``known``), else counted up to
    ``STREAM_TEST_ROWS / test_fraction`` (a longer stream holds out ``STREAM_TEST_ROWS``)."""
    frac = spec.test_fraction
    if not 0 < frac < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {frac}")
    cap = math.ceil(STREAM_TEST_ROWS / frac)
    n = known if known is not None else _count_rows(stream, cap)
    return max(1, min(STREAM_TEST_ROWS, math.ceil(frac * n)))


def materialise(stream: Any, n: int, spec: DataSpec, skips: SkipLog, where: str) -> tuple[EncodedImageDataset,
                                                                                          frozenset[str]]:
    """The first ``n`` rows of a stream, in order, as a map-style ``EncodedImageDataset`` (encoded cells in memory,
    decoded on access, bad ones counted in ``skips``), and their ``cell_key``s."""
    cells, labels = [], []
    for row in _prepare(stream, spec, where).take(n):
        cells.append(row[spec.image_column])
        labels.append(_label(row, spec))
    keys = frozenset(cell_key(c) for c in cells)
    return EncodedImageDataset(cells, np.asarray(labels, dtype=np.int64), spec.image_size, spec.channels,
                               skips=skips), keys


def _class_names(stream: Any, spec: DataSpec) -> list[str]:
    feat = (stream.features or {}).get(spec.label_column) if spec.label_column else None
    return list(getattr(feat, "names", None) or [])


def _world() -> tuple[int, int]:
    """(rank, world size) of this process in a launch (torchrun / accelerate launch environment)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def load_streamed_images(spec: DataSpec) -> Splits:
    """``Splits`` for training: ``train`` a ``StreamedImages`` (shuffled by ``spec.shuffle_buffer``, this
    process's share under a launch), ``test`` an in-memory ``EncodedImageDataset`` of at most
    ``STREAM_TEST_ROWS`` rows (the dataset's test split, else the held-out head of the training stream: see the
    module docstring). ``num_classes``: the label column's names, else the largest test label + 1."""
    check_streamable(spec)
    streams, sizes = open_streams(spec)
    where = spec.name
    if spec.train_split not in streams:
        raise ValueError(f"{where}: no split {spec.train_split!r}; splits are {list(streams)}")
    train = streams[spec.train_split]
    skips = SkipLog(where, "image", spec.strict)
    if spec.test_split and spec.test_split in streams:
        test, _ = materialise(streams[spec.test_split], STREAM_TEST_ROWS, spec, skips, where)
        exclude: frozenset[str] = frozenset()
    else:
        n = held_out_rows(spec, _prepare(train, spec, where), sizes.get(spec.train_split))
        test, exclude = materialise(train, n, spec, skips, where)
    rank, world = _world()
    train_set = StreamedImages(train, spec, skips, exclude=exclude, shuffle_buffer=spec.shuffle_buffer, rank=rank,
                               world=world, where=where)
    names = _class_names(train, spec)
    num_classes = len(names) or (int(test.labels.max()) + 1 if len(test.labels) else 0)
    return Splits(train=train_set, test=test, modality="image", num_classes=num_classes,
                  class_names=names or [str(i) for i in range(num_classes)],
                  input_shape=(spec.channels, spec.image_size, spec.image_size))


def stream_splits_for_tokenize(spec: DataSpec) -> tuple[dict[str, StreamedImages], list[str]]:
    """For ``vqgen tokenize --streaming``: {"train", "test"} as unshuffled ``StreamedImages`` in stream order (one
    process), and the class names (empty when the label column has none). The test split is the dataset's,
    streamed whole, else the held-out head of the training stream (which the train stream skips)."""
    check_streamable(spec)
    streams, sizes = open_streams(spec)
    where = spec.name
    if spec.train_split not in streams:
        raise ValueError(f"{where}: no split {spec.train_split!r}; splits are {list(streams)}")
    train = streams[spec.train_split]
    skips = SkipLog(where, "image", spec.strict)
    if spec.test_split and spec.test_split in streams:
        test_stream, exclude = streams[spec.test_split], frozenset()
    else:
        n = held_out_rows(spec, _prepare(train, spec, where), sizes.get(spec.train_split))
        _, exclude = materialise(train, n, spec, skips, where)
        test_stream = train.take(n)
    make = lambda s, ex: StreamedImages(s, spec, skips, exclude=ex, where=where)  # noqa: E731
    return {"train": make(train, exclude), "test": make(test_stream, frozenset())}, _class_names(train, spec)
