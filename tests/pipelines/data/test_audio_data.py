"""Audio data: reading and resampling, bad files, audio folders, the Hub code path, tones, spoken digits."""

import logging
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.data import DataSpec, load_data
from pipelines.data.audio_io import AudioClipDataset, AudioReadError, fit_clip, read_audio, validate_sources
from pipelines.data.builtins import spoken_digits, tones

SR = 16000


def sine(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def peak_frequency(x: torch.Tensor, rate: int) -> float:
    spec = torch.fft.rfft(x.double()).abs()
    return float(spec.argmax()) * rate / x.numel()


# ---------------------------------------------------------------------------------------- reading
def test_wav_round_trip_keeps_samples_within_16_bit_rounding(tmp_path):
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0, 0.3, 8000), -1, 1).astype(np.float32)
    x[:3] = [-1.0, 0.0, 0.999]
    path = tmp_path / "a.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    wave, rate = read_audio(path, SR)
    assert rate == SR and wave.dtype == torch.float32 and wave.shape == (8000,)
    assert np.abs(wave.numpy() - x).max() <= 1 / 32768 + 1e-7


def test_resampling_44k_stereo_to_16k_mono_gives_the_right_length_and_pitch(tmp_path, caplog):
    left, right = sine(0.5, 44100, 440.0), sine(0.5, 44100, 440.0, amp=0.3)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], 1), 44100)
    with caplog.at_level(logging.INFO, logger="vqgen.data"):
        wave, rate = read_audio(path, SR)
    assert rate == 44100
    assert wave.shape == (8000,)  # 0.5 s at 16 kHz
    assert peak_frequency(wave, SR) == pytest.approx(440.0, abs=2.0)
    assert wave.abs().max().item() == pytest.approx(0.4, abs=0.02)  # mono = mean of the channels
    assert any("from 44100 Hz to 16000 Hz" in r.getMessage() and "stereo.flac" in r.getMessage()
               for r in caplog.records)


def test_read_audio_accepts_bytes_and_dataset_cells_and_peak_normalises(tmp_path):
    x = sine(0.1, SR, amp=2.0)  # float WAVs can exceed 1
    path = tmp_path / "loud.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    from_path, _ = read_audio(path, SR)
    from_bytes, _ = read_audio(path.read_bytes(), SR)
    from_cell, _ = read_audio({"bytes": None, "path": str(path)}, SR)
    assert torch.equal(from_path, from_bytes) and torch.equal(from_path, from_cell)
    assert from_path.abs().max().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(from_path, torch.from_numpy(x / np.abs(x).max()))


