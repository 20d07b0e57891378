"""Long recordings: windows drawn in proportion to duration, held-out tails, whole-file evaluation and
tokenization, ranged reads beyond the cache, and datasets smaller than a batch (issue 11, item 4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.cli import main
from pipelines.data import DataSpec, audio_io, load_data
from pipelines.data.audio_io import AudioClipDataset, read_audio, read_audio_range, validate_sources
from pipelines.stages.tokenize import tokenize_splits
from pipelines.training.tasks import evaluate_tokenizer
from tokenizers_vq import RawCodec, build_tokenizer

SR = 8000
CLIP = 2048  # 0.256 s at 8 kHz
SECONDS = (2.0, 4.0, 6.0, 8.0)


def write_recordings(root, seconds=SECONDS, rate=SR):
    """root/rec{i}.wav: seeded noise (every sample differs, so a window's position is readable)."""
    root.mkdir(parents=True, exist_ok=True)
    waves = {}
    for i, s in enumerate(seconds):
        x = np.random.default_rng(i).uniform(-0.8, 0.8, int(s * rate)).astype(np.float32)
        sf.write(root / f"rec{i}.wav", x, rate, subtype="FLOAT")
        waves[str(root / f"rec{i}.wav")] = x
    return waves


def windows(ds: AudioClipDataset, epochs=range(1)) -> list[tuple[int, int, int]]:
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out += [ds.window(j) for j in range(len(ds))]
    return out


def test_windows_are_drawn_in_proportion_to_duration_and_lie_inside_each_file(tmp_path):
    waves = write_recordings(tmp_path / "d")
    files = sorted(waves)
    tr = AudioClipDataset(validate_sources(files, [-1] * 4, SR, "d", strict=True), SR, CLIP, train=True, seed=0)
    total = sum(len(w) for w in waves.values())
    assert abs(len(tr) - total / CLIP) <= 4  # an epoch is total duration / clip windows (rounded per file)
    drawn = windows(tr, range(5))
    counts = np.bincount([f for f, _, _ in drawn], minlength=4)
    assert (counts > 0).all()  # every file is sampled
    np.testing.assert_allclose(counts / counts.sum(), np.array(SECONDS) / sum(SECONDS), atol=0.02)
    starts = set()
    for f, start, stop in drawn:
        assert stop - start == CLIP and 0 <= start and stop <= len(waves[files[f]])
        starts.add((f, start))
    assert len(starts) > 0.9 * len(drawn)  # random offsets, not a fixed grid
    for j in (0, len(tr) // 2, len(tr) - 1):  # the samples are the file's, at the window
        tr.set_epoch(7)
        f, start, stop = tr.window(j)
        x, y = tr[j]
        assert x.shape == (CLIP,) and x.dtype == torch.float32 and y.item() == -1
        np.testing.assert_array_equal(x.numpy(), waves[files[f]][start:stop])


def test_same_seed_same_windows_and_epochs_differ(tmp_path):
    write_recordings(tmp_path / "d")
    a, b, c = (load_data(DataSpec(str(tmp_path / "d"), sample_rate=SR, clip_samples=CLIP, seed=s)).train
               for s in (1, 1, 2))
    assert windows(a, range(3)) == windows(b, range(3))
    assert windows(a, [0]) != windows(c, [0])
    assert windows(a, [0]) != windows(a, [1])
    a.set_epoch(2), b.set_epoch(2)
    assert torch.equal(a[5][0], b[5][0])


def test_each_epoch_sweeps_every_file_end_to_end(tmp_path):
    waves = write_recordings(tmp_path / "d", seconds=(3.0,))
    (path,) = waves
    tr = AudioClipDataset(validate_sources([path], [0], SR, "d", strict=True), SR, CLIP, train=True, seed=0)
    starts = sorted(s for _, s, _ in windows(tr))
    n, slack = len(tr), len(waves[path]) - CLIP
    for k, s in enumerate(starts):  # window k of n starts in the k-th n-th of the possible offsets
        assert k * (slack + 1) // n <= s < (k + 1) * (slack + 1) // n + 1


def test_few_long_files_hold_out_the_tail_of_each_and_evaluation_covers_it(tmp_path):
    waves = write_recordings(tmp_path / "d")
    s = load_data(DataSpec(str(tmp_path / "d"), sample_rate=SR, clip_samples=CLIP))
    assert s.train.num_files == s.test.num_files == 4  # 4 files x 10% < 1 file: each file's last 10% is test
    for (f, a, b), (g, c, d) in zip(s.train.segments, s.test.segments):
        n = len(waves[s.train.sources[f]])
        assert f == g and a == 0 and b == c and d == n and abs(d - c - 0.1 * n) <= 1
    assert s.train.total_samples + s.test.total_samples == sum(len(w) for w in waves.values())
    # Covering windows: every test sample once, in order, from the tails only.
    rebuilt: dict[int, list[np.ndarray]] = {}
    for j in range(len(s.test)):
        group, lo, hi = s.test.score_span(j)
        rebuilt.setdefault(group, []).append(s.test[j][0][lo:hi].numpy())
    for group, parts in rebuilt.items():
        f, c, d = s.test.segments[group]
        np.testing.assert_array_equal(np.concatenate(parts), waves[s.test.sources[f]][c:d])
    tok = build_tokenizer(modality="audio", autoencoder="mulaw", quantizer="fsq", hidden_channels=4, latent_dim=4, fsq_levels=[3, 3],
                          sample_rate=SR, clip_samples=CLIP)
    m = evaluate_tokenizer(tok, s.test, batch_size=4)
    assert m["scored_samples"] == s.test.total_samples and m["scored_files"] == 4
    assert math.isfinite(m["si_snr"]) and math.isfinite(m["log_mel_l1"])


def test_a_test_folder_of_long_files_is_scored_whole(tmp_path):
    write_recordings(tmp_path / "ds" / "train" / "a", seconds=(1.0,))
    test = write_recordings(tmp_path / "ds" / "test" / "a", seconds=(1.1, 2.3))
    s = load_data(DataSpec(str(tmp_path / "ds"), sample_rate=SR, clip_samples=CLIP))
    assert len(s.test) == sum(math.ceil(len(w) / CLIP) for w in test.values())
    tok = build_tokenizer(modality="audio", autoencoder="mulaw", quantizer="fsq", hidden_channels=4, latent_dim=4, fsq_levels=[3, 3],
                          sample_rate=SR, clip_samples=CLIP)
    m = evaluate_tokenizer(tok, s.test, batch_size=3)  # batches that split files
    assert m["scored_samples"] == sum(len(w) for w in test.values()) and m["scored_files"] == 2


def test_many_files_still_hold_out_whole_files(tmp_path):
    write_recordings(tmp_path / "d", seconds=(0.5,) * 10)
    s = load_data(DataSpec(str(tmp_path / "d"), sample_rate=SR, clip_samples=CLIP))
    assert (s.train.num_files, s.test.num_files) == (9, 1)
    assert all(a == 0 for _, a, _ in s.test.segments)


def test_tokenize_covers_every_file_with_fixed_windows(tmp_path):
    waves = write_recordings(tmp_path / "d")
    s = load_data(DataSpec(str(tmp_path / "d"), sample_rate=SR, clip_samples=CLIP))
    header = tokenize_splits(s, tmp_path / "tok", "d", RawCodec("audio", 256, (CLIP,), SR), progress=False)
    want = {name: sum(math.ceil((b - a) / CLIP) for _, a, b in ds.segments)
            for name, ds in (("train", s.train), ("test", s.test))}
    assert header.counts == want and header.token_shape == (CLIP,)
    assert sum(want.values()) >= sum(len(w) for w in waves.values()) / CLIP


def test_files_beyond_the_cache_are_read_by_range(tmp_path, monkeypatch):
    waves = write_recordings(tmp_path / "d", seconds=(2.0, 3.0))
    files = sorted(waves)
    cached = AudioClipDataset(validate_sources(files, [0, 0], SR, "d", strict=True), SR, CLIP, train=True, seed=4)
    monkeypatch.setattr(audio_io, "CACHE_BYTES", 0)
    ranged = AudioClipDataset(validate_sources(files, [0, 0], SR, "d", strict=True), SR, CLIP, train=True, seed=4)
    assert all(info.wave is None for info in ranged.infos)
    for j in range(len(cached)):
        assert torch.equal(cached[j][0], ranged[j][0])
    # A resampled file: the range comes from whole resampling blocks plus the filter's reach.
    x = np.random.default_rng(9).uniform(-1, 1, 22050).astype(np.float32)
    x[100] = 1.5  # over full scale: read_audio scales to peak 1, the ranged read must too
    sf.write(tmp_path / "odd.wav", x, 11025, subtype="FLOAT")
    whole, rate = read_audio(str(tmp_path / "odd.wav"), SR)
    info = validate_sources([str(tmp_path / "odd.wav")], [0], SR, "d", strict=True).results[0]
    assert rate == 11025 and info.rate == 11025 and info.length == len(whole) and info.scale < 1
    for start, stop in ((0, 500), (3000, 3000 + CLIP), (len(whole) - 700, len(whole))):
        part = read_audio_range(str(tmp_path / "odd.wav"), start, stop, SR, info.rate, info.scale)
        torch.testing.assert_close(part, whole[start:stop], atol=1e-5, rtol=0)


def test_train_tokenizer_on_two_long_files_with_a_larger_batch(tmp_path):
    write_recordings(tmp_path / "d", seconds=(3.0, 4.0))  # test: the last 10% of each
    tiny = ["--hidden-channels", "4", "--latent-dim", "4", "--num-res-blocks", "1", "--fsq-levels", "3,3"]
    assert main(["train-tokenizer", "--modality", "audio", "--audio-head", "logistic", "--quantizer", "fsq", "--dataset", str(tmp_path / "d"),
                 "--sample-rate", str(SR), "--clip-seconds", "0.256", "--batch-size", "8", "--steps", "3",
                 "--out", str(tmp_path / "tok"), "--quiet", *tiny]) == 0
    m = json.loads((tmp_path / "tok" / "metrics.json").read_text())
    assert m["step"] == 3 and m["scored_files"] == 2 and m["scored_samples"] == pytest.approx(0.1 * 7 * SR, abs=2)


def test_train_tokenizer_on_fewer_clips_than_a_batch(tmp_path):
    write_recordings(tmp_path / "d", seconds=(0.2, 0.2, 0.2))  # 2 train clips + 1 test clip, batch 8
    tiny = ["--hidden-channels", "4", "--latent-dim", "4", "--num-res-blocks", "1", "--fsq-levels", "3,3"]
    assert main(["train-tokenizer", "--modality", "audio", "--audio-head", "logistic", "--quantizer", "fsq", "--dataset", str(tmp_path / "d"),
                 "--sample-rate", str(SR), "--clip-seconds", "0.256", "--batch-size", "8", "--steps", "3",
                 "--out", str(tmp_path / "tok"), "--quiet", *tiny]) == 0
    assert json.loads((tmp_path / "tok" / "metrics.json").read_text())["step"] == 3
