"""Streamed Hugging Face image and audio datasets (``--streaming``): the splits are read as ``datasets`` iterable datasets, a
row at a time, so a Hub dataset larger than the disk trains and tokenizes without being downloaded whole.

Sources: a Hub id (``datasets.load_dataset(name, revision=..., streaming=True)``), a local folder of
parquet/arrow files (the same call, offline), or a ``save_to_disk`` folder (``load_from_disk(...)[split]
.to_iterable_dataset(num_shards=...)``). Built-ins and folders of image or audio files are refused: they are read
lazily already. Audio (``StreamedAudio``, ``load_streamed_audio``) is described in its class: each row a recording
decoded once and cut into ``AudioClipDataset``'s clips, a shuffle buffer of clips, a checkpoint position before the
row being cut; the rest of this docstring is said of images and holds for audio with "clip" for "row" in the
buffer and resume paragraphs.

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

from .audio_io import (
    AudioClipDataset,
    fit_clip,
    random_placement,
    read_audio,
    stratified_offset,
    validate_sources,
)
from .image_io import EncodedImageDataset, decode_image
from .spec import (
    AUDIO_EXTS,
    DATASETS,
    IMAGE_EXTS,
    DataSpec,
    SkipLog,
    Splits,
    UnreadableFileError,
    unknown_dataset_error,
)

STREAM_TEST_ROWS = 1000  # the held-out / evaluated test rows of a streamed dataset (kept in memory, encoded)
STREAM_TEST_AUDIO_BYTES = 256 * 2**20  # audio: the held-out / evaluated test rows stop at this much encoded audio
STREAM_SHARDS = 16  # a save_to_disk split is streamed as this many shards (the unit split_dataset_by_node deals)


def cell_key(cell: dict[str, Any]) -> str:
    """What identifies an undecoded image cell ``{"bytes", "path"}``: the SHA-1 of its bytes, else its path."""
    data = cell.get("bytes")
    if data is not None:
        return hashlib.sha1(data).hexdigest()
    return "path:" + str(cell.get("path"))


def check_streamable(spec: DataSpec, modality: str | None = None) -> None:
    """Refuse ``--streaming`` for what it cannot read (``ValueError`` naming the source and the fix): the
    built-ins, folders of image or audio files, and the options a stream cannot honour (``--augment``,
    ``--folds``, ``--limit``)."""
    if spec.name in DATASETS:
        raise ValueError(f"--streaming reads Hugging Face datasets (a Hub id or a local dataset folder); {spec.name} "
                         "is a built-in: drop --streaming")
    p = Path(spec.name)
    if p.is_dir() and not _is_saved_to_disk(p):
        files = {f.suffix.lower() for f in p.rglob("*") if f.is_file()}
        for exts, what in ((IMAGE_EXTS, "image"), (AUDIO_EXTS, "audio")):
            if files & exts:
                raise ValueError(f"--streaming reads Hugging Face datasets; {spec.name} is a folder of {what} "
                                 "files, which is read lazily already: drop --streaming")
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


def stream_modality(spec: DataSpec) -> str:
    """``spec.modality``, else "audio" when the training split's features have an ``Audio`` column (or
    ``spec.audio_column``) and no ``spec.image_column``, else "image" (``vqgen tokenize --raw --streaming``, which
    has no codec to say)."""
    from datasets import Audio

    if spec.modality:
        return spec.modality
    streams, _ = open_streams(spec)
    stream = streams.get(spec.train_split) or next(iter(streams.values()), None)
    features = (stream.features if stream is not None else None) or {}
    audio = spec.audio_column in features or any(isinstance(f, Audio) for f in features.values())
    return "audio" if audio and spec.image_column not in features else "image"


def _prepare(stream: Any, spec: DataSpec, where: str, modality: str = "image") -> Any:
    """The stream with only the image or audio (undecoded) and label columns."""
    if modality == "audio":
        return _prepare_audio(stream, spec, where)
    from datasets import Audio
    from datasets import Image as HFImage

    features = stream.features or {}
    if spec.image_column not in features:
        audio = [k for k, f in features.items() if isinstance(f, Audio)]
        if audio:
            raise ValueError(f"{where} holds audio (column {audio[0]!r}), read here as images: pass --modality audio "
                             "(and --audio-column NAME where it is not 'audio')")
        raise ValueError(f"{where}: no column {spec.image_column!r}; columns are {list(features)}. Pass "
                         "--image-column NAME")
    keep = [spec.image_column] + ([spec.label_column] if spec.label_column and spec.label_column in features else [])
    return stream.select_columns(keep).cast_column(spec.image_column, HFImage(decode=False))


STRING_LABELS = ("string", "large_string")


def _prepare_audio(stream: Any, spec: DataSpec, where: str) -> Any:
    """The stream with only the audio column (cast to ``Audio(decode=False)``) and the label column. String labels
    are refused (``ValueError``): their classes (sorted, as the map-style path numbers them) are not known before
    the stream has been read to its end."""
    from datasets import Audio
    from datasets import Image as HFImage

    features = stream.features or {}
    col, lab = spec.audio_column, spec.label_column
    if col not in features:
        images = [k for k, f in features.items() if isinstance(f, HFImage)]
        if images:
            raise ValueError(f"{where} holds images (column {images[0]!r}), read here as audio: drop --modality audio")
        raise ValueError(f"{where}: no column {col!r}; columns are {list(features)}. Pass --audio-column NAME")
    if lab and lab not in features and lab != "label":
        raise ValueError(f"{where}: no label column {lab!r}; columns are {list(features)}. Pass --label-column NAME "
                         "(or none)")
    if lab and lab in features and getattr(features[lab], "dtype", None) in STRING_LABELS:
        raise ValueError(f"{where}: the label column {lab!r} holds strings; a stream cannot number its classes (the "
                         "map-style path numbers them in sorted order) before it has been read to its end. Make it a "
                         f"ClassLabel column (`ds = ds.class_encode_column({lab!r})`, then save_to_disk or "
                         "push_to_hub), pass --label-column none to train without labels, or drop --streaming")
    keep = [col] + ([lab] if lab and lab in features else [])
    return stream.select_columns(keep).cast_column(col, Audio(decode=False))


def _label(row: dict[str, Any], spec: DataSpec) -> int:
    v = row.get(spec.label_column) if spec.label_column else None
    return -1 if v is None else int(v)


class _Streamed(IterableDataset):
    """What ``StreamedImages`` and ``StreamedAudio`` share: the split's stream (prepared, this process's share under
    ``world`` > 1), the rows not excluded, the shuffle buffer, epochs, and the stream position of every process
    (``state_dict`` / ``load_state_dict``)."""

    modality = ""
    shuffle_salt = 0x5B
    numbered = False  # whether a row's examples depend on the examples before it (``first``): see StreamedAudio

    def __init__(self, stream: Any, spec: DataSpec, skips: SkipLog, *, exclude: frozenset[str] = frozenset(),
                 shuffle_buffer: int = 0, rank: int = 0, world: int = 1, where: str = ""):
        from datasets.distributed import split_dataset_by_node

        self.spec, self.skips, self.exclude = spec, skips, exclude
        self.where = where or spec.name
        self.column = spec.audio_column if self.modality == "audio" else spec.image_column
        stream = _prepare(stream, spec, self.where, self.modality)
        if world > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world)
        self.stream, self.rank, self.world, self.epoch = stream, rank, world, 0
        self.shuffle_buffer = shuffle_buffer
        self._resumed = 0  # resumes of this epoch so far: a resumed buffer draws other numbers than the first

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (its shuffle); a loaded state applies to the epoch it was saved in."""
        if int(epoch) != self.epoch:
            self._resumed = 0
            self._new_epoch()
        self.epoch = int(epoch)
        self.stream.set_epoch(self.epoch)

    def _new_epoch(self) -> None:
        """What a subclass forgets when another epoch is set."""

    def _source(self) -> Any:
        """The stream's rows that are not excluded, in stream order: ``(cell, label)``."""
        if get_worker_info() is not None:
            raise RuntimeError(f"{self.where}: a streamed dataset is read in the training process only (its position "
                               "goes into checkpoints): use --num-workers 0 with --streaming")
        col = self.column
        for row in self.stream:
            cell = row[col]
            if self.exclude and cell_key(cell) in self.exclude:
                continue
            yield cell, _label(row, self.spec)

    def _shuffled(self, items: Any) -> Any:
        """``items`` in order, or through the shuffle buffer: once ``shuffle_buffer`` items are held, each new item
        takes the place of one drawn at random (numpy, seeded by seed, epoch and how many times this epoch was
        resumed), which is yielded; at the end the rest come in random order."""
        if self.shuffle_buffer <= 1:
            yield from items
            return
        rng = np.random.default_rng([self.spec.seed, self.epoch, self._resumed, self.shuffle_salt])
        buffer: list[Any] = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            out, buffer[j] = buffer[j], item
            yield out
        for j in rng.permutation(len(buffer)):
            yield buffer[j]

    def _position(self) -> dict[str, Any]:
        """This process's place in the stream, for ``state_dict``."""
        return {"stream": self.stream.state_dict()}

    def _restore(self, mine: dict[str, Any]) -> bool:
        """Go to a ``_position``; True when it was one (a resume), False for none."""
        if mine.get("stream") is None:
            return False
        self.stream.load_state_dict(mine["stream"])
        return True

    def state_dict(self) -> dict[str, Any]:
        """{"world": W, "ranks": [{"epoch", "stream", ...} of each process]}. Every process of a launch must call it
        (an all-gather): Accelerate saves custom objects from the main process only."""
        mine = {"epoch": self.epoch, "resumed": self._resumed} | self._position()
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
        if self._restore(mine):
            self._resumed = int(mine.get("resumed", 0)) + 1


