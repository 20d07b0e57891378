"""`vqgen tokenize`: a dataset through a codec (a tokenizer, or the raw pixels / mu-law samples) into a token
folder of shards whose header records the codec; under a launcher each process encodes its share of the shards,
and ``--resume`` keeps the shards an interrupted run finished. ``--streaming`` reads a Hugging Face image or audio
dataset as a stream, in order, into shards of the same format (``tokenize_streams``; under a launcher every process
reads the whole stream and encodes its own shards)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from tokenizers_vq import Codec, RawCodec, load_codec
from vqgen_io import atomic_write_text

from ..data import DataSpec, Splits, load_data, report_skips
from ..data.shards import (
    ShardRecord,
    default_shard_rows,
    finished_shard,
    shard_files,
    shard_name,
    shard_plan,
    sidecar_name,
    write_shard,
)
from ..data.tokens import HEADER, TokenHeader, load_token_header, split_shards, write_manifest
from ..likelihood.score import ReadableRows, collate_readable, encode_batch
from ..training.accelerator import keep_group

log = logging.getLogger("vqgen.tokenize")


@torch.no_grad()
def encode_dataset(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int = 256,
                   desc: str = "tokenize", progress: bool = True, num_workers: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encode(x [B, ...]) -> int64 [B, *grid]`` over a dataset, decoding in ``num_workers`` DataLoader worker
    processes (0: here): (tokens [N', *grid], labels [N']). Items that are None (unreadable files: see ``ReadableRows``)
    are left out, so N' <= N; the rest keep their order."""
    toks, labs = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_readable)
    for batch in tqdm(loader, desc=desc, disable=not progress):
        if batch is None:
            continue
        x, y = batch
        toks.append(encode(x.float()).cpu())
        labs.append(torch.as_tensor(y).long())
    if not toks:  # every file was unreadable (the caller gives the empty tokens their grid shape)
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(toks), torch.cat(labs)


def _covering(dataset: Dataset) -> Dataset:
    """The dataset as windows covering every file when it has that view (audio files), else itself."""
    return dataset.covering() if hasattr(dataset, "covering") else dataset  # type: ignore[attr-defined]


def with_placements(splits: Splits, placements: int) -> Splits:
    """``splits`` with the training split as ``placements`` covering views of epochs 0..placements-1: an audio
    file shorter than a clip sits at an offset drawn per (seed, epoch, item), so each view holds the same words at
    other offsets (a shift by part of a token's hop gives other tokens), more distinct token sequences for a prior
    to learn from than one tokenization. Datasets without that view (images, ``tones``), or ``placements`` <= 1,
    are returned unchanged. The test split is untouched (clips centred)."""
    if placements <= 1 or not hasattr(splits.train, "covering"):
        return splits
    views = []
    for epoch in range(placements):
        view = splits.train.covering()  # type: ignore[attr-defined]
        view.set_epoch(epoch)
        views.append(view)
    return dataclasses.replace(splits, train=ConcatDataset(views))


@dataclass
class _Job:
    """Shard ``k`` of ``split``: rows [start, stop) of the split's dataset."""

    split: str
    k: int
    start: int
    stop: int


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process in a launch (torchrun, ``accelerate launch``; their
    RANK / WORLD_SIZE / MASTER_ADDR environment), (0, 1, 0) alone. Joins the launch's process group (gloo: it
    only carries barriers, on CPU and GPU launches alike) unless one is up already."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1, 0
    if not torch.distributed.is_initialized():
        # One rank may finish its shards long before another (a slow file system, an uneven last shard): the
        # barrier waits for the slowest, so the default 30-minute timeout would be too short.
        torch.distributed.init_process_group("gloo", timeout=timedelta(days=1))
        keep_group()
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _start(out: Path, splits: list[str], resume: bool) -> None:
    """The main process, before any shard is written: the folder's manifest goes (it would describe shards about
    to change); with ``resume`` its shard records become sidecars, so that a finished folder resumes like an
    interrupted one; without, sidecars left by an earlier run go (their shards are written again)."""
    try:
        old = load_token_header(out) if resume and (out / HEADER).is_file() else None
    except ValueError:
        old = None
    for split in splits:
        if old is not None and split in old.shards:
            for k, rec in enumerate(split_shards(old, split)):
                side = out / sidecar_name(split, k)
                if rec.file == shard_name(split, k) and not side.exists():
                    atomic_write_text(side, json.dumps(dataclasses.asdict(rec), indent=1))
        if not resume:
            for p in shard_files(out, split):
                if p.suffix == ".json":
                    p.unlink(missing_ok=True)
    (out / HEADER).unlink(missing_ok=True)
    # a process killed inside an atomic write leaves its temporary file (vqgen_io's ".NAME.*.tmp") behind
    for p in out.glob(".*.tmp"):
        if p.name.startswith(f".{HEADER}.") or any(p.name.startswith(f".{s}-") for s in splits):
            p.unlink(missing_ok=True)


