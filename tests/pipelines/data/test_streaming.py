"""``--streaming``: Hugging Face image datasets read as ``datasets`` streams (local save_to_disk and parquet folders,
offline): the same images as the map-style path, bad rows counted and named, the held-out head as test split,
training that resumes at the next unseen row, and ``vqgen tokenize --streaming`` with resumable shards."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data import DataSpec, ImageReadError, load_data, report_skips
from pipelines.data.streaming import StreamedImages
from pipelines.training.config import TrainConfig
from pipelines.training.loop import train
from tests.pipelines.data.stream_recorder import Recorder, dying_at_shard

BROKEN = b"\x89PNG\r\n\x1a\n this is not an image"
TINY_TOK = ["--quantizer", "fsq", "--hidden-channels", "8", "--latent-dim", "8", "--num-res-blocks", "1",
            "--fsq-levels", "5,4"]


def _png(i: int) -> bytes:
    """An 8x8 grey PNG that differs from every other row's (noise seeded by i)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(root, n: int = 24, broken: tuple[int, ...] = (), test: int = 0, fmt: str = "disk"):
    """A folder of n train rows (row i: noise seeded by i, label i, path rowI.png; rows in ``broken`` corrupt) and,
    with ``test``, a test split of that many more rows: ``save_to_disk`` output (fmt "disk") or parquet files."""
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage

    def split(rows):
        cells = [{"bytes": BROKEN if i in broken else _png(i), "path": f"row{i}.png"} for i in rows]
        return Dataset.from_dict({"image": cells, "label": list(rows)},
                                 features=Features({"image": HFImage(), "label": Value("int64")}))

    parts = {"train": split(range(n))} | ({"test": split(range(n, n + test))} if test else {})
    folder = root / f"data-{fmt}"
    if fmt == "disk":
        DatasetDict(parts).save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        for name, ds in parts.items():
            half = (len(ds) + 1) // 2  # two files: two shards of the stream
            ds.select(range(half)).to_parquet(str(folder / "data" / f"{name}-00000-of-00002.parquet"))
            ds.select(range(half, len(ds))).to_parquet(str(folder / "data" / f"{name}-00001-of-00002.parquet"))
    return folder


def _spec(folder, **kw) -> DataSpec:
    return DataSpec(str(folder), **{"modality": "image", "image_size": 8, "channels": 1} | kw)


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_the_stream_yields_the_map_style_images_in_order(tmp_path, fmt):
    folder = _dataset(tmp_path, n=12, broken=(5,), test=3, fmt=fmt)
    flat = load_data(_spec(folder))
    streamed = load_data(_spec(folder, streaming=True, shuffle_buffer=0))
    assert isinstance(streamed.train, StreamedImages)
    want = [flat.train.read_item(i) for i in range(len(flat.train))]
    want = [w for w in want if w is not None]
    got = list(streamed.train)
    assert len(got) == len(want) == 11
    for (x, y), (wx, wy) in zip(got, want):
        assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and y.dtype == torch.int64
        assert torch.equal(x, wx) and int(y) == int(wy)
    assert len(streamed.test) == 3  # the dataset's own test split, in memory
    for i in range(3):
        assert torch.equal(streamed.test[i][0], flat.test[i][0])
    report_skips(flat)


def test_a_corrupt_row_is_counted_skipped_and_named_or_raised_under_strict(tmp_path, caplog):
    folder = _dataset(tmp_path, n=12, broken=(6,), test=2)
    s = load_data(_spec(folder, streaming=True, shuffle_buffer=0))
    with caplog.at_level(logging.WARNING, logger="vqgen.data"):
        labels = [int(y) for _, y in s.train]
        assert caplog.text == ""  # said once, when the run reports
        assert report_skips(s) == 1
    assert labels == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert "skipped 1 unreadable image file(s)" in caplog.text and "row6.png: cannot decode image" in caplog.text
    strict = load_data(_spec(folder, streaming=True, shuffle_buffer=0, strict=True))
    with pytest.raises(ImageReadError, match=r"row6\.png: cannot decode image.*drop --strict"):
        list(strict.train)


def test_without_a_test_split_the_head_of_the_stream_is_held_out(tmp_path):
    folder = _dataset(tmp_path, n=24)
    s = load_data(_spec(folder, streaming=True, shuffle_buffer=4))
    assert [int(s.test[i][1]) for i in range(len(s.test))] == [0, 1, 2]  # ceil(0.1 x 24) rows
    seen = sorted(int(y) for _, y in s.train)
    assert seen == list(range(3, 24))  # each once, the held-out rows never