class StreamedImages(_Streamed):
    """A split read from a ``datasets`` stream: yields ``(x float32 [channels, size, size] in [0, 1], label int64
    [])`` (-1 without a label column), one per readable row, in the stream's order (after the shuffle buffer, and
    this process's share under ``world`` > 1). Rows whose ``cell_key`` is in ``exclude`` (the held-out test rows)
    are passed over; unreadable rows are recorded in ``skips`` (``--strict``: raised) and passed over.

    ``set_epoch(e)`` re-draws the shuffle (and the shard order, as datasets does for e > 0); ``state_dict`` /
    ``load_state_dict`` carry the stream position of every process (see the module docstring), so that Accelerate's
    checkpoint of the training loop resumes at the next unseen row. Read it in the process that trains (no
    DataLoader worker processes: their stream positions would not come back to the checkpoint)."""

    modality = "image"

    def raw_rows(self) -> Any:
        """Per row that is not excluded, undecoded: ``(cell {"bytes", "path"}, label int)``, in stream order, or
        through the shuffle buffer (``_shuffled``). The stream's position is always that of the last row read into
        the buffer, so a resumed epoch never repeats a row (the rows the buffer held are not seen in it)."""
        return self._shuffled(self._source())

    def read(self, cell: dict[str, Any], label: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One row decoded (``decode_image``), or None when its image is unreadable (recorded in ``skips``;
        ``--strict``: raised, naming the dataset)."""
        try:
            x = decode_image(cell, self.spec.image_size, self.spec.channels)
        except UnreadableFileError as e:
            self.skips.record(e)
            return None
        return x, torch.tensor(label, dtype=torch.int64)

    def examples(self, cell: dict[str, Any], label: int, first: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What ``vqgen tokenize`` encodes of a row: ``[read(cell, label)]``, or [] when unreadable (``first``, the
        number of examples before it, is for ``StreamedAudio``)."""
        item = self.read(cell, label)
        return [] if item is None else [item]

    def rows(self) -> Any:
        """Per row of the stream that is not excluded: ``(x, label)``, or None for an unreadable image (recorded)."""
        return (self.read(cell, label) for cell, label in self.raw_rows())

    def __iter__(self) -> Any:
        return (item for item in self.rows() if item is not None)


class StreamedAudio(_Streamed):
    """An audio split read from a ``datasets`` stream: yields ``(x float32 [clip_samples] in [-1, 1], label int64
    [])`` (-1 without a label column). Each row not excluded is one recording, decoded whole once (``read_audio``:
    mono, resampled to ``spec.sample_rate``, peak-scaled, the limits of ``spec.py``; an unreadable one is recorded
    in ``skips``, ``--strict``: raised) and cut into clips as ``AudioClipDataset`` cuts a file:

    - training (default): a recording no longer than a clip is one clip, zero-padded at an offset drawn from
      (seed, epoch, item); a longer one gives max(1, round(length / clip)) windows at stratified offsets drawn the
      same way. ``item`` counts the clips of this epoch (of this process) before it, so that the clips equal those
      of an ``AudioClipDataset`` over the same recordings in the same order (with several processes the rank is
      drawn into the seed too).
    - ``cover=True`` (``vqgen tokenize``): the consecutive windows covering the recording (the last one ending at
      its end); a short one centred (``train=False``) or placed at the drawn offset (``train=True``, as the
      map-style tokenize places the training split's).

    All clips of a row are made before the next row is read. The shuffle buffer (``spec.shuffle_buffer``) holds
    clips, not rows, so that the clips of one long recording are spread over batches. The position that
    ``state_dict`` saves is the stream's before the row being cut, with how many of its clips have been handed on
    (to the batch, or into the buffer): a resumed epoch makes that row's clips again and hands on only the rest, so
    without a buffer it gives exactly the uninterrupted run's clips, and with one it repeats none and loses only
    the clips the buffer held."""

    modality = "audio"

    def __init__(self, stream: Any, spec: DataSpec, skips: SkipLog, *, exclude: frozenset[str] = frozenset(),
                 shuffle_buffer: int = 0, rank: int = 0, world: int = 1, where: str = "", cover: bool = False,
                 train: bool = True):
        if spec.clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
        super().__init__(stream, spec, skips, exclude=exclude, shuffle_buffer=shuffle_buffer, rank=rank,
                         world=world, where=where)
        self.cover, self.train = cover, train
        self._loaded: dict[str, Any] | None = None  # a position to start the next iteration from
        self._row: tuple[Any, int, int, int] | None = None  # (stream state before it, first item, clips, handed on)
        self._after = 0  # the items of this epoch before the next row

    def _new_epoch(self) -> None:
        self._loaded = None

    def _key(self, j: int) -> list[int]:
        key = [self.spec.seed, self.epoch, j]
        return key + [self.rank] if self.world > 1 else key

    def wave(self, cell: dict[str, Any]) -> torch.Tensor | None:
        """A row's recording decoded (``read_audio`` at ``spec.sample_rate``), or None when unreadable (recorded in
        ``skips``; ``--strict``: raised, naming the dataset)."""
        try:
            return read_audio(cell, self.spec.sample_rate)[0]
        except UnreadableFileError as e:
            self.skips.record(e)
            return None

    @property
    def numbered(self) -> bool:  # type: ignore[override]
        """Whether a row's clips depend on ``first``, the number of clips before it: a short training recording's
        offset and a long one's training windows are drawn per item; covering windows and centred clips are not."""
        return self.train or not self.cover

    def clip_count(self, length: int) -> int:
        """How many clips ``clips`` cuts of a recording of ``length`` samples (whatever ``first``)."""
        clip = self.spec.clip_samples
        if length <= clip:
            return 1
        return -(-length // clip) if self.cover else max(1, round(length / clip))

    def clips(self, wave: torch.Tensor, label: int, first: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The clips of one decoded recording (see the class docstring), its items numbered from ``first``."""
        clip, length = self.spec.clip_samples, int(wave.shape[0])
        y = torch.tensor(label, dtype=torch.int64)
        if length <= clip:
            slack = clip - length
            if slack == 0:
                return [(wave, y)]
            at = random_placement(self._key(first), slack) if self.train else slack // 2
            return [(fit_clip(wave, clip, at), y)]
        n = self.clip_count(length)
        if self.cover:
            offsets = [min(k * clip, length - clip) for k in range(n)]
        else:
            offsets = [stratified_offset(self._key(first + k), k, n, length - clip) for k in range(n)]
        # copies: a clip held in the shuffle buffer must not keep its whole recording in memory
        return [(wave[o:o + clip].clone(), y) for o in offsets]

    def examples(self, cell: dict[str, Any], label: int, first: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A row's clips (items numbered from ``first``), or [] when its recording is unreadable (recorded)."""
        wave = self.wave(cell)
        return [] if wave is None else self.clips(wave, label, first)

    def raw_rows(self) -> Any:
        """Per row that is not excluded, undecoded, in stream order: ``(cell, label)`` (``vqgen tokenize``)."""
        return self._source()

    def _clip_stream(self) -> Any:
        """The clips of every row in stream order, keeping ``_row`` (where a checkpoint resumes) up to date."""
        loaded, self._loaded = self._loaded, None
        before = loaded["stream"] if loaded else None  # None: the epoch's start
        j, skip = (int(loaded["items"]), int(loaded["skip"])) if loaded else (0, 0)
        self._after, self._row = j, None
        for cell, label in self._source():
            got = self.examples(cell, label, j)
            for k in range(skip, len(got)):
                self._row = (before, j, len(got), k + 1)
                yield got[k]
            skip, j, self._row = 0, j + len(got), None
            self._after = j
            before = self.stream.state_dict()

    def __iter__(self) -> Any:
        return self._shuffled(self._clip_stream())

    def _position(self) -> dict[str, Any]:
        if self._loaded is not None:  # resumed, and not read since
            return dict(self._loaded)
        row = self._row
        if row is not None and row[3] < row[2]:  # inside a row: its start, and the clips handed on
            return {"stream": row[0], "items": row[1], "skip": row[3]}
        after = row[1] + row[2] if row is not None else self._after
        return {"stream": self.stream.state_dict(), "items": after, "skip": 0}

    def _restore(self, mine: dict[str, Any]) -> bool:
        if mine.get("stream") is not None:
            self.stream.load_state_dict(mine["stream"])
        elif not mine.get("skip"):
            return False
        self._loaded = {"stream": mine.get("stream"), "items": mine.get("items", 0), "skip": mine.get("skip", 0)}
        return True


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


def _audio_head(stream: Any, n: int, spec: DataSpec, where: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The undecoded cells and labels of the first ``n`` rows of an audio stream, in order, stopping early once
    they hold ``STREAM_TEST_AUDIO_BYTES`` of encoded audio."""
    cells, labels, size = [], [], 0
    for row in _prepare_audio(stream, spec, where).take(n):
        cells.append(row[spec.audio_column])
        labels.append(_label(row, spec))
        size += len(cells[-1].get("bytes") or b"")
        if size >= STREAM_TEST_AUDIO_BYTES:
            break
    return cells, labels


def materialise_audio(stream: Any, n: int, spec: DataSpec, skips: SkipLog, where: str
                      ) -> tuple[AudioClipDataset, frozenset[str]]:
    """The first ``n`` rows of an audio stream (fewer past ``STREAM_TEST_AUDIO_BYTES``), in order, as a map-style
    test ``AudioClipDataset`` (the encoded cells in memory, each decoded once here and kept as the map-style path
    keeps files: covering windows, short recordings centred; unreadable ones recorded in ``skips``, ``--strict``:
    raised), and their ``cell_key``s."""
    cells, labels = _audio_head(stream, n, spec, where)
    data = validate_sources(cells, labels, spec.sample_rate, f"{where} [test]", spec.strict, warn=False)
    for msg in data.bad:
        skips.record(UnreadableFileError(msg))
    return (AudioClipDataset(data, spec.sample_rate, spec.clip_samples, train=False, seed=spec.seed),
            frozenset(cell_key(c) for c in cells))


def _open_train(spec: DataSpec, kind: str) -> tuple[dict[str, Any], dict[str, int], Any, SkipLog]:
    check_streamable(spec, kind)
    streams, sizes = open_streams(spec)
    if spec.train_split not in streams:
        raise ValueError(f"{spec.name}: no split {spec.train_split!r}; splits are {list(streams)}")
    return streams, sizes, streams[spec.train_split], SkipLog(spec.name, kind, spec.strict)


def _streamed_splits(spec: DataSpec, kind: str, materialise_fn: Any, prepare_fn: Any, stream_cls: Any
                     ) -> tuple[Any, Any, list[str]]:
    """(the training stream, as ``stream_cls``; the in-memory test split, by ``materialise_fn``: the dataset's test
    split, else the held-out head of the training stream, which training then skips; the label names) for
    ``kind`` ("image" or "audio")."""
    streams, sizes, train, skips = _open_train(spec, kind)
    where = spec.name
    if spec.test_split and spec.test_split in streams:
        test, _ = materialise_fn(streams[spec.test_split], STREAM_TEST_ROWS, spec, skips, where)
        exclude: frozenset[str] = frozenset()
    else:
        n = held_out_rows(spec, prepare_fn(train, spec, where), sizes.get(spec.train_split))
        test, exclude = materialise_fn(train, n, spec, skips, where)
    rank, world = _world()
    train_set = stream_cls(train, spec, skips, exclude=exclude, shuffle_buffer=spec.shuffle_buffer, rank=rank,
                           world=world, where=where)
    return train_set, test, _class_names(train, spec)


def load_streamed(spec: DataSpec, modality: str) -> Splits:
    """``load_streamed_images`` or ``load_streamed_audio``, by ``modality``."""
    return load_streamed_audio(spec) if modality == "audio" else load_streamed_images(spec)


def load_streamed_images(spec: DataSpec) -> Splits:
    """``Splits`` for training: ``train`` a ``StreamedImages`` (shuffled by ``spec.shuffle_buffer``, this
    process's share under a launch), ``test`` an in-memory ``EncodedImageDataset`` of at most
    ``STREAM_TEST_ROWS`` rows (the dataset's test split, else the held-out head of the training stream: see the
    module docstring). ``num_classes``: the label column's names, else the largest test label + 1."""
    train_set, test, names = _streamed_splits(spec, "image", materialise, _prepare, StreamedImages)
    num_classes = len(names) or (int(test.labels.max()) + 1 if len(test.labels) else 0)
    return Splits(train=train_set, test=test, modality="image", num_classes=num_classes,
                  class_names=names or [str(i) for i in range(num_classes)],
                  input_shape=(spec.channels, spec.image_size, spec.image_size))


def load_streamed_audio(spec: DataSpec) -> Splits:
    """``Splits`` for training on a streamed audio dataset: ``train`` a ``StreamedAudio`` (training clips, shuffled
    by a buffer of ``spec.shuffle_buffer`` clips, this process's share under a launch), ``test`` an in-memory
    ``AudioClipDataset`` of covering windows over at most ``STREAM_TEST_ROWS`` recordings (and
    ``STREAM_TEST_AUDIO_BYTES`` of encoded audio): the dataset's test split, else the held-out head of the training
    stream (which training skips by ``cell_key``). ``num_classes``: the ClassLabel's names, else the largest test
    label + 1."""
    if spec.clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {spec.clip_samples}")
    train_set, test, names = _streamed_splits(spec, "audio", materialise_audio, _prepare_audio, StreamedAudio)
    num_classes = len(names) or max((int(v) + 1 for v in test.labels), default=0)
    return Splits(train=train_set, test=test, modality="audio", num_classes=num_classes,
                  class_names=names or [str(i) for i in range(num_classes)], input_shape=(spec.clip_samples,),
                  sample_rate=spec.sample_rate)


def stream_splits_for_tokenize(spec: DataSpec, modality: str = "image"
                               ) -> tuple[dict[str, StreamedImages | StreamedAudio], list[str]]:
    """For ``vqgen tokenize --streaming``: {"train", "test"} as unshuffled ``StreamedImages`` (or ``StreamedAudio``
    giving covering windows: the training split's short recordings placed as the map-style tokenize places them,
    the test split's centred) in stream order, the whole stream (under a launch every process reads every row and
    decodes only those of its own shards), and the class names (empty when the label column has none). The test split is the dataset's, streamed whole, else the held-out head of the training stream (which the
    train stream skips)."""
    audio = modality == "audio"
    streams, sizes, train, skips = _open_train(spec, modality)
    where = spec.name
    if spec.test_split and spec.test_split in streams:
        test_stream, exclude = streams[spec.test_split], frozenset()
    elif audio:
        n = held_out_rows(spec, _prepare_audio(train, spec, where), sizes.get(spec.train_split))
        cells, _ = _audio_head(train, n, spec, where)  # the rows training holds out (no decoding here)
        exclude, test_stream = frozenset(cell_key(c) for c in cells), train.take(len(cells))
    else:
        n = held_out_rows(spec, _prepare(train, spec, where), sizes.get(spec.train_split))
        _, exclude = materialise(train, n, spec, skips, where)
        test_stream = train.take(n)
    if audio:
        return ({"train": StreamedAudio(train, spec, skips, exclude=exclude, where=where, cover=True, train=True),
                 "test": StreamedAudio(test_stream, spec, skips, where=where, cover=True, train=False)},
                _class_names(train, spec))
    make = lambda s, ex: StreamedImages(s, spec, skips, exclude=ex, where=where)  # noqa: E731
    return {"train": make(train, exclude), "test": make(test_stream, frozenset())}, _class_names(train, spec)
