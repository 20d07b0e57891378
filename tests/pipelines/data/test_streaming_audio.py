"""``--streaming`` of Hugging Face audio datasets (local save_to_disk and parquet folders, offline): each row a
recording decoded once and cut into the clips the map-style ``AudioClipDataset`` gives, bad rows counted and named,
the held-out head as test split, training that resumes at the next unseen clip, and ``vqgen tokenize --streaming``
giving the map-style tokens."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.data import AudioReadError, DataSpec, load_data, report_skips
from pipelines.data.audio_io import AudioClipDataset
from pipelines.data.streaming import StreamedAudio
from pipelines.training.config import TrainConfig
from pipelines.training.loop import train
from tests.pipelines.data.stream_recorder import Recorder, dying_at_shard

SR = 8000
CLIP = 1024
BROKEN = b"RIFF\x24\x00\x00\x00WAVEfmt this is not audio"
TINY_TOK = ["--modality", "audio", "--audio-head", "logistic", "--quantizer", "fsq", "--hidden-channels", "4",
            "--latent-dim", "4", "--num-res-blocks", "1", "--fsq-levels", "3,3"]


def _length(i: int) -> int:
    """Row i's samples: rows 0, 1, 4, 7, ... shorter than a clip, the others up to 4.6 clips."""
    return [300, 700, 1500, 4700, 900, 2600, 3300, 1024, 2100, 600, 4000, 1800][i % 12]


def _wav(i: int) -> bytes:
    """Row i: seeded noise (every window of it differs from every other) as 16-bit WAV bytes."""
    buf = io.BytesIO()
    x = np.random.default_rng(i).uniform(-0.5, 0.5, _length(i)).astype(np.float32)
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _dataset(root, n: int = 12, broken: tuple[int, ...] = (), test: int = 0, fmt: str = "disk",
             labels: str = "int"):
    """n train rows (row i: label i, path rowI.wav; rows in ``broken`` corrupt) and, with ``test``, a test split of
    that many more: ``save_to_disk`` output (fmt "disk") or two parquet files a split. ``labels``: "int",
    "class" (a ClassLabel) or "str"."""
    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value

    total = n + test
    feature = {"int": Value("int64"), "str": Value("string"),
               "class": ClassLabel(names=[f"c{i}" for i in range(total)])}[labels]

    def split(rows):
        cells = [{"bytes": BROKEN if i in broken else _wav(i), "path": f"row{i}.wav"} for i in rows]
        ys = [f"c{i}" for i in rows] if labels == "str" else list(rows)
        ds = Dataset.from_dict({"audio": cells, "label": ys}, features=Features(
            {"audio": {"bytes": Value("binary"), "path": Value("string")}, "label": feature}))
        return ds.cast_column("audio", Audio(decode=False))  # (encoding through Audio needs torchcodec)

    parts = {"train": split(range(n))} | ({"test": split(range(n, total))} if test else {})
    folder = root / f"audio-{fmt}"
    if fmt == "disk":
        DatasetDict(parts).save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        for name, ds in parts.items():
            half = (len(ds) + 1) // 2
            ds.select(range(half)).to_parquet(str(folder / "data" / f"{name}-00000-of-00002.parquet"))
            ds.select(range(half, len(ds))).to_parquet(str(folder / "data" / f"{name}-00001-of-00002.parquet"))
    return folder


def _spec(folder, **kw) -> DataSpec:
    return DataSpec(str(folder), **{"modality": "audio", "sample_rate": SR, "clip_samples": CLIP} | kw)


def _same(got, want):
    assert len(got) == len(want)
    for (x, y), (wx, wy) in zip(got, want):
        assert x.dtype == torch.float32 and x.shape == (CLIP,) and y.dtype == torch.int64
        assert torch.equal(x, wx) and int(y) == int(wy)


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_the_stream_yields_the_map_style_clips_in_order(tmp_path, fmt):
    folder = _dataset(tmp_path, n=12, broken=(5,), test=3, fmt=fmt, labels="class")
    flat = load_data(_spec(folder))
    streamed = load_data(_spec(folder, streaming=True, shuffle_buffer=0))
    assert isinstance(streamed.train, StreamedAudio) and isinstance(streamed.test, AudioClipDataset)
    assert (streamed.num_classes, streamed.class_names[:2], streamed.sample_rate) == (15, ["c0", "c1"], SR)
    # training windows and padding offsets drawn per (seed, epoch, item), as map-style (in epochs after the first
    # datasets reorders the stream's shards)
    _same(list(streamed.train), [flat.train[j] for j in range(len(flat.train))])
    assert len(flat.train) > 11  # long recordings give several clips
    _same([streamed.test[j] for j in range(len(streamed.test))], [flat.test[j] for j in range(len(flat.test))])
    report_skips(flat)
    report_skips(streamed)