def write_bad_files(folder):
    """Each kind of bad file the loaders must survive; returns {name: expected message fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = sine(0.2, SR)
    sf.write(folder / "whole.wav", good, SR, subtype="PCM_16")
    data = (folder / "whole.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "zero.wav", np.zeros(0, np.float32), SR)
    sf.write(folder / "nan.wav", np.full(100, np.nan, np.float32), SR, subtype="FLOAT")
    (folder / "whole.wav").unlink()
    return {"truncated.wav": "truncated", "text.wav": "cannot decode", "empty.wav": "empty",
            "zero.wav": "0 samples", "nan.wav": "NaN"}


def test_each_bad_file_is_a_clear_error_naming_it(tmp_path):
    for name, fragment in write_bad_files(tmp_path).items():
        with pytest.raises(AudioReadError, match=fragment) as err:
            read_audio(tmp_path / name, SR)
        assert name in str(err.value)


def test_fit_clip_crops_and_pads():
    w = torch.arange(10.0)
    assert fit_clip(w, 4, 3).tolist() == [3, 4, 5, 6]
    assert fit_clip(w[:2], 5, 2).tolist() == [0, 0, 0, 1, 0]
    assert fit_clip(w, 10, 0).tolist() == w.tolist()


# ---------------------------------------------------------------------------------------- folders
def make_folder(root, rate=SR):
    """root/{cat,dog}/: 3 + 3 good files of various lengths, one at 22.05 kHz, plus the bad files."""
    for label, freq in (("dog", 300.0), ("cat", 600.0)):
        (root / label).mkdir(parents=True)
        for i, secs in enumerate((0.05, 0.3, 0.12)):
            sf.write(root / label / f"{i}.wav", sine(secs, rate, freq), rate, subtype="PCM_16")
    sf.write(root / "cat" / "slow.flac", sine(0.1, 22050, 600.0), 22050)
    (root / "notes.txt").write_text("not listed: not an audio extension")
    return write_bad_files(root / "dog")


def test_folder_loader_skips_bad_files_with_one_warning(tmp_path, caplog):
    bad = make_folder(tmp_path / "data")
    spec = DataSpec(str(tmp_path / "data"), clip_samples=2048, test_fraction=0.25, seed=1)
    with caplog.at_level(logging.INFO, logger="vqgen.data"):
        splits = load_data(spec)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "skipped 5 unreadable audio file(s)" in msg and "--strict" in msg
    for name, reason in bad.items():  # each file is named with its reason
        assert f"{name}: " in msg and reason in msg
    assert any("from 22050 Hz" in r.getMessage() for r in caplog.records)
    assert splits.modality == "audio" and splits.class_names == ["cat", "dog"] and splits.num_classes == 2
    assert splits.input_shape == (2048,) and splits.sample_rate == SR
    # The held-out 25% is drawn from all 12 listed files before decoding, so bad files shrink either split.
    assert splits.train.num_files + splits.test.num_files == 7 and splits.test.num_files >= 1
    for ds in (splits.train, splits.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (2048,) and x.dtype == torch.float32 and x.abs().max() <= 1
            assert y.dtype == torch.int64 and y.item() in (0, 1)


def test_folder_loader_under_strict_raises_naming_the_file(tmp_path):
    make_folder(tmp_path / "data")
    spec = DataSpec(str(tmp_path / "data"), clip_samples=2048, strict=True)
    with pytest.raises(AudioReadError, match=r"dog/\w+\.wav.*--strict"):
        load_data(spec)


def test_folder_of_only_bad_files_is_an_error(tmp_path):
    write_bad_files(tmp_path / "bad" / "x")
    with pytest.raises(ValueError, match="no readable audio"):
        load_data(DataSpec(str(tmp_path / "bad"), modality="audio"))


def test_train_windows_are_seeded_per_epoch_and_test_windows_cover_the_file(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    long = np.linspace(-0.9, 0.9, 4000).astype(np.float32)  # a ramp: the crop offset is readable
    sf.write(tmp_path / "d" / "a" / "long.wav", long, SR, subtype="FLOAT")
    sf.write(tmp_path / "d" / "a" / "short.wav", long[:100], SR, subtype="FLOAT")
    files = [str(tmp_path / "d" / "a" / n) for n in ("long.wav", "short.wav")]
    tr = AudioClipDataset(validate_sources(files, [0, 0], SR, "d", strict=True), SR, 1000, train=True, seed=3)
    assert len(tr) == 5  # 4,000 samples: 4 windows of 1,000 per epoch; the short file: 1
    i_long, i_short = 0, 4
    epoch0 = [tr[i_long][0] for _ in range(2)]
    assert torch.equal(epoch0[0], epoch0[1])  # deterministic for a given (seed, epoch, index)
    offsets = set()
    for epoch in range(6):
        tr.set_epoch(epoch)
        x = tr[i_long][0]
        start = int(np.argmin(np.abs(long - x[0].item())))
        np.testing.assert_allclose(x.numpy(), long[start:start + 1000])
        assert start <= 750  # window 0 of 4 starts in the first quarter of the 3,001 possible offsets
        offsets.add(start)
    assert len(offsets) > 1  # different epochs see different windows
    short = tr[i_short][0]
    nz = short.nonzero().flatten()
    assert short.shape == (1000,) and len(nz) == 100  # the 100 samples, placed somewhere in silence
    assert torch.equal(short[nz[0]:nz[0] + 100], torch.from_numpy(long[:100]))
    te = AudioClipDataset(validate_sources(files, [0, 0], SR, "d", strict=True), SR, 1000, train=False)
    assert len(te) == 5
    for k in range(4):  # consecutive windows
        np.testing.assert_allclose(te[k][0].numpy(), long[1000 * k:1000 * (k + 1)])
    assert torch.equal(te[4][0][450:550], torch.from_numpy(long[:100]))  # short: centred in silence
    te.set_epoch(5)
    np.testing.assert_allclose(te[1][0].numpy(), long[1000:2000])  # test windows never move


def test_folder_with_train_and_test_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for label in ("hi", "lo"):
            (tmp_path / "ds" / split / label).mkdir(parents=True)
            for i in range(n):
                sf.write(tmp_path / "ds" / split / label / f"{i}.wav", sine(0.1, SR), SR)
    s = load_data(DataSpec(str(tmp_path / "ds"), clip_samples=512))
    assert (s.train.num_files, s.test.num_files) == (6, 4)  # 0.1 s files: several 512-sample windows each
    assert s.class_names == ["hi", "lo"]
    assert sorted(s.test.labels) == [0, 0, 1, 1]


# ---------------------------------------------------------------------------------------- Hub path
def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_hub_code_path_on_a_local_parquet_dataset(tmp_path, caplog):
    """A folder of parquet shards goes through ``datasets.load_dataset(name)`` exactly like a Hub id."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "hubds" / "data"
    root.mkdir(parents=True)
    rows = {"train": [("bird", 900.0), ("frog", 200.0)] * 4, "test": [("bird", 900.0), ("frog", 200.0)]}
    for split, items in rows.items():
        audio = [{"bytes": wav_bytes(sine(0.2, 8000, f), 8000), "path": f"{split}_{i}.wav"}
                 for i, (_, f) in enumerate(items)]
        labels = [name for name, _ in items]
        if split == "train":  # one corrupt row: counted and skipped, never a crash in training
            audio.append({"bytes": b"RIFF nonsense", "path": "broken.wav"})
            labels.append("bird")
        ds = datasets.Dataset.from_dict({"sound": audio, "animal": labels})
        ds = ds.cast_column("sound", datasets.Audio(decode=False))
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    spec = DataSpec(str(tmp_path / "hubds"), modality="audio", audio_column="sound", label_column="animal",
                    clip_samples=4000)
    with caplog.at_level(logging.INFO, logger="vqgen.data"):
        s = load_data(spec)
    assert (len(s.train), len(s.test)) == (8, 2)
    assert s.class_names == ["bird", "frog"]
    assert sum("skipped 1 unreadable" in r.getMessage() and "broken.wav" in r.getMessage()
               for r in caplog.records) == 1
    x, y = s.train[0]
    assert x.shape == (4000,) and x.abs().max() <= 1
    # Resampled from 8 kHz: 0.2 s -> 3200 samples, centred in 4000 for test; the pitch survives.
    xt, yt = s.test[1]
    assert s.class_names[yt] == "frog"
    assert (xt != 0).sum() > 3000
    assert peak_frequency(xt[400:3600], SR) == pytest.approx(200.0, abs=6)
    with pytest.raises(ValueError, match="--audio-column"):
        load_data(DataSpec(str(tmp_path / "hubds"), modality="audio", audio_column="audio"))


