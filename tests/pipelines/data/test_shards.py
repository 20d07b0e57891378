"""Token folders of shards (format 3, pipelines/data/shards.py): the dtype by vocabulary, round trips, lazy reading
that matches a tensor, clear errors for damaged shards, `vqgen tokenize --resume` after a crash and after kill -9,
two processes writing the folder one process writes, and priors trained from shards (each process reading its own
rows)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipelines.data import Splits
from pipelines.data.shards import ShardedArray, default_shard_rows, token_dtype
from pipelines.data.tokens import TokenHeader, check_token_folder, load_token_header, load_tokens, save_tokens
from pipelines.stages import tokenize as stage
from pipelines.training.tasks import TokenGridDataset
from tests.launch_workers import launch_workers
from tokenizers_vq import RawCodec

ROOT = Path(__file__).resolve().parents[3]
REC = RawCodec("image", 256, (1, 4, 4)).record()


def _header(vocab: int, shape=(2, 3)) -> TokenHeader:
    return TokenHeader(vocab_size=vocab, token_shape=shape, modality="image", dataset="toy", codec=REC)


def _data(n: int, vocab: int, shape=(2, 3), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, *shape), generator=g), torch.randint(-1, 5, (n,), generator=g)


@pytest.mark.parametrize(("vocab", "dtype", "size"), [(2, np.uint8, 1), (256, np.uint8, 1), (257, np.uint16, 2),
                                                      (65536, np.uint16, 2), (65537, np.int32, 4)])
def test_tokens_take_the_smallest_dtype_that_holds_the_vocabulary(tmp_path, vocab, dtype, size):
    assert token_dtype(vocab) == dtype
    tokens, labels = _data(500, vocab, (8, 8))
    tokens[0, 0, 0] = vocab - 1  # the largest code must survive
    header = save_tokens(tmp_path, _header(vocab, (8, 8)), {"train": (tokens, labels)}, rows_per_shard=200)
    assert header.shards["train"]["dtype"] == np.dtype(dtype).name and len(header.shards["train"]["files"]) == 3
    # on disk: `size` bytes per token, plus one byte per label (they fit int8) and each file's small JSON header
    files = [tmp_path / f["file"] for f in header.shards["train"]["files"]]
    overhead = sum(p.stat().st_size for p in files) - tokens.numel() * size - len(labels)
    assert 0 < overhead <= 3 * 256
    got, got_labels = load_tokens(tmp_path, "train")
    assert torch.equal(got.materialize(), tokens) and torch.equal(got_labels.materialize(), labels)


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_sharded_reads_equal_the_tensor_whatever_the_shard_size(tmp_path, rows):
    tokens, labels = _data(64, 10)
    save_tokens(tmp_path, _header(10), {"train": (tokens, labels)}, rows_per_shard=rows)
    a, y = load_tokens(tmp_path, "train")
    assert isinstance(a, ShardedArray) and len(a.files) == -(-64 // rows)
    assert a.shape == tokens.shape and a.dtype == torch.int64 and a.dim() == 3 and a.numel() == tokens.numel()
    idx = torch.tensor([5, 63, 0, 5, -1])
    mask = tokens[:, 0, 0] > 4
    for key in (3, -2, slice(None), slice(5, 40), slice(60, 100), slice(1, 50, 3), idx, mask,
                idx.numpy(), [2, 9], torch.tensor(7), np.int64(9), idx.view(5, 1), (slice(3, 9), 1), (4, 0, 2),
                (Ellipsis, 1)):
        assert torch.equal(a[key], tokens[key]), key
    assert torch.equal(y[idx], labels[idx])
    view = a.subset(np.array([9, 3, 40, 41]))
    assert len(view) == 4 and torch.equal(view[1:3], tokens[[3, 40]])
    assert torch.equal(view.subset([3, 0])[:], tokens[[41, 9]])
    assert a.min() == tokens.min() and a.max() == tokens.max() and view.max() == tokens[[9, 3, 40, 41]].max()
    # what a tensor does beyond indexing works on the whole array
    assert torch.equal(torch.cat([a, a]), torch.cat([tokens, tokens])) and (a == tokens).all()
    assert a.reshape(64, -1).sum() == tokens.sum() and a.tolist() == tokens.tolist()
    assert torch.equal(torch.stack(list(view)), tokens[[9, 3, 40, 41]])
    again = pickle.loads(pickle.dumps(view))  # DataLoader workers: no memory map inside the pickle
    assert len(pickle.dumps(a)) < 4096 and torch.equal(again[:], view[:])


def test_token_grid_dataset_reads_batches_from_shards(tmp_path):
    tokens, labels = _data(50, 10)
    save_tokens(tmp_path, _header(10), {"train": (tokens, labels)}, rows_per_shard=8)
    a, y = load_tokens(tmp_path, "train")
    ds = TokenGridDataset(a, y)
    for got, want in zip(DataLoader(ds, batch_size=16), DataLoader(TokenGridDataset(tokens, labels), batch_size=16),
                         strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[0].dtype == torch.int64


def test_default_shards_hold_a_token_budget_and_give_every_process_work():
    assert default_shard_rows(100, 64) >= 100  # a tiny split stays one file
    assert default_shard_rows(5000, 64) == 313  # 16 shards
    assert default_shard_rows(10**7, 64) == 65536  # 4M tokens per shard
    assert default_shard_rows(10, 10**8) == 1


def test_a_damaged_shard_is_an_error_that_names_it_and_the_fix(tmp_path):
    tokens, labels = _data(40, 300)
    save_tokens(tmp_path, _header(300), {"train": (tokens, labels)}, rows_per_shard=16)
    shard = tmp_path / "train-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF  # same size: only the checksum sees it
    shard.write_bytes(bytes(data))
    load_tokens(tmp_path, "train")  # loading checks sizes and shapes, not every byte
    with pytest.raises(ValueError, match=r"train-00001.safetensors is corrupt: its SHA-256 .* --resume"):
        check_token_folder(tmp_path)
    shard.write_bytes(bytes(data[:-30]))  # truncated
    with pytest.raises(ValueError, match=r"train-00001.safetensors is truncated or corrupt .*--resume"):
        load_tokens(tmp_path, "train")
    shard.unlink()
    with pytest.raises(ValueError, match=r"train-00001.safetensors is missing"):
        load_tokens(tmp_path, "train")


# ------------------------------------------------------------------------------------------------ tokenize
def _splits(n_train: int = 100, n_test: int = 30) -> Splits:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n_train + n_test, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (n_train + n_test,), generator=g)
    return Splits(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]), "image",
                  num_classes=3, class_names=["a", "b", "c"], input_shape=(1, 4, 4))


def _tokenize(out: Path, **kw) -> TokenHeader:
    return stage.tokenize_splits(_splits(), out, "toy", RawCodec("image", 256, (1, 4, 4)), progress=False,
                                 shard_rows=16, **kw)


def _same_folder(a: Path, b: Path) -> None:
    ha, hb = load_token_header(a), load_token_header(b)
    assert ha.counts == hb.counts and ha.shards == hb.shards  # every shard with the same checksum
    for split in ha.counts:
        assert torch.equal(load_tokens(a, split)[0][:], load_tokens(b, split)[0][:])


class _Crash(RuntimeError):
    pass


_ENCODE = stage.encode_dataset


def _counting(monkeypatch, crash_after: int | None = None) -> list[int]:
    """Count the shards encoded (``encode_dataset`` runs once per shard); raise after ``crash_after`` of them."""
    calls: list[int] = []
    real = _ENCODE

    def encode(*a, **kw):
        if crash_after is not None and len(calls) == crash_after:
            raise _Crash("killed")
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(stage, "encode_dataset", encode)
    return calls


def test_tokenize_writes_shards_matching_the_tensors(tmp_path):
    header = _tokenize(tmp_path / "t")
    assert header.format_version == 3 and header.counts == {"train": 100, "test": 30}
    assert [len(header.shards[s]["files"]) for s in ("train", "test")] == [7, 2]
    shards = [f"train-{k:05d}.safetensors" for k in range(7)] + [f"test-{k:05d}.safetensors" for k in range(2)]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(["tokens.json", *shards])
    codec, s = RawCodec("image", 256, (1, 4, 4)), _splits()
    x, y = s.train.tensors
    tokens, labels = load_tokens(tmp_path / "t", "train")
    assert torch.equal(tokens[:], codec.encode(x)) and torch.equal(labels[:], y)
    assert check_token_folder(tmp_path / "t") == {"train": 100, "test": 30}


def test_resume_after_a_crash_skips_finished_shards_and_gives_the_same_tokens(tmp_path, monkeypatch):
    _tokenize(tmp_path / "whole")
    calls = _counting(monkeypatch, crash_after=4)
    with pytest.raises(_Crash):
        _tokenize(tmp_path / "t")
    assert not (tmp_path / "t" / "tokens.json").exists()  # an unfinished folder is not mistaken for a token folder
    assert len(list((tmp_path / "t").glob("*.json"))) == 4  # the finished shards' records
    calls = _counting(monkeypatch)
    _tokenize(tmp_path / "t", resume=True)
    assert len(calls) == 9 - 4  # only the unfinished shards are encoded
    _same_folder(tmp_path / "t", tmp_path / "whole")
    assert not list((tmp_path / "t").glob("*-*.json"))  # the records are in the manifest now

    calls = _counting(monkeypatch)
    _tokenize(tmp_path / "t", resume=True)  # a finished folder: nothing to do
    assert len(calls) == 0
    _same_folder(tmp_path / "t", tmp_path / "whole")


def test_resume_rewrites_damaged_shards_and_those_of_another_run(tmp_path, monkeypatch):
    _tokenize(tmp_path / "t")
    shard = tmp_path / "t" / "train-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    calls = _counting(monkeypatch)
    _tokenize(tmp_path / "t", resume=True)
    assert len(calls) == 1
    assert check_token_folder(tmp_path / "t")["train"] == 100
    calls = _counting(monkeypatch)
    stage.tokenize_splits(_splits(), tmp_path / "t", "toy", RawCodec("image", 256, (1, 4, 4)), progress=False,
                          shard_rows=10, resume=True)  # other shards: nothing can be kept
    assert len(calls) == 10 + 3
    assert load_token_header(tmp_path / "t").shards["train"]["rows_per_shard"] == 10
    assert len(list((tmp_path / "t").glob("train-*.safetensors"))) == 10  # the old, larger shards are gone
    calls = _counting(monkeypatch)
    _tokenize(tmp_path / "t")  # without --resume everything is encoded again
    assert len(calls) == 9


def _cli(args: list[str], nproc: int = 1, timeout: float = 240, prelude: str = "") -> list[str]:
    """Run ``vqgen ARGS`` in ``nproc`` processes launched the way torchrun launches them (RANK, WORLD_SIZE,
    MASTER_ADDR/PORT; one thread each; ``tests/launch_workers.py``), ``prelude`` (Python) run first in each. Returns
    each process's output."""
    code = f"import sys\n{prelude}\nfrom pipelines.cli import main\nsys.exit(main(sys.argv[1:]))"
    return launch_workers(["-c", code, *args], nproc, timeout, prefix="shard-logs-", env={"PYTHONPATH": str(ROOT)},
                          cwd=ROOT)


