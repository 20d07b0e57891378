"""Intelligibility measures: STOI (joined clips), `vqgen reconstruct` reporting it, and the spoken-digit
classifier used as an automatic listener."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from pipelines.demo.speech_judge import (
    SpokenDigitClassifier,
    audio_accuracy,
    load_audio_classifier,
    predict_audio,
    save_audio_classifier,
    train_audio_classifier,
)
from tokenizers_vq.metrics import stoi

pystoi = pytest.importorskip("pystoi", reason="pystoi is in the dev extra: pip install -e '.[dev]'")
SR = 16000


def speechlike(seconds: float, sr: int = SR, f0: float = 120.0, formants=(700, 1200, 2500), seed: int = 0) -> torch.Tensor:
    """A vowel-like test signal float32 [T] in [-1, 1]: harmonics of a wandering f0 under formant bumps, in
    4 Hz syllables (what STOI's envelope correlations and a speech codec expect)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.1 * torch.sin(2 * math.pi * 1.3 * t + float(torch.rand(1, generator=g)) * 6))
    phase = 2 * math.pi * torch.cumsum(pitch, 0) / sr
    x = torch.zeros_like(t)
    for h in range(1, int(3800 / f0)):
        w = sum(math.exp(-((h * f0 - f) / 150) ** 2) for f in formants) + 0.05
        x += w * torch.sin(h * phase)
    env = 0.5 - 0.5 * torch.cos(2 * math.pi * 4 * t)
    x = x * env
    return (0.5 * x / x.abs().max()).float()


def test_stoi_is_one_against_itself_and_low_against_noise():
    x = speechlike(1.0)
    assert stoi(x, x, SR) == pytest.approx(1.0, abs=1e-3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 0.3
    # unrelated noise is low but not 0 (~0.35 here: STOI normalises and clips each segment); light noise is high
    assert stoi(noise, x, SR) < 0.45 < 0.6 < stoi(x + 0.1 * noise, x, SR) < 1.0


def test_stoi_joins_short_clips_and_says_nan_when_too_short():
    clips = torch.stack([speechlike(0.25, seed=s) for s in range(4)])  # each under pystoi's 30 frames
    assert stoi(clips, clips, SR) == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(stoi(clips[0], clips[0], SR))  # pystoi alone would say 1e-5, i.e. "unintelligible"
    with pytest.raises(ValueError, match="same shape"):
        stoi(clips[:, :100], clips, SR)


def test_reconstruct_reports_stoi(tmp_path):
    from pipelines.data import Splits
    from pipelines.stages.reconstruct import reconstruct
    from tokenizers_vq import TokenizerConfig, build_tokenizer

    clips = [(speechlike(0.512, seed=k), torch.tensor(0)) for k in range(3)]
    splits = Splits(train=clips, test=clips, modality="audio", num_classes=1, input_shape=(8192,), sample_rate=SR)
    tok = build_tokenizer(TokenizerConfig(modality="audio", autoencoder="mulaw", quantizer="fsq", fsq_levels=[5, 4], hidden_channels=8,
                                          latent_dim=8, num_res_blocks=1, clip_samples=8192))
    metrics = reconstruct(tok, splits, tmp_path / "rec", n=2, progress=False)
    assert 0.0 <= metrics["stoi"] <= 1.0 and "si_snr" in metrics  # untrained: low, but a number
    # metrics.json beside the WAVs, and `vqgen reconstruct` prints every key of this dict
    assert json.loads((tmp_path / "rec" / "metrics.json").read_text())["stoi"] == pytest.approx(metrics["stoi"])


def _toy_digits(n_per_class: int, seed: int, sr: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    """Three 'words' told apart by their formants (as vowels are), in random voices, positions and gains."""
    vowels = [(300, 2300, 3000), (700, 1200, 2500), (350, 800, 2400)]
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, formants in enumerate(vowels):
        for i in range(n_per_class):
            f0 = 90 + 120 * float(torch.rand(1, generator=g))
            w = speechlike(0.3, sr, f0, formants, seed=seed * 1000 + c * 100 + i)
            clip = torch.zeros(sr // 2)
            start = int(torch.randint(0, clip.numel() - w.numel(), (1,), generator=g))
            clip[start:start + w.numel()] = w * (0.3 + float(torch.rand(1, generator=g)))
            xs.append(clip)
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


def test_audio_classifier_learns_toy_words_and_round_trips(tmp_path):
    sr = 8000
    xtr, ytr = _toy_digits(16, seed=0, sr=sr)
    xte, yte = _toy_digits(8, seed=1, sr=sr)
    train = list(zip(xtr, ytr))
    model, acc = train_audio_classifier(train, list(zip(xte, yte)), num_classes=3, sample_rate=sr, epochs=12,
                                        batch_size=16, progress=False)
    assert acc > 0.6, acc  # chance is 1/3
    assert audio_accuracy(model, (xte, yte)) == pytest.approx(acc)
    assert predict_audio(model, xte).shape == (len(xte),) and predict_audio(model, xte).dtype == torch.int64
    # gain does not change the answer: the front end normalises each clip's level
    assert torch.equal(predict_audio(model, xte), predict_audio(model, 0.25 * xte))
    save_audio_classifier(model, tmp_path / "cls")
    assert {p.name for p in (tmp_path / "cls").iterdir()} == {"config.json", "model.safetensors"}
    again = load_audio_classifier(tmp_path / "cls")
    assert again.config == model.config
    torch.testing.assert_close(again(xte), model(xte), rtol=0, atol=1e-6)


def test_load_audio_classifier_refuses_another_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_classes": 10, "channels": 1}))  # an image classifier
    with pytest.raises(ValueError, match="not a spoken-digit classifier"):
        load_audio_classifier(tmp_path)


def test_classifier_takes_any_length():
    model = SpokenDigitClassifier(num_classes=4).eval()
    for t in (600, 16000, 23000):
        assert model(torch.zeros(2, t)).shape == (2, 4)


@pytest.mark.slow
def test_audio_classifier_hears_held_out_voices_of_spoken_digits():
    if shutil.which("espeak-ng") is None:
        pytest.skip("spoken-digits is synthesised with espeak-ng: sudo apt-get install espeak-ng")
    from pipelines.data import DataSpec, load_data

    splits = load_data(DataSpec("spoken-digits"))
    model, acc = train_audio_classifier(splits.train, splits.test, epochs=5, progress=False)
    assert acc > 0.5, acc  # chance is 0.1; the 30-epoch bench classifier is far higher