def test_streaming_refuses_what_it_cannot_read(tmp_path):
    folder = _dataset(tmp_path, n=8)
    with pytest.raises(ValueError, match="is a built-in: drop --streaming"):
        load_data(DataSpec("shapes", streaming=True))
    with pytest.raises(ValueError, match="holds images.*read here as audio: drop --modality audio"):
        load_data(_spec(folder, streaming=True, modality="audio"))
    with pytest.raises(ValueError, match="--augment does not work with --streaming"):
        load_data(_spec(folder, streaming=True, augment="flip"))
    pics = tmp_path / "pics" / "a"
    pics.mkdir(parents=True)
    Image.new("L", (8, 8)).save(pics / "x.png")
    with pytest.raises(ValueError, match="folder of image files"):
        load_data(_spec(tmp_path / "pics", streaming=True))
    from pipelines.cli import main

    assert main(["train-tokenizer", "--dataset", str(folder), "--streaming", "--num-workers", "2", "--out",
                 str(tmp_path / "t"), "--steps", "1", "--quiet", *TINY_TOK]) == 2
    assert main(["train-tokenizer", "--dataset", str(folder), "--shuffle-buffer", "8", "--out",
                 str(tmp_path / "t"), "--steps", "1", "--quiet", *TINY_TOK]) == 2


def _run(folder, out, steps, buffer, stop=None, resume=False):
    splits = load_data(_spec(folder, streaming=True, shuffle_buffer=buffer))
    task = Recorder()
    cfg = TrainConfig(out=str(out), steps=steps, batch_size=4, save_every=1000, eval_every=1000, log_every=1000,
                      stop_after_step=stop, resume=resume, progress=False, device="cpu", mixed_precision="no")
    result = train(task, splits.train, None, cfg)
    return task.seen, result


def test_a_resumed_stream_continues_at_the_next_unseen_row(tmp_path):
    """Without a shuffle buffer: 3 steps, a checkpoint, then --resume to 8 sees exactly what an uninterrupted run
    sees after its first 3 steps, across the end of the first epoch (21 rows: 5 batches of 4 an epoch)."""
    folder = _dataset(tmp_path, n=24)
    whole, _ = _run(folder, tmp_path / "whole", 8, buffer=0)
    assert whole[:20] == list(range(3, 23))  # epoch 0 in order, the partial batch (row 23) dropped
    first, r = _run(folder, tmp_path / "cut", 8, buffer=0, stop=3)
    assert r.status == "preempted" and first == whole[:12]
    rest, r = _run(folder, tmp_path / "cut", 8, buffer=0, resume=True)
    assert r.status == "finished" and r.step == 8
    assert rest == whole[12:]


def test_resuming_a_streamed_run_without_streaming_is_a_clear_error(tmp_path):
    """A checkpoint of a streamed run holds the stream's state; resumed from map-style data (--streaming dropped),
    the error says so instead of blaming the model."""
    folder = _dataset(tmp_path, n=24)
    _run(folder, tmp_path / "cut", 8, buffer=0, stop=3)
    splits = load_data(_spec(folder))
    cfg = TrainConfig(out=str(tmp_path / "cut"), steps=8, batch_size=4, save_every=1000, eval_every=1000,
                      log_every=1000, resume=True, progress=False, device="cpu", mixed_precision="no")
    with pytest.raises(ValueError, match="--streaming added or removed"):
        train(Recorder(), splits.train, None, cfg)