def test_a_corrupt_row_is_counted_skipped_and_named_or_raised_under_strict(tmp_path, caplog):
    folder = _dataset(tmp_path, n=12, broken=(6,), test=2)
    s = load_data(_spec(folder, streaming=True, shuffle_buffer=0))
    with caplog.at_level(logging.WARNING, logger="vqgen.data"):
        rows = sorted({int(y) for _, y in s.train})
        assert caplog.text == ""  # said once, when the run reports
        assert report_skips(s) == 1
    assert rows == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert "skipped 1 unreadable audio file(s)" in caplog.text and "row6.wav" in caplog.text
    strict = load_data(_spec(folder, streaming=True, shuffle_buffer=0, strict=True))
    with pytest.raises(AudioReadError, match=r"row6\.wav.*drop --strict"):
        list(strict.train)


def test_without_a_test_split_the_head_of_the_stream_is_held_out(tmp_path):
    folder = _dataset(tmp_path, n=24)
    s = load_data(_spec(folder, streaming=True, shuffle_buffer=5))
    assert sorted({int(s.test[j][1]) for j in range(len(s.test))}) == [0, 1, 2]  # ceil(0.1 x 24) rows
    assert s.test.num_files == 3 and s.num_classes == 3  # integer labels: the largest test label + 1
    seen = [int(y) for _, y in s.train]
    assert sorted(set(seen)) == list(range(3, 24))  # the held-out rows never
    assert seen != sorted(seen)  # the buffer shuffles clips


def test_string_labels_and_image_datasets_are_clear_errors(tmp_path):
    folder = _dataset(tmp_path, n=6, labels="str")
    with pytest.raises(ValueError, match=r"label column 'label' holds strings.*class_encode_column"):
        load_data(_spec(folder, streaming=True))
    assert load_data(_spec(folder)).class_names[:2] == ["c0", "c1"]  # map-style numbers them itself
    assert load_data(_spec(folder, streaming=True, label_column=None)).num_classes == 0
    with pytest.raises(ValueError, match="no column 'sound'.*--audio-column"):
        load_data(_spec(folder, streaming=True, audio_column="sound"))
    with pytest.raises(ValueError, match="holds audio.*pass --modality audio"):
        load_data(DataSpec(str(folder), modality="image", streaming=True))
    wavs = tmp_path / "wavs" / "a"
    wavs.mkdir(parents=True)
    (wavs / "x.wav").write_bytes(_wav(0))
    with pytest.raises(ValueError, match="folder of audio files"):
        load_data(_spec(tmp_path / "wavs", streaming=True))


def _clips(x, y):
    """Each clip of a batch: (row, the clip's bytes)."""
    return [(int(v), c.numpy().tobytes()) for v, c in zip(y, x)]


def _run(folder, out, steps, buffer, stop=None, resume=False):
    splits = load_data(_spec(folder, streaming=True, shuffle_buffer=buffer))
    task = Recorder(_clips)
    cfg = TrainConfig(out=str(out), steps=steps, batch_size=4, save_every=1000, eval_every=1000, log_every=1000,
                      stop_after_step=stop, resume=resume, progress=False, device="cpu", mixed_precision="no")
    result = train(task, splits.train, None, cfg)
    return task.seen, result


def test_a_resumed_stream_continues_at_the_next_unseen_clip(tmp_path):
    """Without a buffer: cut after 2 steps in the middle of a recording's clips, --resume gives exactly the clips an
    uninterrupted run gives after its first 2 steps (the rest of that recording first), across the epoch's end."""
    folder = _dataset(tmp_path, n=24)  # 3 held out
    whole, _ = _run(folder, tmp_path / "whole", 14, buffer=0)
    assert whole[7][0] == whole[8][0] == 5  # step 2 ends inside a recording (row 5: 3 clips)
    assert len({c for _, c in whole[:40]}) == 40
    first, r = _run(folder, tmp_path / "cut", 14, buffer=0, stop=2)
    assert r.status == "preempted" and first == whole[:8]
    rest, r = _run(folder, tmp_path / "cut", 14, buffer=0, resume=True)
    assert r.status == "finished" and r.step == 14
    assert rest == whole[8:]


