"""``vqgen tokenize --streaming`` under a launch (2 gloo processes on CPU, started the way torchrun starts them):
the folder (shards, sidecars with their stream positions, manifest) is byte for byte the one a single process
writes, for images and for audio (whose training split numbers its grids across shards), and ``--resume`` by two
processes keeps the shards an interrupted launch finished (after a gap too) and ends with the same folder.
stream_tokenize_worker.py runs the steps; each fixture is one launch (most of its time is two processes importing
torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.launch_workers import launch_workers
from tests.pipelines.data.test_streaming import _dataset as image_dataset
from tests.pipelines.data.test_streaming_audio import CLIP, SR
from tests.pipelines.data.test_streaming_audio import _dataset as audio_dataset

WORKER = Path(__file__).with_name("stream_tokenize_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


def launch(nproc: int, out: Path, steps: list[dict], timeout: float = 200) -> list[list[dict]]:
    """Run the worker's ``steps`` in ``nproc`` processes the way torchrun does (``tests/launch_workers.py``).
    Returns each process's step results."""
    launch_workers([str(WORKER), str(out), json.dumps(steps)], nproc, timeout, prefix="stok-logs-")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _same_folder(got: Path, want: Path) -> None:
    """Byte for byte (manifest, shards, sidecars with their stream positions), and the loaded tokens."""
    from pipelines.data.tokens import load_tokens

    a, b = _files(got), _files(want)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []
    for split in ("train", "test"):
        (ta, ya), (tb, yb) = load_tokens(got, split), load_tokens(want, split)
        assert torch.equal(ta.materialize(), tb.materialize()) and torch.equal(ya.materialize(), yb.materialize())


def _tally(step: list[dict]) -> tuple[int, int]:
    """(shards encoded, shards kept) over every process's log line of a run."""
    import re

    encoded = kept = 0
    for rank in step:
        for line in rank["log"]:
            if m := re.search(r"tokenize --streaming \(process \d of 2\): (\d+) shards encoded, (\d+) kept", line):
                encoded, kept = encoded + int(m[1]), kept + int(m[2])
    return encoded, kept


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Raw 8x8 images, 23 training rows (row 9 unreadable; 3 held out as the test split) in shards of 5 rows: 5
    training shards. One process writes "one"; the launch writes "two", then "cut", where process 1 stops at
    training shard 3 and process 0 at test shard 0 (so shards 0, 1, 2 and 4 are finished), then resumes "cut"."""
    from pipelines.cli import main

    d = tmp_path_factory.mktemp("stok_images")
    folder = image_dataset(d, n=26, broken=(9,), fmt="parquet")
    args = ["--raw", "--dataset", str(folder), "--image-size", "8", "--channels", "1", "--streaming",
            "--shard-rows", "5", "--quiet", "--out"]
    assert main(["tokenize", *args, str(d / "one")]) == 0
    steps = [{"run": [*args, str(d / "two")]},
             {"run": [*args, str(d / "cut")], "die": {"0": ["test", 0], "1": ["train", 3]}},
             {"snapshot": str(d / "cut")},
             {"run": [*args, str(d / "cut"), "--resume"]}]
    return d, launch(2, d, steps)


def test_two_processes_write_the_folder_one_process_writes(images):
    d, ranks = images
    assert all(r[0]["rc"] == 0 for r in ranks)
    head = json.loads((d / "one" / "tokens.json").read_text())
    assert [f["rows"] for f in head["shards"]["train"]["files"]] == [5, 4, 5, 5, 3]  # row 9 unreadable
    _same_folder(d / "two", d / "one")
    assert _tally([r[0] for r in ranks]) == (6, 0)  # process 0: train 0, 2, 4 and test 0; process 1: train 1, 3
    assert any("6 shards by 2 processes" in line for line in ranks[0][0]["log"])


def test_two_processes_resume_an_interrupted_launch(images):
    d, ranks = images
    assert [r[1]["rc"] for r in ranks] == [2, 2]  # both stopped
    before = ranks[0][2]["mtimes"]
    finished = ["train-00000.safetensors", "train-00001.safetensors", "train-00002.safetensors",
                "train-00004.safetensors"]
    assert sorted(n for n in before if n.endswith(".safetensors")) == finished
    side = ranks[0][2]["sidecars"]["train-00002.json"]  # written by process 0; process 1 resumes after it
    assert side["inputs"] == 5 and side["stream"] is not None
    assert all(r[3]["rc"] == 0 for r in ranks)
    _same_folder(d / "cut", d / "one")
    assert _tally([r[3] for r in ranks]) == (2, 4)  # train 3 and test 0 encoded; 4 kept after the gap at 3
    assert all((d / "cut" / n).stat().st_mtime_ns == before[n] for n in finished)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Raw mu-law audio: 18 training recordings (row 9 unreadable, many shorter than a clip: placed at offsets
    drawn per grid number) in shards of 4 recordings, 2 held out. One process writes "one"; the launch writes
    "two" (recording every file's hash), removes the files of shards 1 and 3, and resumes "two" (from the records
    of the manifest, which hold no stream position: the rows of shard 0 are read past)."""
    from pipelines.cli import main

    d = tmp_path_factory.mktemp("stok_audio")
    folder = audio_dataset(d, n=20, broken=(9,), fmt="parquet")
    args = ["--raw", "--dataset", str(folder), "--sample-rate", str(SR), "--clip-seconds", str(CLIP / SR),
            "--streaming", "--shard-rows", "4", "--quiet", "--out"]
    assert main(["tokenize", *args, str(d / "one")]) == 0
    two = d / "two"
    steps = [{"run": [*args, str(two)]},
             {"snapshot": str(two)},
             {"delete": [str(two / "train-00001.safetensors"), str(two / "train-00003.safetensors")]},
             {"run": [*args, str(two), "--resume"]}]
    return d, launch(2, d, steps)