def test_hub_code_path_on_save_to_disk_output_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    audio = [{"bytes": wav_bytes(sine(0.1, SR, 300 + 100 * i), SR), "path": None} for i in range(10)]
    ds = datasets.Dataset.from_dict({"audio": audio, "label": [i % 2 for i in range(10)]})
    ds = ds.cast_column("label", datasets.ClassLabel(names=["low", "high"]))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    s = load_data(DataSpec(str(tmp_path / "saved"), modality="audio", clip_samples=1024, test_fraction=0.2))
    assert (s.train.num_files, s.test.num_files) == (8, 2)
    assert s.class_names == ["low", "high"] and s.num_classes == 2


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_data(DataSpec("no-such-thing", modality="audio"))


# ---------------------------------------------------------------------------------------- tones
def test_tones_are_deterministic_per_seed_and_labelled_by_timbre():
    a = load_data(DataSpec("tones"))
    b = load_data(DataSpec("tones"))
    c = load_data(DataSpec("tones", seed=1))
    assert (len(a.train), len(a.test)) == (2000, 200)
    assert a.class_names == ["flute", "clarinet", "brass", "bell"] and a.num_classes == 4
    assert a.input_shape == (16000,) and a.sample_rate == SR
    for i in (0, 7, 1999):
        xa, ya = a.train[i]
        xb, yb = b.train[i]
        assert torch.equal(xa, xb) and ya == yb == i % 4
        assert not torch.equal(xa, c.train[i][0])
        assert xa.shape == (16000,) and xa.dtype == torch.float32
        assert 0.29 <= xa.abs().max().item() <= 0.91
    assert not torch.equal(a.train[0][0], a.test[0][0])  # the splits are different draws
    assert len(load_data(DataSpec("tones", limit=10)).train) == 10
    # Clips are cached once made; a caller that edits its copy does not change the dataset.
    x = a.train[3][0]
    x.zero_()
    assert torch.equal(a.train[3][0], b.train[3][0]) and a.train[3][0].abs().max() > 0.29