TOKENIZE = ["tokenize", "--raw", "--levels", "256", "--dataset", "shapes", "--limit", "120", "--shard-rows", "40",
            "--quiet", "--device", "cpu"]


def test_two_processes_write_the_folder_one_process_writes(tmp_path):
    """Two gloo processes (as torchrun starts them): each encodes its shards, the main one writes the manifest; the
    folder is the one a single process writes, shard for shard."""
    _cli([*TOKENIZE, "--out", str(tmp_path / "one")])
    out = _cli([*TOKENIZE, "--out", str(tmp_path / "two")], nproc=2)
    assert "wrote" in out[0] and "wrote" not in out[1]  # the main process reports
    # 3 train and 13 test shards, numbered across both splits and dealt alternately
    assert all(f"(process {r} of 2): 8 shards encoded" in out[r] for r in range(2)), out
    _same_folder(tmp_path / "two", tmp_path / "one")


def test_kill_9_halfway_then_resume_keeps_the_finished_shards(tmp_path):
    """A real kill -9 of `vqgen tokenize` partway (each shard slowed down so that it can be caught there), then
    `--resume`: the shards finished before the kill are kept, the folder is the uninterrupted run's."""
    out = tmp_path / "t"
    slow = "import time, pipelines.stages.tokenize as s\nreal = s.encode_dataset\n" \
           "s.encode_dataset = lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1]"
    code = f"import sys\n{slow}\nfrom pipelines.cli import main\nsys.exit(main(sys.argv[1:]))"
    args = [*TOKENIZE, "--shard-rows", "20", "--out", str(out)]  # 6 train + 25 test shards
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*-*.json"))) < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("*-*.json")))
    assert 12 <= finished < 31 and not (out / "tokens.json").exists()
    log = _cli([*args, "--resume"])[0]
    assert f"{31 - finished} shards encoded, {finished} kept" in log, log
    _cli([*TOKENIZE, "--shard-rows", "20", "--out", str(tmp_path / "whole")])
    _same_folder(out, tmp_path / "whole")
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ training
def test_train_prior_trains_from_a_sharded_folder(tmp_path, monkeypatch):
    """A network prior trains from the lazy arrays without ever copying the token grids whole (validation uses the
    manifest's range; batches and evaluation gather their rows); a count-based one counts every grid."""
    from pipelines.cli import main

    tokens, labels = _data(96, 6, (3, 4))
    labels = labels.clamp(min=0) % 3
    header = _header(6, (3, 4))
    header.num_classes, header.codec = 3, {"input_shape": [1, 6, 8]}
    save_tokens(tmp_path / "tok", header, {"train": (tokens, labels), "test": (tokens[:20], labels[:20])},
                rows_per_shard=10)
    real = ShardedArray.materialize

    def refuse(self):
        if self.key == "tokens":
            raise AssertionError("the token grids were copied whole")
        return real(self)

    monkeypatch.setattr(ShardedArray, "materialize", refuse)
    args = ["train-prior", "--tokens", str(tmp_path / "tok"), "--out", str(tmp_path / "p"), "--arch", "lstm",
            "--lstm-hidden", "8", "--steps", "3", "--batch-size", "8", "--conditional", "--quiet", "--device", "cpu",
            "--reference-fraction", "0", "--debug"]
    assert main(args) == 0
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["step"] == 3
    monkeypatch.setattr(ShardedArray, "materialize", real)
    args[args.index("--reference-fraction") + 1] = "0.25"  # 24 grids held out: the score reference is measured too
    assert main([*args[:4], str(tmp_path / "p2"), *args[5:]]) == 0
    assert (tmp_path / "p2" / "score_reference.json").is_file()
    assert main([*args[:4], str(tmp_path / "ngram"), "--arch", "ngram", "--quiet"]) == 0  # counted on every grid