def _finished(out: Path, jobs: list[_Job], plans: dict[str, str]) -> dict[str, list[ShardRecord]]:
    """Every job's record from its sidecar (the main process, once all processes are done)."""
    recs: dict[str, list[ShardRecord]] = {s: [] for s in plans}
    for j in sorted(jobs, key=lambda j: (j.split, j.k)):
        side = out / sidecar_name(j.split, j.k)
        if not side.is_file():
            raise RuntimeError(f"{side} is missing after every process finished: a process wrote to another folder?")
        rec = ShardRecord.from_dict(json.loads(side.read_text()))
        if rec.plan != plans[j.split] or rec.rows > j.stop - j.start:
            raise RuntimeError(f"{side} belongs to another run (plan {rec.plan}, {rec.rows} rows); tokenize again "
                               "without --resume")
        # a shard holds its rows less the unreadable files, so its first row is the count of those before it
        start = sum(r.rows for r in recs[j.split])
        recs[j.split].append(dataclasses.replace(rec, start=start))
    return recs


def tokenize_splits(splits: Splits, out: str | Path, dataset_name: str, codec: Codec,
                    codec_path: str | Path | None = None, batch_size: int = 256, progress: bool = True, *,
                    shard_rows: int | None = None, resume: bool = False, source: dict | None = None,
                    num_workers: int = 0) -> TokenHeader:
    """Write both splits as token grids ``codec.encode(x)`` into a format-3 token folder (``data/shards.py``)
    with a ``tokens.json`` header that records the codec (``codec.record(codec_path)``: a raw codec needs no
    path, its config rebuilds it). Audio files longer than a clip give one grid per window of the consecutive
    windows covering the file (the last one ends at the file's end), labelled with the file's label.

    Each split is cut into shards of ``shard_rows`` grids (default ``default_shard_rows``): shard k holds rows
    [k R, (k + 1) R) of the split, so the tokens are the same whatever the number of processes. Under a launch
    (torchrun, ``accelerate launch``) process r of W encodes the shards numbered r, r + W, ... (numbered across
    both splits); the main process writes the manifest once all are done. ``resume``: shards that an interrupted
    run (with the same dataset, codec and shard size: ``source`` names the data arguments) finished and whose
    checksum still matches are kept; only the others are encoded. ``num_workers``: DataLoader worker processes that
    decode the inputs (0: this process). An unreadable input file is left out of its shard (``ReadableRows``) and counted
    in one warning at the end; the shard's record says how many rows it holds."""
    if splits.modality != codec.modality:
        raise ValueError(f"the dataset is {splits.modality} but the codec is for {codec.modality}")
    codec.eval()
    # Timed inputs (audio) are windows of longer files, cut to the codec's clip; others must match it.
    if tuple(splits.input_shape) != tuple(codec.input_shape) and not codec.modality.timed:
        raise ValueError(f"the dataset's inputs are {tuple(splits.input_shape)} but the codec expects "
                         f"{tuple(codec.input_shape)}")
    if shard_rows is not None and shard_rows < 1:
        raise ValueError(f"--shard-rows must be at least 1, got {shard_rows}")
    out = Path(out)
    rank, world, _ = _world()
    token_shape = tuple(codec.token_shape(splits.input_shape))
    record = codec.record(codec_path)
    # Token folders hold fixed grids, so long audio files are tokenized as consecutive windows covering each file
    # (``AudioClipDataset.covering``) rather than the training split's random windows; clip datasets are unchanged.
    data = {"train": _covering(splits.train), "test": _covering(splits.test)}
    rows, plans, jobs = {}, {}, []
    for name, ds in data.items():
        n = len(ds)  # type: ignore[arg-type]
        rows[name] = shard_rows or default_shard_rows(n, math.prod(token_shape))
        plans[name] = shard_plan(split=name, n=n, rows=rows[name], dataset=dataset_name, source=source,
                                 token_shape=token_shape, codec={k: v for k, v in record.items() if k != "path"})
        jobs += [_Job(name, k, a, min(n, a + rows[name])) for k, a in enumerate(range(0, n, rows[name]))]
    mine = jobs[rank::world]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _start(out, list(data), resume)
    _barrier(world)  # no process writes a shard before the main one has cleared the folder
    written = reused = 0
    who = f" (process {rank} of {world})" if world > 1 else ""
    bar = tqdm(total=sum(j.stop - j.start for j in mine), desc=f"tokenize{who}", disable=not progress or rank != 0)
    t0 = time.perf_counter()
    for j in mine:
        if resume and finished_shard(out, j.split, j.k, plans[j.split]) is not None:
            reused += 1
        else:
            part = ReadableRows(data[j.split], range(j.start, j.stop))
            tokens, labels = encode_dataset(lambda x: encode_batch(codec, x), part, batch_size, progress=False,
                                            num_workers=num_workers)
            tokens = tokens.reshape(-1, *token_shape)  # an empty shard (every file unreadable) keeps its numbering
            write_shard(out, j.split, j.k, j.start, tokens, labels, codec.vocab_size, plans[j.split])
            written += 1
        bar.update(j.stop - j.start)
    bar.close()
    report_skips(splits)  # this process's unreadable files: one warning, as when the dataset was loaded whole
    log.info("tokenize%s: %d shards encoded, %d kept from an earlier run (checksums verified), in %.2f s", who,
             written, reused, time.perf_counter() - t0)
    _barrier(world)  # every shard is written
    if rank == 0:
        header = TokenHeader(vocab_size=codec.vocab_size, token_shape=token_shape, modality=str(codec.modality),
                             dataset=dataset_name, codec=record, num_classes=splits.num_classes,
                             class_names=list(splits.class_names))
        write_manifest(out, header, _finished(out, jobs, plans), rows, plans)
        log.info("tokenize: %d shards by %d process%s in %.2f s", len(jobs), world, "es" if world > 1 else "",
                 time.perf_counter() - t0)
    _barrier(world)  # the manifest is written
    return load_token_header(out)


