"""A prior's own score reference (pipelines/likelihood/reference.py): calibration, files, train-prior recording it,
and `vqgen score` giving an input the same anomaly score whatever folder it arrives in."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.likelihood.reference import (
    DEFAULT_METHOD,
    LOCAL_DIR,
    METHODS,
    MIN_REFERENCE,
    REFERENCE_FILE,
    Features,
    ScoreReference,
    Tails,
    fit_local_model,
    png_nats,
    reference_split,
)
from pipelines.stages.score import score
from pipelines.stages.tokenize import tokenize
from pipelines.stages.train import train_prior
from pipelines.training.config import TrainConfig

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _features(n: int, seed: int, shift: float = 0.0) -> Features:
    rng = np.random.default_rng(seed)
    nll = rng.normal(100 + shift, 5, n)
    complexity = rng.normal(300, 10, n)
    return Features(nll, complexity, nll * 0.5 + rng.normal(0, 2, n))


def _reference(n: int = 400, seed: int = 0) -> ScoreReference:
    return ScoreReference(_features(n, seed), "synthetic")


# ---------------------------------------------------------------------------------------------- calibration
def test_tails_hand_computed():
    v = np.arange(41, dtype=np.float64)  # quantiles 2.5% = 1, median = 20, 97.5% = 39
    t = Tails.fit(v)
    assert (t.median, t.low, t.high) == (20.0, 19.0, 19.0)
    assert t(np.array([20.0, 39.0, 1.0, 58.0, -18.0])).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    up = Tails.fit(v, upper=True)
    assert up(np.array([1.0, 39.0])).tolist() == [-1.0, 1.0]  # one-sided: below the median ranks lower
    assert Tails.fit(np.full(30, 5.0))(np.array([5.0, 6.0])).tolist()[0] == 0.0  # constant: no division by zero


def test_scores_by_method_from_one_input():
    ref = _reference()
    f = _features(50, 1)
    d = f.derived()
    assert np.allclose(ref.scores(f, "nll"), f.nll)
    assert np.allclose(ref.scores(f, "typicality"), np.abs(f.nll - ref.features.nll.mean()))
    lo, med, hi = np.quantile(ref.features.local - ref.features.complexity, [0.025, 0.5, 0.975])
    assert np.allclose(ref.scores(f, "local_excess"), (d["local_excess"] - med) / (hi - med))
    assert np.allclose(ref.scores(f, "combined"), np.maximum(ref.scores(f, "local_excess"), ref.scores(f, "excess")))
    assert np.allclose(ref.scores(f), ref.scores(f, DEFAULT_METHOD))
    # each input's score depends on that input alone: scoring it with others or alone gives the same number
    one = Features(f.nll[3:4], f.complexity[3:4], f.local[3:4])
    for m in METHODS:
        assert ref.scores(one, m)[0] == ref.scores(f, m)[3]
    with pytest.raises(ValueError, match="unknown anomaly score 'bogus'"):
        ref.scores(f, "bogus")


def test_threshold_holds_its_false_positive_rate():
    """The cross-fitted threshold flags about fpr of fresh in-distribution inputs, and more of shifted ones."""
    ref = _reference(2000)
    fresh, shifted = _features(20000, 7), _features(2000, 8, shift=15.0)
    for fpr in (0.05, 0.2):
        t = ref.threshold(fpr, "nll_tails")
        assert abs((ref.scores(fresh, "nll_tails") > t).mean() - fpr) < 0.02
    assert (ref.scores(shifted, "nll_tails") > ref.threshold(0.05, "nll_tails")).mean() > 0.5
    with pytest.raises(ValueError, match=r"--fpr must be in \(0, 1\)"):
        ref.threshold(1.5)
    with pytest.raises(ValueError, match="too few to calibrate"):
        _reference(40).threshold(0.01)


def test_reference_split():
    train, held = reference_split(1000, 0.1, seed=3)
    assert len(held) == 100 and len(train) == 900 and not set(train) & set(held)
    assert sorted(np.r_[train, held].tolist()) == list(range(1000))
    assert np.array_equal(reference_split(1000, 0.1, seed=3)[1], held)  # deterministic per seed
    assert not np.array_equal(reference_split(1000, 0.1, seed=4)[1], held)
    assert len(reference_split(100000, 0.1, seed=0)[1]) == 1000  # capped
    assert len(reference_split(100000, 0.1, seed=0, seq_len=16000)[1]) == 125  # long grids: capped in tokens
    assert len(reference_split(1000, 0.1, seed=0, seq_len=10**7)[1]) == MIN_REFERENCE
    assert len(reference_split(100, 0.1, seed=0)[1]) == 0  # 10 < MIN_REFERENCE: no reference
    assert len(reference_split(1000, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="--reference-fraction"):
        reference_split(10, 1.0, seed=0)


def test_reference_rejects_bad_features():
    with pytest.raises(ValueError, match=f"at least {MIN_REFERENCE}"):
        ScoreReference(_features(MIN_REFERENCE - 1, 0))
    f = _features(30, 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        ScoreReference(Features(np.r_[f.nll[:-1], np.nan], f.complexity, f.local))
    with pytest.raises(ValueError, match="three vectors of one length"):
        ScoreReference(Features(f.nll, f.complexity[:-1], f.local))


# ---------------------------------------------------------------------------------------------- complexity
def test_png_nats_is_the_png_length():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 4, size=(2, 6, 5))
    buf = io.BytesIO()
    Image.fromarray(g[1].astype(np.uint8)).save(buf, "PNG", compress_level=9)
    assert png_nats(torch.from_numpy(g), 4)[1] == pytest.approx(8 * buf.tell() * math.log(2))
    flat, busy = np.zeros((1, 32, 32), np.int64), rng.integers(0, 256, size=(1, 32, 32))
    assert png_nats(flat, 256)[0] < png_nats(busy, 256)[0] / 10  # a generic compressor sees a blank grid as cheap
    assert png_nats(rng.integers(0, 1000, size=(3, 4, 4)), 1000).shape == (3,)  # 16-bit PNG above 256 codes
    assert png_nats(rng.integers(0, 8, size=(2, 50)), 8).shape == (2,)  # 1-D (audio) grids: one row
    assert png_nats(rng.integers(0, 8, size=(2, 4, 4, 3)), 8).shape == (2,)  # (h, w, q) grids: q folded into w


# ---------------------------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    grids = torch.randint(0, 4, (200, 5, 5))
    local = fit_local_model(grids, 4, (5, 5))
    ref = ScoreReference(_features(60, 0), "held-out grids", local_model=local)
    path = ref.save(tmp_path)
    assert path.name == REFERENCE_FILE and (tmp_path / LOCAL_DIR / "config.json").is_file()
    back = ScoreReference.load(tmp_path)
    f = _features(10, 5)
    for m in METHODS:
        assert np.allclose(back.scores(f, m), ref.scores(f, m), atol=1e-5)
    assert back.source == "held-out grids" and not back.in_sample
    assert torch.equal(back.local_model.log_prob(grids[:7]), local.log_prob(grids[:7]))
    assert ScoreReference.load(tmp_path / "nothing") is None
    (tmp_path / REFERENCE_FILE).write_text('{"format": 1, "nll": [1, 2')  # a write cut off halfway
    with pytest.raises(ValueError, match=rf"{REFERENCE_FILE} .*not a readable score reference.*--reference DATA"):
        ScoreReference.load(tmp_path)
    path.write_text(json.dumps(ref.to_dict() | {"format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        ScoreReference.load(tmp_path)
    path.write_text(json.dumps(ref.to_dict()))
    shutil.rmtree(tmp_path / LOCAL_DIR)
    with pytest.raises(ValueError, match="local model"):
        ScoreReference.load(tmp_path)
    with pytest.raises(ValueError, match="no.*attached|none is attached"):
        ScoreReference(_features(30, 0)).save(tmp_path)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory) -> Path:
    """A small PixelCNN over binarised mnist5k digits, trained by the stage; 30 of its 300 grids held out."""
    root = tmp_path_factory.mktemp("reference")
    tokenize({"name": "mnist5k", "limit": 300}, root / "tokens", raw_levels=2, progress=False, device="cpu")
    cfg = TrainConfig(out=str(root / "prior"), steps=30, batch_size=16, lr=3e-3, progress=False, device="cpu",
                      eval_every=1000, save_every=1000)
    train_prior(root / "tokens", {"arch": "pixelcnn", "pixelcnn_layers": 2, "pixelcnn_channels": 8}, cfg)
    return root / "prior"


def test_train_prior_records_a_held_out_reference(prior_dir):
    d = json.loads((prior_dir / REFERENCE_FILE).read_text())
    assert d["n"] == 30 and len(d["nll"]) == len(d["local"]) == 30 and not d["in_sample"]
    assert "held out of training" in d["source"]
    ref = ScoreReference.load(prior_dir)
    assert ref.local_model.config.arch == "ngram" and ref.local_model.shape == (32, 32)
    assert json.loads((prior_dir / "metrics.json").read_text())["step"] == 30  # trained on the other 270 grids


def _folder(root: Path, images: list[np.ndarray]) -> Path:
    """A local image folder with a test split holding ``images`` (uint8 [32, 32]) in order and two filler images
    in train (folders need both splits)."""
    for split, imgs in (("test", images), ("train", images[:2])):
        d = root / split / "x"
        d.mkdir(parents=True)
        for i, a in enumerate(imgs):
            Image.fromarray(a).save(d / f"{i:03d}.png")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_same_input_same_score_in_any_folder(prior_dir, tmp_path):
    """The acceptance check: a digit scored alone, among other digits and among outliers gets one score."""
    from pipelines.data import DataSpec, load_data

    digits = (load_data(DataSpec("mnist5k")).test.tensors[0][:21, 0].numpy() * 255).round().astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32), dtype=np.uint8)
    target = digits[0]
    folders = {"alone": [target], "digits": [*digits[1:8], target, *digits[8:]],
               "outliers": [*noise[:11], target, *noise[11:]]}
    where = {"alone": 0, "digits": 7, "outliers": 11}
    got = {}
    for name, imgs in folders.items():
        out = tmp_path / f"{name}.csv"
        summary = score(prior_dir, {"name": str(_folder(tmp_path / name, imgs))}, out, progress=False, fpr=0.1,
                        batch_size=8)
        assert summary["ood_method"] == DEFAULT_METHOD and "warning" not in summary
        got[name] = {k: v for k, v in _rows(out)[where[name]].items() if k != "index"}
    assert got["alone"] == got["digits"] == got["outliers"]
    # and the outliers are what the verdict flags
    rows = _rows(tmp_path / "outliers.csv")
    assert sum(r["verdict"] == "ood" for r in rows if r is not rows[11]) == 20


def test_old_prior_folder_reference_on_request(tmp_path, capsys):
    """A prior folder saved before priors carried a reference: plain NLL with a warning, then --reference computes
    one once (saved into the folder, marked in-sample) and later runs read it."""
    old = tmp_path / "prior"
    shutil.copytree(FIXTURES / "v1" / "run" / "prior", old)
    assert not (old / REFERENCE_FILE).exists()
    s = score(old, {"name": "mnist5k", "limit": 200}, tmp_path / "a.csv", progress=False)
    assert s["ood_method"] == "nll" and "--reference DATA" in s["warning"]
    with pytest.raises(ValueError, match="--fpr calibrates"):
        score(old, {"name": "mnist5k"}, tmp_path / "a.csv", progress=False, fpr=0.05)
    s = score(old, {"name": "mnist5k", "limit": 200}, tmp_path / "b.csv", progress=False, reference="mnist5k",
              fpr=0.05)
    assert s["ood_method"] == DEFAULT_METHOD and "warning" not in s and "given by --reference" in s["reference"]
    ref = ScoreReference.load(old)
    assert ref.in_sample and ref.n == 200
    again = score(old, {"name": "mnist5k", "limit": 200}, tmp_path / "c.csv", progress=False)
    assert [r["ood_score"] for r in _rows(tmp_path / "c.csv")] == [r["ood_score"] for r in _rows(tmp_path / "b.csv")]
    assert again["reference"] == s["reference"]


def test_train_prior_reference_fraction_and_shift_checks(prior_dir, tmp_path):
    tokens = prior_dir.parent / "tokens"
    cfg = TrainConfig(out=str(tmp_path / "ngram"), steps=1, progress=False, device="cpu")
    train_prior(tokens, {"arch": "ngram", "ngram_order": 2}, cfg, reference_fraction=0.0)
    assert (tmp_path / "ngram" / "model.safetensors").is_file() and ScoreReference.load(tmp_path / "ngram") is None
    with pytest.raises(ValueError, match="--shift 1 rolls image token grids while a network trains.*count-based"):
        train_prior(tokens, {"arch": "ngram"}, TrainConfig(out=str(tmp_path / "n2"), steps=1, progress=False,
                                                           device="cpu"), shift=1)


def test_score_ood_reports_every_method(prior_dir, tmp_path):
    s = score(prior_dir, {"name": "mnist5k", "limit": 50}, tmp_path / "in.csv", progress=False, ood="shapes",
              fpr=0.1, batch_size=64)
    assert set(s["auroc"]) == set(METHODS) and s["auroc_ood_score"] == s["auroc"][DEFAULT_METHOD]
    assert s["auroc_ood_score"] > 0.7  # shapes are not digits: well above chance even for this tiny prior (0.86)
    assert 0.0 <= s["ood_flagged"] <= 1.0 and Path(s["ood_png"]).is_file()
    rows = _rows(tmp_path / "in.ood.csv")
    assert {r["ood_method"] for r in rows} == {DEFAULT_METHOD} and {r["verdict"] for r in rows} <= {"ood", "in"}