WORKER = """
import json, os, sys
import numpy as np
from pipelines.data.shards import ShardedArray
read = []
real = ShardedArray._file_rows
def spy(self, rows):
    if self.key == "tokens" and "train-" in str(self.files[0]):
        read.extend(int(r) for r in rows)
    return real(self, rows)
ShardedArray._file_rows = spy
real_range = ShardedArray._range
def spy_range(self, a, b):
    if self.key == "tokens" and "train-" in str(self.files[0]):
        read.extend(range(a, b))
    return real_range(self, a, b)
ShardedArray._range = spy_range
import atexit
atexit.register(lambda: open(os.environ["READ_LOG"] + os.environ.get("RANK", "0"), "w").write(json.dumps(read)))
"""


def test_each_process_reads_only_its_own_training_rows(tmp_path):
    """Two training processes on a sharded folder: each reads the training grids of its own batches, none the whole
    split, and the two read different grids."""
    tokens, labels = _data(256, 6, (3, 4))
    save_tokens(tmp_path / "tok", _header(6, (3, 4)), {"train": (tokens, labels), "test": (tokens[:16], labels[:16])},
                rows_per_shard=32)
    os.environ["READ_LOG"] = str(tmp_path / "read")
    try:
        _cli(["train-prior", "--tokens", str(tmp_path / "tok"), "--out", str(tmp_path / "p"), "--arch", "lstm",
              "--lstm-hidden", "8", "--steps", "3", "--batch-size", "4", "--reference-fraction", "0", "--quiet",
              "--device", "cpu"], nproc=2, prelude=WORKER)
    finally:
        del os.environ["READ_LOG"]
    reads = [set(json.loads((tmp_path / f"read{r}").read_text())) for r in range(2)]
    # 3 steps of 4 grids, and the batch Accelerate fetches ahead: far from the 256 grids of the split
    assert all(0 < len(r) <= 6 * 4 for r in reads), [len(r) for r in reads]
    assert not reads[0] & reads[1]