def test_a_resumed_shuffled_stream_repeats_no_row_within_the_epoch(tmp_path):
    folder = _dataset(tmp_path, n=40)  # 4 held out, 36 rows: 9 batches an epoch
    first, _ = _run(folder, tmp_path / "cut", 7, buffer=8, stop=3)
    rest, r = _run(folder, tmp_path / "cut", 7, buffer=8, resume=True)
    assert r.step == 7 and len(first) == 12 and len(rest) == 16
    both = first + rest
    assert len(set(both)) == len(both) and min(both) >= 4  # no row twice, no held-out row
    assert first != sorted(first)  # the buffer shuffles


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A tokenizer trained with --streaming from the CLI on a local dataset folder with a test split."""
    from pipelines.cli import main

    d = tmp_path_factory.mktemp("stream")
    folder = _dataset(d, n=30, broken=(11,), test=6)
    assert main(["train-tokenizer", "--dataset", str(folder), "--streaming", "--shuffle-buffer", "8", "--image-size",
                 "8", "--channels", "1", "--out", str(d / "tok"), "--steps", "6", "--batch-size", "4", "--quiet",
                 *TINY_TOK]) == 0
    return d, folder


def test_train_tokenizer_streaming_saves_a_tokenizer(cli_run):
    d, _ = cli_run
    for f in ("config.json", "model.safetensors", "metrics.json"):
        assert (d / "tok" / f).is_file()
    assert json.loads((d / "tok" / "metrics.json").read_text())["step"] == 6


def test_tokenize_streaming_gives_the_map_style_tokens_and_trains_a_prior(cli_run):
    from pipelines.cli import main
    from pipelines.data.tokens import load_tokens

    d, folder = cli_run
    for name, extra in (("flat", []), ("streamed", ["--streaming"])):
        assert main(["tokenize", "--tokenizer", str(d / "tok"), "--dataset", str(folder), "--shard-rows", "7",
                     "--out", str(d / name), "--quiet", *extra]) == 0
    for split in ("train", "test"):
        (ta, ya), (tb, yb) = load_tokens(d / "flat", split), load_tokens(d / "streamed", split)
        assert torch.equal(ta.materialize(), tb.materialize()) and torch.equal(ya.materialize(), yb.materialize())
    head = json.loads((d / "streamed" / "tokens.json").read_text())
    assert head["counts"] == {"train": 29, "test": 6}  # row 11 unreadable
    assert [f["rows"] for f in head["shards"]["train"]["files"]] == [7, 6, 7, 7, 2]
    assert main(["train-prior", "--tokens", str(d / "streamed"), "--arch", "transformer", "--out", str(d / "prior"),
                 "--steps", "2", "--batch-size", "4", "--n-layer", "1", "--n-head", "2", "--d-model", "16",
                 "--quiet"]) == 0
    assert (d / "prior" / "model.safetensors").is_file()


def test_tokenize_streaming_resume_keeps_finished_shards(tmp_path, monkeypatch, caplog):
    """Interrupted after three shards (their sidecars hold the stream position), and a finished folder with its
    last shards removed: --resume encodes only the missing shards and gives the uninterrupted run's tokens."""
    from pipelines.cli import main

    folder = _dataset(tmp_path, n=26, broken=(9,), fmt="parquet")
    args = ["tokenize", "--raw", "--dataset", str(folder), "--image-size", "8", "--channels", "1", "--streaming",
            "--shard-rows", "4", "--quiet", "--out"]
    assert main(args + [str(tmp_path / "whole")]) == 0
    want = (tmp_path / "whole" / "tokens.json").read_text()

    with dying_at_shard("train", 3):
        assert main(args + [str(tmp_path / "cut")]) == 2
    side = json.loads((tmp_path / "cut" / "train-00002.json").read_text())
    assert side["inputs"] == 4 and side["stream"] is not None
    kept = {f: (tmp_path / "cut" / f).stat().st_mtime_ns for f in ("train-00000.safetensors", "train-00002.safetensors")}
    with caplog.at_level(logging.INFO, logger="vqgen.tokenize"):
        assert main(args + [str(tmp_path / "cut"), "--resume"]) == 0
    assert (tmp_path / "cut" / "tokens.json").read_text() == want
    assert "4 shards encoded, 3 kept" in caplog.text
    assert all((tmp_path / "cut" / f).stat().st_mtime_ns == t for f, t in kept.items())

    for f in ("train-00004.safetensors", "train-00005.safetensors"):  # a finished folder, its last shards gone
        (tmp_path / "whole" / f).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vqgen.tokenize"):
        assert main(args + [str(tmp_path / "whole"), "--resume"]) == 0
    assert (tmp_path / "whole" / "tokens.json").read_text() == want
    assert "2 shards encoded, 5 kept" in caplog.text

    # a finished folder resumed: its shards checked, and no row of the stream read again
    from pipelines.data import streaming

    pulled = []
    source = streaming.StreamedImages._source
    monkeypatch.setattr(streaming.StreamedImages, "_source", lambda self: (pulled.append(1) or r for r in source(self)))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vqgen.tokenize"):
        assert main(args + [str(tmp_path / "whole"), "--resume"]) == 0
    assert (tmp_path / "whole" / "tokens.json").read_text() == want
    assert "0 shards encoded, 7 kept" in caplog.text and pulled == []


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_processes_share_the_stream_and_each_resumes_at_its_next_unseen_row(tmp_path):
    """Each process reads its own share (split_dataset_by_node), the checkpoint holds both positions, and each
    resumed process continues where its uninterrupted run would; no row is trained on twice within the epoch."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    folder = _dataset(tmp_path, n=40)  # 4 held out; 36 rows, 18 a process: 9 batches of 2 an epoch
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker = Path(__file__).with_name("stream_ddp_worker.py")
    procs = []
    for r in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(worker), str(folder), str(tmp_path / "out")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=280)[0].decode(errors="replace") for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        assert seen["cut"] == seen["whole"][:4] and seen["resumed"] == seen["whole"][4:]
        assert len(seen["shuffled_cut"]) == 4 and len(seen["shuffled_resumed"]) == 6
    assert not set(ranks[0]["whole"][:12]) & set(ranks[1]["whole"][:12])  # disjoint shares
    trained = [v for seen in ranks for v in seen["shuffled_cut"] + seen["shuffled_resumed"]]
    assert len(set(trained)) == len(trained) and min(trained) >= 4