def test_tone_timbres_differ_in_harmonic_content():
    """Clarinets have (almost) no even harmonics; brass has them: the labels mean what they say."""
    rng = np.random.default_rng(0)

    def even_to_odd(timbre):
        ratios, amps, _ = tones._partials(timbre, rng)
        even = sum(a for r, a in zip(ratios, amps) if round(r) % 2 == 0 and abs(r - round(r)) < 1e-9)
        return even / sum(amps)

    assert even_to_odd("clarinet") == 0
    assert even_to_odd("brass") > 0.2


# ---------------------------------------------------------------------------------------- spoken digits
def test_spoken_digits_without_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"apt-get install espeak-ng.*brew install espeak-ng"):
        load_data(DataSpec("spoken-digits", cache_dir=str(tmp_path)))


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install espeak-ng / brew install espeak-ng)")
def test_spoken_digits_are_generated_once_and_read_as_a_folder(tmp_path, monkeypatch):
    # A smaller grid keeps the test fast; the layout and the code path are the real ones.
    monkeypatch.setattr(spoken_digits, "ESPEAK_VOICES", ["en-us", "en-gb+f2", "en-us+f3"])
    monkeypatch.setattr(spoken_digits, "ESPEAK_TEST_VOICES", 1)
    monkeypatch.setattr(spoken_digits, "ESPEAK_SPEEDS", [175])
    monkeypatch.setattr(spoken_digits, "ESPEAK_PITCHES", [50])
    s = load_data(DataSpec("spoken-digits", cache_dir=str(tmp_path)))
    assert s.class_names == [str(d) for d in range(10)]
    assert (len(s.train), len(s.test)) == (20, 10)
    assert sorted(s.test.labels) == list(range(10))
    x, y = s.test[3]
    assert x.shape == (16000,) and x.abs().max() > 0.05
    assert list((tmp_path / "sr16000").iterdir()) and not list(tmp_path.glob(".spoken-digits-*"))
    # Second load: no espeak-ng needed, the cache is read as it is.
    monkeypatch.setattr(shutil, "which", lambda name: None)
    again = load_data(DataSpec("spoken-digits", cache_dir=str(tmp_path)))
    assert torch.equal(again.test[3][0], x)