def tokenize(data: dict, out: str | Path, codec_dir: str | Path | None = None, raw_levels: int | None = None,
             batch_size: int = 256, progress: bool = True, device: str = "cpu", *, shard_rows: int | None = None,
             resume: bool = False, num_workers: int = 0, streams: bool = False) -> TokenHeader:
    """The stage: load the dataset described by ``data`` (``make_spec`` arguments) and tokenize it with the codec
    in ``codec_dir`` (on ``device``; under a launch, ``cuda`` means each process's own GPU, ``cuda:LOCAL_RANK``),
    or with a ``RawCodec`` of ``raw_levels`` (2 or 256; audio is always 256-level mu-law). ``shard_rows``,
    ``resume``, ``num_workers``: see ``tokenize_splits``. ``streams``: audio recordings encoded whole into frames
    (``token_streams.tokenize_stream_splits``; a trained audio tokenizer only)."""
    from .common import make_spec

    if (codec_dir is None) == (raw_levels is None):
        raise ValueError("pass exactly one of --tokenizer DIR or --raw")
    _, world, local_rank = _world()
    if world > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
    codec = load_codec(codec_dir, map_location=device) if codec_dir is not None else None
    spec: DataSpec = make_spec(codec=codec, **data)
    source = {k: v for k, v in data.items() if k != "cache_dir"}  # what decides the inputs (not where they are cached)
    if streams:
        from .token_streams import check_streams_codec, tokenize_stream_splits

        if codec is None:
            raise ValueError("--streams needs a trained audio tokenizer (--tokenizer DIR), not --raw: raw mu-law samples "
                             "are one token per sample, for which fixed clips (without --streams) already are the stream")
        check_streams_codec(codec)
        if spec.streaming:
            raise ValueError("--streams (audio recordings as frame streams) and --streaming (a Hugging Face dataset "
                             "dataset read as a stream) do not go together")
        if num_workers:
            log.info("tokenize --streams reads the recordings in this process (--num-workers %d unused)", num_workers)
        return tokenize_stream_splits(load_data(spec), out, spec.name, codec, codec_dir, batch_size, progress,
                                      shard_rows=shard_rows, resume=resume, source=source | {"streams": True})
    if spec.streaming:
        return _tokenize_streaming(spec, out, codec, codec_dir, raw_levels, batch_size, progress,
                                   shard_rows=shard_rows, resume=resume, source=source, num_workers=num_workers)
    splits = load_data(spec)
    if codec is None:  # the modality refuses levels it has no raw codec for (audio: 256-level mu-law only)
        codec = RawCodec(splits.modality, raw_levels, splits.input_shape, splits.sample_rate)
    return tokenize_splits(splits, out, spec.name, codec, codec_dir, batch_size, progress, shard_rows=shard_rows,
                           resume=resume, source=source, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------------- streaming
def _tokenize_streaming(spec: DataSpec, out: str | Path, codec: Codec | None, codec_dir: str | Path | None,
                        raw_levels: int | None, batch_size: int, progress: bool, *,
                        shard_rows: int | None, resume: bool, source: dict, num_workers: int) -> TokenHeader:
    """``tokenize`` of a streamed dataset (``spec.streaming``): no DataLoader workers; under a launch every process
    reads the whole stream and encodes its own shards (``tokenize_streams``)."""
    from ..data.streaming import check_streamable, stream_modality, stream_splits_for_tokenize

    if num_workers:
        raise ValueError(f"--num-workers {num_workers} with --streaming: the stream is read in order in this process "
                         "(its position after each shard is what --resume continues from); use --num-workers 0")
    check_streamable(spec)
    modality = str(codec.modality) if codec is not None else stream_modality(spec)
    streams, class_names = stream_splits_for_tokenize(spec, modality)
    audio = modality == "audio"
    input_shape = (spec.clip_samples,) if audio else (spec.channels, spec.image_size, spec.image_size)
    if codec is None:
        codec = RawCodec(modality, raw_levels, input_shape, spec.sample_rate if audio else None)
    return tokenize_streams(streams, class_names, out, spec.name, codec, codec_dir, batch_size, progress,
                            input_shape=input_shape, shard_rows=shard_rows, resume=resume, source=source)


def tokenize_streams(streams: dict[str, Any], class_names: list[str], out: str | Path, dataset_name: str,
                     codec: Codec, codec_path: str | Path | None = None, batch_size: int = 256, progress: bool = True,
                     *, input_shape: tuple[int, ...], shard_rows: int | None = None, resume: bool = False,
                     source: dict | None = None) -> TokenHeader:
    """Write streamed splits (name -> ``data.streaming.StreamedImages`` or ``StreamedAudio``, read in order) as a format-3 token folder,
    as ``tokenize_splits`` writes map-style ones: shard k of a split holds its input rows [k R, (k + 1) R) (R =
    ``shard_rows``, default about ``SHARD_TOKENS`` tokens a shard; the split's length is not known ahead), less the
    unreadable ones, so the tokens are those of the map-style path for the same rows and shard size (audio: the
    covering windows of each of those R recordings, numbered on from the grids of the shards before). Each shard's
    sidecar also records its input rows and the stream's ``state_dict()`` after it; ``resume`` keeps the finished
    shards (checksums verified): the stream jumps to the position after the leading run of them, and the rows of a
    finished shard after a gap are read past without being decoded or encoded. ``num_classes``: the label column's
    names, else the largest label written + 1.

    Under a launch (torchrun, ``accelerate launch``) process r of W owns the shards k with k % W == r: every process
    reads every row of the stream, undecoded (``raw_rows``: so all number the shards alike and see where each split
    ends), and decodes and encodes only the rows of its own shards, reading past the others' (so each process
    reads, or downloads, the whole stream; only decoding and encoding are divided). The folder is the one a single
    process writes. ``resume``: the main process finds the leading run of finished shards (whoever wrote them) and
    tells the others, so that all continue from the same position; each keeps its own finished shards after a gap.
    The main process writes the manifest from every shard's sidecar once all are done.
    A split whose examples are numbered across rows (``numbered``: a streamed audio training split, whose short
    recordings are placed at offsets drawn per grid number) needs the grid count of every shard before one to
    encode it: the processes then go in rounds of W shards, each decodes its shard's rows to count its grids (the
    recordings kept decoded up to ``_WAVE_CACHE_BYTES``, the rest decoded again), the counts are exchanged, and each
    encodes its shard."""
    if shard_rows is not None and shard_rows < 1:
        raise ValueError(f"--shard-rows must be at least 1, got {shard_rows}")
    if tuple(codec.input_shape) != tuple(input_shape):
        raise ValueError(f"the dataset's inputs are {tuple(input_shape)} but the codec expects "
                         f"{tuple(codec.input_shape)}")
    codec.eval()
    out = Path(out)
    rank, world, _ = _world()
    token_shape = tuple(codec.token_shape(input_shape))
    record = codec.record(codec_path)
    rows = shard_rows or default_shard_rows(1 << 62, math.prod(token_shape))  # a length beyond any: the token rule
    plans = {name: shard_plan(split=name, rows=rows, dataset=dataset_name, source=source, token_shape=token_shape,
                              codec={k: v for k, v in record.items() if k != "path"}, streaming=True)
             for name in streams}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _start(out, list(streams), resume)
    _barrier(world)  # no process writes a shard before the main one has cleared the folder
    who = f" (process {rank} of {world})" if world > 1 else ""
    t0 = time.perf_counter()
    done: dict[str, tuple[dict[int, ShardRecord], int]] = {}
    written = reused = 0
    for name, ds in streams.items():
        split = _StreamSplit(out, name, ds, rows, plans[name], codec, token_shape, batch_size, rank, world)
        known, count, w, r = split.run(resume, progress)
        done[name], written, reused = (known, count), written + w, reused + r
    report_skips(*streams.values())  # this process's unreadable rows
    log.info("tokenize --streaming%s: %d shards encoded, %d kept from an earlier run (checksums verified), in %.2f s",
             who, written, reused, time.perf_counter() - t0)
    _barrier(world)  # every shard is written
    if rank == 0:
        records = {name: _stream_records(out, name, count, plans[name], known) for name, (known, count) in done.items()}
        labels_max = -1
        if not class_names:  # labels without names: the largest one written decides the count
            from safetensors.numpy import load_file

            for recs in records.values():
                for rec in recs:
                    y = load_file(str(out / rec.file))["labels"]
                    labels_max = max(labels_max, int(y.max()) if y.size else -1)
        num_classes = len(class_names) or labels_max + 1
        header = TokenHeader(vocab_size=codec.vocab_size, token_shape=token_shape, modality=str(codec.modality),
                             dataset=dataset_name, codec=record, num_classes=num_classes,
                             class_names=list(class_names) or [str(i) for i in range(num_classes)])
        write_manifest(out, header, records, {n: rows for n in streams}, plans)
        if world > 1:
            log.info("tokenize --streaming: %d shards by %d processes in %.2f s",
                     sum(len(r) for r in records.values()), world, time.perf_counter() - t0)
    _barrier(world)  # the manifest is written
    return load_token_header(out)


def _stream_records(out: Path, name: str, count: int, plan: str, known: dict[int, ShardRecord]) -> list[ShardRecord]:
    """The records of a split's ``count`` shards (the main process, once every process is done): those it knows,
    the others' from their sidecars (checksums verified), each with its final ``start``."""
    recs: list[ShardRecord] = []
    start = 0
    for k in range(count):
        rec = known.get(k) or finished_shard(out, name, k, plan)
        if rec is None:
            raise RuntimeError(f"{out / sidecar_name(name, k)} is missing or does not match its shard after every "
                               "process finished: a process wrote to another folder?")
        recs.append(dataclasses.replace(rec, start=start))  # a shard's first row: the rows (less unreadable) before it
        start += rec.rows
    return recs


def _sidecar_extras(out: Path, split: str, k: int) -> dict[str, Any]:
    """What a streamed shard's sidecar adds to its record ("inputs", "stream"); {} for one without them."""
    try:
        d = json.loads((out / sidecar_name(split, k)).read_text())
    except (OSError, ValueError):
        return {}
    return {key: d[key] for key in ("inputs", "stream") if key in d}


def _resume_point(out: Path, name: str, rows: int, plan: str) -> tuple[dict[int, ShardRecord], bool, Any, int]:
    """Where ``--resume`` continues a split: the leading run of its finished shards, whoever wrote them (their
    records by number), whether the split's last shard is among them (nothing is left to read), and the stream
    position after them (None: none stored) or else the rows to read past."""
    recs: dict[int, ShardRecord] = {}
    k, last_done = 0, False
    extras: dict[str, Any] = {}
    while (rec := finished_shard(out, name, k, plan)) is not None:
        recs[k] = rec
        extras = _sidecar_extras(out, name, k)
        k += 1
        if extras.get("inputs", rows) < rows:  # the split's last shard: nothing comes after it
            last_done = True
            break
    # Sidecars made from a finished folder's manifest (no "inputs") with none after them: every shard of the
    # split is there and checked, so the stream is not read again (a Hub dataset would be downloaded again).
    if k and "inputs" not in extras and not (out / sidecar_name(name, k)).exists():
        last_done = True
    state, skip = None, 0
    if k and not last_done:
        if extras.get("stream") is not None:
            state = extras["stream"]
        else:  # sidecars made from a finished folder's manifest hold no position: read past the rows
            skip = k * rows
    return recs, last_done, state, skip


_WAVE_CACHE_BYTES = 1 << 28  # decoded recordings a process keeps between counting a shard's grids and encoding it
_UNREADABLE = object()  # a row found unreadable while counting (recorded then, not decoded again)


@dataclass
class _Held:
    """This process's shard of a round of a numbered split, counted, waiting for the counts of the shards before it:
    its rows, the stream's position after them (for its sidecar), per row its decoded recording (``_UNREADABLE``,
    or None: decode again), and its grid count."""

    k: int
    chunk: list[Any]
    state: Any
    waves: list[Any]
    count: int


@dataclass
class _StreamSplit:
    """One streamed split into shards ``name-00000...`` by process ``rank`` of ``world`` (see ``tokenize_streams``)."""

    out: Path
    name: str
    ds: Any
    rows: int
    plan: str
    codec: Codec
    token_shape: tuple[int, ...]
    batch_size: int
    rank: int = 0
    world: int = 1

    def run(self, resume: bool, progress: bool) -> tuple[dict[int, ShardRecord], int, int, int]:
        """(the records this process knows by shard number: its own and the leading finished ones, the split's
        shard count, shards written, shards of its own kept)."""
        rank, world, rows, ds = self.rank, self.world, self.rows, self.ds
        lead: dict[int, ShardRecord] = {}
        last_done, state, skip = False, None, 0
        if resume:  # the main process finds where to continue, before any process writes a shard of the split
            found = [_resume_point(self.out, self.name, rows, self.plan) if rank == 0 else None]
            if world > 1:
                torch.distributed.broadcast_object_list(found, src=0)
            lead, last_done, state, skip = found[0]
        known = dict(lead)
        written, reused = 0, sum(1 for j in lead if j % world == rank)
        k = len(lead)
        before = sum(r.rows for r in lead.values())  # grids in the shards before k (kept up when known)
        numbered = world > 1 and bool(getattr(ds, "numbered", False))
        if state is not None:
            ds.stream.load_state_dict(state)
        raw = iter(()) if last_done else ds.raw_rows()
        for _ in islice(raw, skip):
            pass
        bar = tqdm(desc=f"tokenize {self.name} (stream)", unit="row", disable=not progress or rank != 0)
        round_ks: list[int] = []  # numbered: the shards read since the counts were last exchanged
        held: _Held | None = None
        while not last_done:
            chunk = list(islice(raw, rows))
            if chunk:
                if k % world == rank:
                    rec = finished_shard(self.out, self.name, k, self.plan) if resume else None
                    if rec is not None:  # finished after a gap: its rows were read past, not decoded
                        reused += 1
                        known[k] = rec
                    elif numbered:  # the position after the rows is taken before the next rows are read
                        held = _Held(k, chunk, _json_state(ds.stream.state_dict()), *self._count(chunk))
                    else:  # the rows' examples do not depend on ``before`` (exact with one process only)
                        known[k] = self._write(k, chunk, before, _json_state(ds.stream.state_dict()))
                        written += 1
                    if world == 1:
                        before += known[k].rows
                # (another process's shard: its rows were read past, not decoded)
                if numbered:
                    round_ks.append(k)
                bar.update(len(chunk))
                k += 1
            end = len(chunk) < rows  # a short or empty chunk: the split ends (every process sees it)
            if numbered and round_ks and (end or k % world == 0):
                counts = self._exchange(round_ks, known, held)
                if held is not None:
                    first = before + sum(counts[j] for j in round_ks if j < held.k)
                    known[held.k] = self._write(held.k, held.chunk, first, held.state, held.waves)
                    written += 1
                    held = None
                before += sum(counts[j] for j in round_ks)
                round_ks = []
            if end:
                break
        bar.close()
        return known, k, written, reused

    def _count(self, chunk: list[Any]) -> tuple[list[Any], int]:
        """A numbered split's shard, first pass: each row decoded (an unreadable one recorded here, once): (per row
        its recording while ``_WAVE_CACHE_BYTES`` allow, ``_UNREADABLE``, or None; the shard's grid count)."""
        waves: list[Any] = []
        count = kept = 0
        for cell, _ in chunk:
            wave = self.ds.wave(cell)
            if wave is None:
                waves.append(_UNREADABLE)
                continue
            count += self.ds.clip_count(int(wave.shape[0]))
            size = wave.numel() * wave.element_size()
            waves.append(wave if kept + size <= _WAVE_CACHE_BYTES else None)
            kept += size if waves[-1] is not None else 0
        return waves, count

    def _exchange(self, round_ks: list[int], known: dict[int, ShardRecord], held: _Held | None) -> dict[int, int]:
        """The grid counts of a round's shards, from every process (each gives those of its own)."""
        mine = {j: known[j].rows for j in round_ks if j in known}
        if held is not None:
            mine[held.k] = held.count
        every: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(every, mine)
        counts = {j: n for d in every for j, n in d.items()}
        if sorted(counts) != round_ks:
            raise RuntimeError(f"tokenize --streaming: the processes disagree on the shards of {self.name} "
                               f"{round_ks} (got counts for {sorted(counts)})")
        return counts

    def _write(self, k: int, chunk: list[Any], first: int, after: Any, waves: list[Any] | None = None) -> ShardRecord:
        """Encode shard ``k`` (its rows ``chunk``, the grids before it ``first``) and write it with its sidecar."""
        tokens, labels = [], []
        for x, y in _examples(self.ds, chunk, self.batch_size, first, waves):
            with torch.no_grad():
                tokens.append(encode_batch(self.codec, x.float()).cpu())
            labels.append(y.long())
        t = torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long)
        y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        rec = write_shard(self.out, self.name, k, k * self.rows, t.reshape(-1, *self.token_shape), y,
                          self.codec.vocab_size, self.plan, sidecar=False)
        side = dataclasses.asdict(rec) | {"inputs": len(chunk), "stream": after}
        atomic_write_text(self.out / sidecar_name(self.name, k), json.dumps(side, indent=1))
        return rec