def test_a_resumed_shuffled_stream_repeats_no_clip_within_the_epoch(tmp_path):
    folder = _dataset(tmp_path, n=24)  # 21 training rows, 49 clips: 12 batches an epoch
    first, _ = _run(folder, tmp_path / "cut", 9, buffer=6, stop=3)
    rest, r = _run(folder, tmp_path / "cut", 9, buffer=6, resume=True)
    assert r.step == 9 and len(first) == 12 and len(rest) == 24
    both = [c for _, c in first + rest]
    assert len(set(both)) == len(both)  # no clip twice
    assert min(y for y, _ in first + rest) >= 3  # no held-out row


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """An audio tokenizer trained with --streaming from the CLI on a save_to_disk folder with a test split."""
    from pipelines.cli import main

    d = tmp_path_factory.mktemp("astream")
    folder = _dataset(d, n=12, broken=(4,), test=3, labels="class")
    assert main(["train-tokenizer", "--dataset", str(folder), "--streaming", "--shuffle-buffer", "8", "--sample-rate",
                 str(SR), "--clip-seconds", str(CLIP / SR), "--out", str(d / "tok"), "--steps", "3", "--batch-size",
                 "4", "--quiet", *TINY_TOK]) == 0
    return d, folder


def test_train_tokenizer_streaming_on_audio_saves_a_tokenizer(cli_run):
    d, _ = cli_run
    for f in ("config.json", "model.safetensors", "metrics.json"):
        assert (d / "tok" / f).is_file()
    m = json.loads((d / "tok" / "metrics.json").read_text())
    assert m["step"] == 3 and m["scored_files"] == 3


def test_tokenize_streaming_on_audio_gives_the_map_style_tokens(cli_run):
    from pipelines.cli import main
    from pipelines.data.tokens import load_tokens

    d, folder = cli_run
    for name, extra in (("flat", []), ("streamed", ["--streaming"])):
        assert main(["tokenize", "--tokenizer", str(d / "tok"), "--dataset", str(folder), "--shard-rows", "5",
                     "--out", str(d / name), "--quiet", *extra]) == 0
    for split in ("train", "test"):
        (ta, ya), (tb, yb) = load_tokens(d / "flat", split), load_tokens(d / "streamed", split)
        assert torch.equal(ta.materialize(), tb.materialize()) and torch.equal(ya.materialize(), yb.materialize())
    head = json.loads((d / "streamed" / "tokens.json").read_text())
    flat = json.loads((d / "flat" / "tokens.json").read_text())
    assert head["counts"] == flat["counts"] and head["counts"]["train"] > 11  # covering windows; row 4 unreadable
    assert head["num_classes"] == 15 and head["modality"] == "audio"


def test_tokenize_streaming_raw_audio_resumes_after_the_finished_shards(tmp_path):
    """Raw mu-law tokens of a parquet stream without a test split: interrupted after two shards, --resume gives
    the uninterrupted run's folder (the covering windows of the held-out head centred, the train split's short
    recordings placed at the offsets drawn for their grid numbers). The modality comes from the stream's Audio
    column (no codec says it)."""
    from pipelines.cli import main

    folder = _dataset(tmp_path, n=20, broken=(9,), fmt="parquet")
    args = ["tokenize", "--raw", "--dataset", str(folder), "--sample-rate", str(SR),
            "--clip-seconds", str(CLIP / SR), "--streaming", "--shard-rows", "4", "--quiet", "--out"]
    assert main(args + [str(tmp_path / "whole")]) == 0
    want = (tmp_path / "whole" / "tokens.json").read_text()
    with dying_at_shard("train", 2):
        assert main(args + [str(tmp_path / "cut")]) == 2
    assert main(args + [str(tmp_path / "cut"), "--resume"]) == 0
    assert (tmp_path / "cut" / "tokens.json").read_text() == want
