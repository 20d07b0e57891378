"""Token streams (issue 23, item 2): `vqgen tokenize --streams` encodes each recording whole into frames, stores a
split as one run of frames in shards, and `vqgen train-prior --window` trains on windows drawn from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from pipelines.cli import main
from pipelines.data import DataSpec, load_data
from pipelines.data.shards import ShardedArray, ShardRecord, write_shard
from pipelines.data.tokens import load_token_header, load_token_streams, load_tokens
from pipelines.stages.token_streams import recordings, tokenize_stream_splits
from pipelines.training.tasks import TokenStreamDataset
from tokenizers_vq import build_tokenizer

SR = 16000
SECONDS = {"train": {"lo": (0.5, 1.3), "hi": (0.9, 0.05)}, "test": {"lo": (0.6,), "hi": (0.7,)}}


def write_sines(root):
    """root/{train,test}/{lo,hi}/k.wav: sines (lo 220 Hz, hi 880 Hz) with a little seeded noise."""
    for split, classes in SECONDS.items():
        for c, secs in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k, s in enumerate(secs):
                t = np.arange(int(s * SR)) / SR
                f = 220 if c == "lo" else 880
                x = 0.5 * np.sin(2 * math.pi * f * t) + 0.05 * np.random.default_rng(k).standard_normal(len(t))
                sf.write(root / split / c / f"{k}.wav", x.astype(np.float32), SR, subtype="FLOAT")
    return root


def causal_tok(path=None):
    torch.manual_seed(0)
    tok = build_tokenizer(modality="audio", causal=True, istft_dim=16, istft_layers=1, num_quantizers=2,
                          codebook_size=16, clip_samples=3200)
    with torch.no_grad():
        tok.train()(torch.rand(4, 3200) * 1.6 - 0.8)  # k-means-initialised codebooks, as after training
    tok.eval()
    if path is not None:
        tok.save_pretrained(path)
    return tok


def offline_tok():
    torch.manual_seed(0)
    return build_tokenizer(modality="audio", autoencoder="mulaw", quantizer="fsq", fsq_levels=[5, 4],
                           hidden_channels=8, latent_dim=8, num_res_blocks=1, clip_samples=1024).eval()


def splits_of(root):
    return load_data(DataSpec(str(root), sample_rate=SR, clip_samples=3200))


def test_causal_streams_equal_each_recording_encoded_whole(tmp_path):
    splits, tok = splits_of(write_sines(tmp_path / "d")), causal_tok()
    header = tokenize_stream_splits(splits, tmp_path / "t", "d", tok, progress=False, shard_rows=7)
    assert header.format_version == 4 and header.streams["exact"] and header.streams["hop"] == 320
    assert header.token_shape == (2,)
    for name in ("train", "test"):
        frames, offsets, labels = load_token_streams(tmp_path / "t", name)
        rec = recordings(getattr(splits, name))
        assert len(frames.files) == math.ceil(len(frames) / 7)  # many tiny shards
        want, ys = [], []
        for i, n in enumerate(rec.lengths):
            x = rec.read(i, 0, n)
            want.append(tok.encode(F.pad(x, (0, -n % 320))[None])[0])  # offline, whole (zero-padded)
            ys.append(rec.labels[i])
        assert offsets.tolist() == np.concatenate([[0], np.cumsum([len(w) for w in want])]).tolist()
        assert labels.tolist() == ys and set(ys) == {0, 1}
        assert torch.equal(frames.materialize(), torch.cat(want))
    with pytest.raises(ValueError, match="load_token_streams"):
        load_tokens(tmp_path / "t", "train")


def test_offline_streams_are_window_by_window(tmp_path):
    splits, tok = splits_of(write_sines(tmp_path / "d")), offline_tok()
    header = tokenize_stream_splits(splits, tmp_path / "t", "d", tok, progress=False, shard_rows=50)
    hop, w = 64, 16
    assert header.streams == {"hop": hop, "encoder": "windows", "window_frames": w, "exact": False}
    frames, offsets, _ = load_token_streams(tmp_path / "t", "train")
    rec = recordings(splits.train)
    for i, n in enumerate(rec.lengths):
        x = F.pad(rec.read(i, 0, n), (0, -n % (w * hop)))
        want = tok.encode(x.view(-1, w * hop)).reshape(-1)[: math.ceil(n / hop)]
        assert torch.equal(frames[int(offsets[i]): int(offsets[i + 1])], want)


def test_windows_cross_shards_repeat_per_seed_and_cover_the_test_split(tmp_path):
    gen = torch.Generator().manual_seed(0)
    frames_t = torch.randint(0, 16, (95, 2), generator=gen)
    offsets = np.array([0, 40, 43, 95])  # the middle recording is shorter than a window
    recs: list[ShardRecord] = []
    for k, a in enumerate(range(0, 95, 9)):  # shards of 9 frames: most windows cross a boundary
        recs.append(write_shard(tmp_path, "train", k, a, frames_t[a:a + 9], torch.zeros(len(frames_t[a:a + 9])), 16))
    frames = ShardedArray.open(tmp_path, recs, "tokens", (2,), "")
    ds = TokenStreamDataset(frames, offsets, np.array([0, 1, 1]), window=10, train=True, seed=3)
    assert ds.skipped == 1 and len(ds) == 4 + 5  # round(40 / 10) + round(52 / 10)
    seen = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for j in range(len(ds)):
            a = ds.start(j)
            x, y = ds[j]
            assert torch.equal(x, frames_t[a:a + 10])  # the same frames as from the materialized array
            i = int(np.searchsorted(offsets, a, side="right") - 1)
            assert a + 10 <= offsets[i + 1] and y.item() == [0, 1, 1][i]  # inside one recording
            seen.add(a)
    assert any(a // 9 != (a + 9) // 9 for a in seen)
    again = TokenStreamDataset(frames, offsets, np.array([0, 1, 1]), window=10, train=True, seed=3)
    other = TokenStreamDataset(frames, offsets, np.array([0, 1, 1]), window=10, train=True, seed=4)
    again.set_epoch(2)
    other.set_epoch(2)
    assert [again.start(j) for j in range(len(ds))] == [ds.start(j) for j in range(len(ds))]
    assert [other.start(j) for j in range(len(ds))] != [ds.start(j) for j in range(len(ds))]
    test = TokenStreamDataset(frames, offsets, np.array([0, 1, 1]), window=10, train=False)
    assert [test.start(j) for j in range(len(test))] == [0, 10, 20, 30, 43, 53, 63, 73, 83, 85]


def test_cli_streams_train_prior_window_and_sample(tmp_path):
    data = write_sines(tmp_path / "d")
    causal_tok(tmp_path / "tok")
    common = ["--dataset", str(data), "--sample-rate", str(SR), "--quiet"]
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--streams", "--shard-rows", "16",
                 "--out", str(tmp_path / "t"), *common]) == 0
    header = load_token_header(tmp_path / "t")
    assert header.streams and sum(len(v["labels"]) for v in header.shards.values()) == 6
    prior = ["train-prior", "--tokens", str(tmp_path / "t"), "--arch", "transformer", "--n-layer", "1",
             "--d-model", "16", "--n-head", "2", "--steps", "3", "--batch-size", "4", "--quiet"]
    assert main([*prior, "--out", str(tmp_path / "no")]) == 2  # --window is required for streams
    assert main([*prior, "--window", "12", "--out", str(tmp_path / "p")]) == 0
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["shape"] == [12, 2] and not (tmp_path / "p" / "score_reference.json").exists()
    assert main(["sample", "--prior", str(tmp_path / "p"), "--n", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    wav, sr = sf.read(str(tmp_path / "s" / "sample_0001.wav"))
    assert sr == SR and wav.shape == (12 * 320,) and abs(wav).max() <= 1
    # scoring encodes the codec's clips: a prior of other windows is refused there, by name
    from pipelines.stages.common import open_prior

    with pytest.raises(ValueError, match=r"token grid \(12, 2\) \(prior\) != \(10, 2\)"):
        open_prior(tmp_path / "p")
    # --resume keeps every shard (same plan)
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--streams", "--shard-rows", "16", "--resume",
                 "--out", str(tmp_path / "t"), *common]) == 0
    assert load_token_header(tmp_path / "t").shards == header.shards


def test_grid_folders_refuse_window_and_still_train(tmp_path):
    assert main(["tokenize", "--raw", "--levels", "2", "--dataset", "mnist5k", "--limit", "64", "--out",
                 str(tmp_path / "g"), "--quiet"]) == 0
    base = ["train-prior", "--tokens", str(tmp_path / "g"), "--arch", "histogram", "--quiet"]
    assert main([*base, "--window", "8", "--out", str(tmp_path / "w")]) == 2
    assert main([*base, "--out", str(tmp_path / "h")]) == 0
    assert json.loads((tmp_path / "h" / "config.json").read_text())["shape"] == [32, 32]


def test_streams_refuse_images_and_raw_codecs(tmp_path, capsys):
    assert main(["tokenize", "--raw", "--levels", "2", "--dataset", "mnist5k", "--limit", "8", "--streams",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--streams" in capsys.readouterr().err
    build_tokenizer(hidden_channels=8).save_pretrained(tmp_path / "img")
    assert main(["tokenize", "--tokenizer", str(tmp_path / "img"), "--dataset", "mnist5k", "--limit", "8",
                 "--streams", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "audio codecs" in capsys.readouterr().err


def test_a_clip_dataset_gives_one_recording_per_item(tmp_path):
    from pipelines.data import Splits

    clips = [(torch.rand(n) * 1.6 - 0.8, torch.tensor(k % 2)) for k, n in enumerate((3200, 1000, 700))]
    splits = Splits(train=clips, test=clips[:1], modality="audio", num_classes=2, input_shape=(3200,), sample_rate=SR)
    tok = causal_tok()
    tokenize_stream_splits(splits, tmp_path / "t", "clips", tok, progress=False)
    frames, offsets, labels = load_token_streams(tmp_path / "t", "train")
    assert offsets.tolist() == [0, 10, 14, 17] and labels.tolist() == [0, 1, 0]
    assert torch.equal(frames[10:14], tok.encode(F.pad(clips[1][0], (0, 280))[None])[0])