def _examples(ds: Any, chunk: list[Any], batch_size: int, first: int, waves: list[Any] | None = None) -> Any:
    """Batches ``(x, y)`` of what a shard's rows give (``ds.examples``: an image, or the covering windows of a
    recording, numbered from ``first``, the grids before the shard), in order: the examples of up to
    ``batch_size`` rows at a time, in batches of at most ``batch_size``. ``waves``: the rows' recordings decoded
    already (``_StreamSplit._count``)."""
    held: list[Any] = []
    for i, (cell, label) in enumerate(chunk):
        if waves is None:
            got = ds.examples(cell, label, first)
        elif waves[i] is _UNREADABLE:
            got = []
        else:
            got = ds.clips(waves[i] if waves[i] is not None else ds.wave(cell), label, first)
        first += len(got)
        held += got
        if (i + 1) % batch_size == 0 or len(held) >= batch_size or i + 1 == len(chunk):
            for a in range(0, len(held), batch_size):
                batch = collate_readable(held[a:a + batch_size])
                if batch is not None:
                    yield batch
            held = []


def _json_state(state: Any) -> Any:
    """A stream's state as JSON can hold it, or None when it cannot (then --resume reads past the rows instead)."""
    try:
        json.dumps(state)
    except (TypeError, ValueError):
        return None
    return state