def test_with_placements_repeats_the_training_words_at_other_offsets(tmp_path):
    """A prior's training split tokenized n times: n x the items, the same labels in order, each short file at
    seeded offsets that differ between views; the test split and non-audio splits are untouched."""
    from pipelines.stages.tokenize import with_placements

    for split, n in (("train", 2), ("test", 1)):
        for label, freq in (("hi", 900.0), ("lo", 300.0)):
            (tmp_path / "ds" / split / label).mkdir(parents=True)
            for i in range(n):
                sf.write(tmp_path / "ds" / split / label / f"{i}.wav", sine(0.05, SR, freq), SR)
    s = load_data(DataSpec(str(tmp_path / "ds"), clip_samples=4000))  # 800-sample files in 4,000-sample clips
    aug = with_placements(s, 3)
    assert len(aug.train) == 3 * len(s.train) == 12 and aug.test is s.test
    items = [aug.train[i] for i in range(len(aug.train))]
    assert [int(y) for _, y in items] == [int(y) for _, y in items[:4]] * 3
    starts = [int(torch.nonzero(x.abs() > 1e-4)[0]) for x, _ in items]
    assert all(len({starts[k], starts[k + 4], starts[k + 8]}) == 3 for k in range(4))  # 3,200 offsets to draw from
    again = with_placements(s, 3).train  # seeded: the same offsets when tokenized again
    assert starts == [int(torch.nonzero(again[i][0].abs() > 1e-4)[0]) for i in range(12)]
    assert with_placements(s, 1) is s
    tones = load_data(DataSpec("tones", limit=8))
    assert with_placements(tones, 4) is tones  # generated on access: no file offsets to redraw


def test_hub_audio_is_referenced_by_row_not_copied(tmp_path, monkeypatch):
    """A Hub / Arrow audio split holds a reference to each row (``ArrowCell``), not the encoded bytes: with no
    decoded waveform kept in memory (``CACHE_BYTES`` 0) every clip is read from the table when asked for, and equals
    the clip read with everything in memory."""
    datasets = pytest.importorskip("datasets")
    from pipelines.data import audio_io
    from pipelines.data.hub import ArrowCell

    audio = [{"bytes": wav_bytes(sine(0.3, SR, 200 + 50 * i), SR), "path": f"tone{i}.wav"} for i in range(10)]
    ds = datasets.Dataset.from_dict({"audio": audio, "label": [i % 2 for i in range(10)]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    spec = DataSpec(str(tmp_path / "saved"), modality="audio", clip_samples=2048, test_fraction=0.2)
    kept = load_data(spec)
    monkeypatch.setattr(audio_io, "CACHE_BYTES", 0)
    lazy = load_data(spec)
    assert all(isinstance(src, ArrowCell) for src in lazy.train.sources + lazy.test.sources)
    assert all(info.wave is None for info in lazy.train.infos)  # nothing decoded is held
    assert "tone" in audio_io.describe_source(lazy.train.sources[0])
    for split in ("train", "test"):
        a, b = getattr(kept, split), getattr(lazy, split)
        for i in range(len(a)):
            assert torch.allclose(a[i][0], b[i][0], atol=1e-6) and a[i][1] == b[i][1]


# ------------------------------------------------------------------------------ the rate follows the data
def narrowband_folder(root, rates=(8000, 8000, 6000)):
    """root/: one 0.5 s file per rate (and an unreadable file, whose rate nobody knows)."""
    root.mkdir(parents=True)
    for i, rate in enumerate(rates):
        sf.write(root / f"{i}.wav", sine(0.5, rate, 300.0), rate, subtype="PCM_16")
    (root / "broken.wav").write_bytes(b"RIFF not a wave")
    return root


def test_rate_from_data_gives_8k_for_narrowband_recordings_and_keeps_the_clip_seconds(tmp_path, caplog):
    root = narrowband_folder(tmp_path / "nb")
    spec = DataSpec(name=str(root), modality="audio", sample_rate=16000, clip_samples=8000, rate_from_data=True)
    with caplog.at_level(logging.INFO, logger="vqgen.data"):
        splits = load_data(spec)
    assert splits.sample_rate == 8000 and splits.input_shape == (4000,)  # 0.5 s clips at 8 kHz
    x, _ = splits.train[0]
    assert x.shape == (4000,)
    assert peak_frequency(x, 8000) == pytest.approx(300.0, abs=20)  # read at 8 kHz, not at 16 kHz
    assert "recorded at 8000 Hz or less" in caplog.text and "--sample-rate 16000" in caplog.text
    # Asked for by rate (the flag unset), or with one wideband file among them: the spec's rate.
    assert load_data(DataSpec(name=str(root), modality="audio")).sample_rate == 16000
    wide = narrowband_folder(tmp_path / "mixed", rates=(8000, 16000, 8000))
    assert load_data(DataSpec(name=str(wide), modality="audio", rate_from_data=True)).sample_rate == 16000