def test_two_processes_tokenize_streamed_audio_as_one_does_and_resume_after_a_gap(audio):
    d, ranks = audio
    head = json.loads((d / "one" / "tokens.json").read_text())
    assert len(head["shards"]["train"]["files"]) == 5 and head["counts"]["train"] > 18  # covering windows
    assert all(r[0]["rc"] == 0 and r[3]["rc"] == 0 for r in ranks)
    assert _tally([r[0] for r in ranks]) == (6, 0)
    snap = ranks[0][1]
    assert snap["sha256"] == {n: hashlib.sha256(b).hexdigest() for n, b in _files(d / "one").items()}
    before = snap["mtimes"]
    _same_folder(d / "two", d / "one")  # after the resume: shards 1 and 3 encoded again, numbered as before
    assert _tally([r[3] for r in ranks]) == (2, 4)
    kept = ["train-00000.safetensors", "train-00002.safetensors", "train-00004.safetensors", "test-00000.safetensors"]
    assert all((d / "two" / n).stat().st_mtime_ns == before[n] for n in kept)


def test_two_processes_tokenize_recordings_as_streams_as_one_process_does(tmp_path):
    """``tokenize --streams`` (each recording whole as frames of a causal codec) under a launch: each process encodes
    its share of the frame shards, and the folder is byte for byte the one a single process writes."""
    from pipelines.cli import main
    from pipelines.data.tokens import load_token_streams
    from tests.pipelines.data.test_token_streams import SR, causal_tok, write_sines

    data = write_sines(tmp_path / "d")
    causal_tok(tmp_path / "tok")
    args = ["--tokenizer", str(tmp_path / "tok"), "--streams", "--shard-rows", "16", "--dataset", str(data),
            "--sample-rate", str(SR), "--quiet", "--out"]
    assert main(["tokenize", *args, str(tmp_path / "one")]) == 0
    ranks = launch(2, tmp_path, [{"run": [*args, str(tmp_path / "two")]}])
    assert [r[0]["rc"] for r in ranks] == [0, 0]
    head = json.loads((tmp_path / "one" / "tokens.json").read_text())
    assert len(head["shards"]["train"]["files"]) >= 4  # both processes had shards to write
    a, b = _files(tmp_path / "two"), _files(tmp_path / "one")
    assert sorted(a) == sorted(b) and [n for n in a if a[n] != b[n]] == []
    for split in ("train", "test"):
        (fa, oa, ya), (fb, ob, yb) = (load_token_streams(tmp_path / f, split) for f in ("two", "one"))
        assert torch.equal(fa.materialize(), fb.materialize()) and (oa == ob).all() and (ya == yb).all()
        assert oa[-1] > 0
