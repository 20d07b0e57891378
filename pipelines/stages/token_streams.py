"""`vqgen tokenize --streams`: every recording of an audio dataset encoded whole into frames, the frames of a split
concatenated and written as shards of a fixed number of frames (a format-4 token folder, ``data/tokens.py``).

A recording is a file (or a segment of one: a held-out tail) of an ``AudioClipDataset`` after its screening, or
one item of an audio dataset without files (``tones``). It is read and encoded piece by piece, so a long one is
never in memory at once:

- a causal codec (``Tokenizer.latency_ms`` finite): its streaming encoder, fed chunks of ``CHUNK_FRAMES`` frames;
  the frames equal one offline ``encode`` of the whole (zero-padded) recording exactly;
- any other audio codec: consecutive windows of the codec's clip (``window_frames`` frames), each encoded alone
  (the last one zero-padded to a whole window, of which only the recording's frames are kept). A non-causal
  encoder looks across its input, so frames near a join of two windows may differ from what one whole-recording
  encode would give: the header says ``"exact": false``.

Recording i of L_i samples gives ceil(L_i / hop) frames. The lengths are known from the screening, so the split's
frame count and the shard cut are known ahead: shard k holds frames [k R, (k + 1) R), whatever the number of
processes, and a shard is the unit of work of each process of a launch and of ``--resume`` as for grids. A job
encodes only the pieces its frames need: the windows overlapping them, or (causal) each overlapping recording from
its first sample up to the shard's end, so a recording that crosses a shard start is encoded again from its start
by the later shard's job (the price of exact frames without a saved encoder state).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from tokenizers_vq import Codec, RawCodec

from ..data import Splits, report_skips
from ..data.shards import default_shard_rows, finished_shard, shard_plan, write_shard
from ..data.tokens import TokenHeader, load_token_header, write_manifest

log = logging.getLogger("vqgen.tokenize")

CHUNK_FRAMES = 256  # frames of samples fed to a causal codec's streaming encoder at a time


@dataclass
class Recordings:
    """The recordings of one split: ``lengths`` (samples), ``labels`` and ``read(i, a, b)`` -> float32 samples
    [b - a] of recording i."""

    lengths: list[int]
    labels: list[int]
    read: Callable[[int, int, int], torch.Tensor]


def recordings(dataset: Any) -> Recordings:
    """A split's recordings: an ``AudioClipDataset``'s segments (whole files, or a head / a held-out tail of each),
    read by range; else each item of the dataset (a clip) is one recording."""
    if hasattr(dataset, "segments") and hasattr(dataset, "read"):
        segs = list(dataset.segments)

        def read_segment(i: int, a: int, b: int) -> torch.Tensor:
            f, start, _ = segs[i]
            return dataset.read(f, start + a, start + b).float()

        return Recordings([stop - start for _, start, stop in segs], [int(dataset.labels[f]) for f, _, _ in segs],
                          read_segment)
    items = [dataset[j] for j in range(len(dataset))]
    waves = [torch.as_tensor(x).float().reshape(-1) for x, _ in items]
    return Recordings([len(w) for w in waves], [int(y) for _, y in items], lambda i, a, b: waves[i][a:b])


def codec_hop(codec: Codec) -> int:
    """Samples per frame of an audio codec (its clip / the clip's frames)."""
    clip = int(codec.input_shape[0])
    frames = int(codec.token_shape((clip,))[0])
    if frames < 1 or clip % frames:
        raise ValueError(f"the codec turns {clip} samples into {frames} frames: no whole hop, so it cannot make streams")
    return clip // frames


def is_causal(codec: Codec) -> bool:
    return math.isfinite(float(getattr(codec, "latency_ms", math.inf))) and hasattr(codec, "stream_encoder")


def check_streams_codec(codec: Codec) -> None:
    """A clear ``ValueError`` for codecs that cannot make streams: images, and raw codecs."""
    if not codec.modality.timed:
        raise ValueError(f"--streams encodes long recordings into frames: it is for audio codecs, but this codec is "
                         f"for {codec.modality} (tokenize images without --streams)")
    if isinstance(codec, RawCodec):
        raise ValueError("--streams needs a trained audio tokenizer (--tokenizer DIR): raw mu-law samples are one token "
                         "per sample, for which fixed clips (without --streams) already are the stream")


class FrameEncoder:
    """Frames [la, lb) of a recording, encoded as the module docstring says (``window_frames``: offline codecs)."""

    def __init__(self, codec: Codec, window_frames: int | None = None, batch_size: int = 64):
        self.codec, self.hop, self.causal = codec, codec_hop(codec), is_causal(codec)
        self.window_frames = None if self.causal else int(window_frames or codec.input_shape[0] // self.hop)
        self.batch_size = max(1, batch_size)
        self.row_shape: tuple[int, ...] = tuple(codec.token_shape(tuple(codec.input_shape))[1:])  # () or (K,)

    def frames(self, length: int) -> int:
        return -(-length // self.hop)

    def describe(self) -> dict[str, Any]:
        return {"hop": self.hop, "encoder": "stream" if self.causal else "windows", "window_frames": self.window_frames,
                "exact": self.causal}

    @torch.no_grad()
    def encode(self, rec: Recordings, i: int, la: int, lb: int) -> torch.Tensor:
        """int64 [lb - la, *row_shape]: frames [la, lb) of recording i."""
        if lb <= la:
            return torch.zeros((0, *self.row_shape), dtype=torch.long)
        return self._stream(rec, i, la, lb) if self.causal else self._windows(rec, i, la, lb)

    def _stream(self, rec: Recordings, i: int, la: int, lb: int) -> torch.Tensor:
        length, hop = rec.lengths[i], self.hop
        enc = self.codec.stream_encoder()  # type: ignore[attr-defined]
        kept, got, pos, step = [], 0, 0, CHUNK_FRAMES * hop
        while got < lb and pos < length:
            b = min(length, pos + step)
            t = enc(rec.read(i, pos, b))
            pos = b
            if got + len(t) > la:
                kept.append(t[max(0, la - got):])
            got += len(t)
        if got < lb:
            t = enc.flush()
            kept.append(t[max(0, la - got):])
        out = torch.cat(kept)[: lb - la].long()
        return out.reshape(lb - la, *self.row_shape)

    def _windows(self, rec: Recordings, i: int, la: int, lb: int) -> torch.Tensor:
        length, hop, w = rec.lengths[i], self.hop, self.window_frames
        assert w is not None
        first, last = la // w, (lb - 1) // w
        out = []
        for a in range(first, last + 1, self.batch_size):
            ks = range(a, min(last + 1, a + self.batch_size))
            x = torch.stack([F.pad(piece := rec.read(i, k * w * hop, min(length, (k + 1) * w * hop)),
                                   (0, w * hop - len(piece))) for k in ks])
            out.append(self.codec.encode(x.clamp(-1, 1).to(self.codec.device)).cpu().long())
        frames = torch.cat(out).reshape(-1, *self.row_shape)  # window `first`'s frame 0 onwards
        return frames[la - first * w: lb - first * w]


def tokenize_stream_splits(splits: Splits, out: str | Path, dataset_name: str, codec: Codec,
                           codec_path: str | Path | None = None, batch_size: int = 64, progress: bool = True, *,
                           shard_rows: int | None = None, resume: bool = False, source: dict | None = None
                           ) -> TokenHeader:
    """Write both splits of an audio dataset as token streams (format 4): frames of every recording (see the module
    docstring), concatenated per split into shards of ``shard_rows`` frames (default ``default_shard_rows``). Under a
    launch process r of W writes the shards numbered r, r + W, ...; ``resume`` keeps finished shards of the same plan
    (dataset, codec, shard size, recordings' lengths) whose checksums match."""
    from .tokenize import _barrier, _finished, _Job, _start, _world

    check_streams_codec(codec)
    if splits.modality != codec.modality:
        raise ValueError(f"the dataset is {splits.modality} but the codec is for {codec.modality}")
    if shard_rows is not None and shard_rows < 1:
        raise ValueError(f"--shard-rows must be at least 1, got {shard_rows}")
    codec.eval()
    out = Path(out)
    rank, world, _ = _world()
    enc = FrameEncoder(codec, batch_size=batch_size)
    record = codec.record(codec_path)
    recs = {"train": recordings(splits.train), "test": recordings(splits.test)}
    rows, plans, jobs, offsets, extra = {}, {}, [], {}, {}
    for name, rc in recs.items():
        off = np.concatenate([[0], np.cumsum([enc.frames(n) for n in rc.lengths])]).astype(np.int64)
        offsets[name], n = off, int(off[-1])
        rows[name] = shard_rows or default_shard_rows(n, math.prod(enc.row_shape))
        digest = hashlib.sha256(off.tobytes() + np.asarray(rc.labels, np.int64).tobytes()).hexdigest()[:16]
        plans[name] = shard_plan(split=name, n=n, rows=rows[name], dataset=dataset_name, source=source, streams=True,
                                 frames=enc.describe(), recordings=digest,
                                 codec={k: v for k, v in record.items() if k != "path"})
        jobs += [_Job(name, k, a, min(n, a + rows[name])) for k, a in enumerate(range(0, n, rows[name]))]
        extra[name] = {"offsets": off.tolist(), "labels": [int(y) for y in rc.labels]}
    mine = jobs[rank::world]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _start(out, list(recs), resume)
    _barrier(world)
    written = reused = 0
    bar = tqdm(total=sum(j.stop - j.start for j in mine), desc="tokenize --streams", unit="frame",
               disable=not progress or rank != 0)
    t0 = time.perf_counter()
    for j in mine:
        if resume and finished_shard(out, j.split, j.k, plans[j.split]) is not None:
            reused += 1
        else:
            rc, off = recs[j.split], offsets[j.split]
            first = int(np.searchsorted(off, j.start, side="right") - 1)
            parts, labels = [], []
            i = first
            while i < len(rc.lengths) and off[i] < j.stop:
                a, b = max(j.start, int(off[i])), min(j.stop, int(off[i + 1]))
                if b > a:
                    parts.append(enc.encode(rc, i, a - int(off[i]), b - int(off[i])))
                    labels.append(torch.full((b - a,), rc.labels[i], dtype=torch.long))
                i += 1
            tokens = torch.cat(parts) if parts else torch.zeros((0, *enc.row_shape), dtype=torch.long)
            y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
            write_shard(out, j.split, j.k, j.start, tokens, y, codec.vocab_size, plans[j.split])
            written += 1
        bar.update(j.stop - j.start)
    bar.close()
    report_skips(splits)
    log.info("tokenize --streams: %d shards encoded, %d kept from an earlier run, in %.2f s", written, reused,
             time.perf_counter() - t0)
    _barrier(world)
    if rank == 0:
        header = TokenHeader(vocab_size=codec.vocab_size, token_shape=enc.row_shape, modality=str(codec.modality),
                             dataset=dataset_name, codec=record, num_classes=splits.num_classes,
                             class_names=list(splits.class_names), streams=enc.describe())
        done = _finished(out, jobs, plans)
        for name, rl in done.items():
            if sum(r.rows for r in rl) != int(offsets[name][-1]):
                raise RuntimeError(f"{name}: the shards hold {sum(r.rows for r in rl)} frames, the recordings "
                                   f"{int(offsets[name][-1])}")
        write_manifest(out, header, done, rows, plans, extra)
    _barrier(world)
    return load_token_header(out)
