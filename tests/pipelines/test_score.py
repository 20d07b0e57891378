"""Scoring: NLL / bits per token / bits per dim, raw quantization, AUROC and typicality OOD detection."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from pipelines.data import Splits
from pipelines.likelihood.reference import DEFAULT_METHOD
from pipelines.likelihood.score import (
    bits_per_dim,
    bits_per_token,
    encode_batch,
    grid_features,
    ood_auroc,
    reference_from_grids,
    score_dataset,
    score_grids,
    typicality_score,
)
from prior import build_prior
from tokenizers_vq import RawCodec, build_tokenizer, dequantize_raw, mu_law_encode, quantize_raw


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, xs, ys):
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i], int(self.ys[i])


def bernoulli_images(n, p, seed, shape=(1, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) < p).float()


# ---------------------------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("vocab,shape", [(2, (3, 4)), (7, (5,)), (256, (2, 2))])
def test_uniform_histogram_gives_log2_v_bits_per_token(vocab, shape):
    prior = build_prior(arch="histogram", vocab_size=vocab, shape=shape)  # zero logits = uniform
    tokens = torch.randint(0, vocab, (9, *shape))
    nll = score_grids(prior, tokens, batch_size=4)
    L = math.prod(shape)
    assert nll.shape == (9,) and nll.dtype == torch.float64
    assert torch.allclose(nll, torch.full((9,), L * math.log(vocab), dtype=torch.float64))
    assert torch.allclose(bits_per_token(nll, L), torch.full((9,), math.log2(vocab), dtype=torch.float64))
    # tokens of a 3x16x16 image: the same code length spread over 768 dims
    assert bits_per_dim(nll, 768)[0].item() == pytest.approx(L * math.log2(vocab) / 768)


def test_score_grids_matches_log_prob_and_handles_labels():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (40, 2, 3), generator=g)
    labels = torch.arange(40) % 2
    prior = build_prior(arch="histogram", vocab_size=4, shape=(2, 3), num_classes=2)
    prior.net.fit(tokens.reshape(40, -1), labels)
    nll = score_grids(prior, tokens, labels, batch_size=7)
    assert torch.allclose(nll.float(), -prior.log_prob(tokens, labels).detach(), atol=1e-4)
    # unknown labels (-1) and labels=None both score p(grid) with the null-label table
    null = -torch.log_softmax(prior.net.logits[2].double(), -1).gather(-1, tokens.reshape(40, -1).T).T.sum(1)
    assert torch.allclose(score_grids(prior, tokens), null)
    assert torch.allclose(score_grids(prior, tokens, torch.full((40,), -1)), null)
    with pytest.raises(ValueError, match="labels must lie"):
        score_grids(prior, tokens, torch.full((40,), 2))
    with pytest.raises(ValueError, match="shape"):
        score_grids(prior, tokens[:, :1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        score_grids(prior, tokens + 1)


def test_bits_per_dim_rejects_zero_dims():
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(1.0, 0)


# ---------------------------------------------------------------------------------------------- raw grids
def test_quantize_raw_images():
    x = torch.tensor([[[0.0, 0.49, 0.5, 1.0]]])  # [1, 1, 4]
    assert quantize_raw(x, 2).tolist() == [[0, 0, 1, 1]]
    assert quantize_raw(x, 256).tolist() == [[0, round(0.49 * 255), 128, 255]]
    # RGB: channels interleaved per pixel, so raster order is pixel by pixel, channel by channel
    rgb = torch.stack([torch.full((2, 2), 10.0), torch.full((2, 2), 20.0), torch.full((2, 2), 30.0)]) / 255
    q = quantize_raw(rgb, 256)
    assert q.shape == (2, 6) == RawCodec("image", 256, (3, 2, 2)).token_shape()
    assert q[0].tolist() == [10, 20, 30, 10, 20, 30]
    batch = torch.rand(5, 3, 4, 6)
    for levels in (2, 256):
        qb = quantize_raw(batch, levels)
        assert qb.shape == (5, 4, 18) and qb.dtype == torch.int64 and 0 <= qb.min() and qb.max() < levels
        assert torch.equal(qb[2], quantize_raw(batch[2], levels))
        assert torch.equal(quantize_raw(dequantize_raw(qb, levels, (3, 4, 6)), levels), qb)  # exact inverse


def test_quantize_raw_audio_is_mu_law():
    wav = torch.linspace(-1, 1, 101)
    assert torch.equal(quantize_raw(wav, 256), mu_law_encode(wav))
    assert torch.equal(quantize_raw(wav[None], 256)[0], mu_law_encode(wav))
    back = dequantize_raw(quantize_raw(wav[None], 256), 256, (101,))
    assert back.shape == (1, 101) and (back - wav).abs().max() < 0.05
    codec = RawCodec("audio", 256, (101,), 8000)
    assert codec.token_shape() == (101,)
    assert torch.equal(encode_batch(codec, wav[None]), quantize_raw(wav[None], 256))
    assert torch.equal(codec.decode(codec.encode(wav[None])), back)


@pytest.mark.parametrize("x,levels,match", [
    (torch.rand(1, 4, 4), 3, "levels 2"),
    (torch.rand(1, 4, 4) + 1, 256, r"\[0, 1\]"),
    (torch.randint(0, 255, (1, 4, 4)), 256, "float"),
    (torch.rand(8) * 2 - 1, 2, "mu-law"),
    (torch.full((1, 2, 2), float("nan")), 256, "NaN"),
])
def test_quantize_raw_errors(x, levels, match):
    with pytest.raises(ValueError, match=match):
        quantize_raw(x, levels)


# ---------------------------------------------------------------------------------------------- OOD
def test_auroc_hand_computed():
    # out=2 beats in=1, ties in=2 (1/2), loses to 3: 1.5; out=4 beats all three: 3 -> 4.5 / 6
    assert ood_auroc([1, 2, 3], [2, 4]) == pytest.approx(0.75)
    assert ood_auroc([0, 1], [2, 3]) == 1.0
    assert ood_auroc([2, 3], [0, 1]) == 0.0
    assert ood_auroc([1, 1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(1, 1, size=40)  # brute force over all pairs
    assert ood_auroc(a, b) == pytest.approx(((b[None] > a[:, None]) + 0.5 * (b[None] == a[:, None])).mean())
    with pytest.raises(ValueError, match="at least one"):
        ood_auroc([], [1.0])


def test_typicality_score():
    assert typicality_score(torch.tensor([1.0, 5.0, 3.0]), 3.0).tolist() == [2.0, 2.0, 0.0]


def test_ood_toy_case_histogram():
    """A histogram fitted on sparse binary images gives shifted (denser) images higher NLL."""
    train, test_in, test_out = (bernoulli_images(400, 0.15, 0), bernoulli_images(100, 0.15, 1),
                                bernoulli_images(100, 0.5, 2))
    prior = build_prior(arch="histogram", vocab_size=2, shape=(6, 6))
    prior.net.fit(quantize_raw(train, 2).reshape(400, -1))
    nll_in, nll_out = score_grids(prior, quantize_raw(test_in, 2)), score_grids(prior, quantize_raw(test_out, 2))
    assert nll_in.mean() < nll_out.mean()
    assert ood_auroc(nll_in, nll_out) > 0.9
    ref = score_grids(prior, quantize_raw(train, 2)).mean().item()
    assert ood_auroc(typicality_score(nll_in, ref), typicality_score(nll_out, ref)) > 0.9


def test_typicality_catches_atypically_likely_inputs():
    """All-zero images are the *most* likely under a sparse-image model, so plain NLL calls them
    in-distribution (AUROC ~ 0), while typicality flags them (Nalisnick et al. 2019)."""
    train, test_in = bernoulli_images(400, 0.3, 0), bernoulli_images(100, 0.3, 1)
    blank = torch.zeros(50, 1, 6, 6)
    prior = build_prior(arch="histogram", vocab_size=2, shape=(6, 6))
    prior.net.fit(quantize_raw(train, 2).reshape(400, -1))
    nll_in, nll_out = score_grids(prior, quantize_raw(test_in, 2)), score_grids(prior, quantize_raw(blank, 2))
    assert ood_auroc(nll_in, nll_out) < 0.1
    ref = score_grids(prior, quantize_raw(train, 2)).mean().item()
    assert ood_auroc(typicality_score(nll_in, ref), typicality_score(nll_out, ref)) > 0.9


# ---------------------------------------------------------------------------------------------- datasets
def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("levels,shape", [(2, (1, 6, 6)), (256, (3, 4, 4))])
def test_score_dataset_raw_splits(tmp_path, levels, shape):
    train, test = bernoulli_images(200, 0.2, 0, shape), bernoulli_images(30, 0.2, 1, shape)
    if levels == 256:  # 8-bit pixels, not just {0, 1}
        train, test = train * torch.rand(train.shape), test * torch.rand(test.shape)
    splits = Splits(train=ListDataset(train, torch.zeros(200)), test=ListDataset(test, torch.arange(30) % 3),
                    modality="image", input_shape=shape)
    codec = RawCodec("image", levels, shape)
    dims = math.prod(shape)  # C*H*W
    prior = build_prior(arch="histogram", vocab_size=levels, shape=codec.token_shape())
    prior.net.fit(quantize_raw(train, levels).reshape(200, -1))
    grids = quantize_raw(train, levels)
    ref = reference_from_grids(prior, grids[:100], grids[100:], "the first 100 training images")
    summary = score_dataset(prior, codec, splits, tmp_path / "s" / "scores.csv", batch_size=8, progress=False,
                            reference=ref)
    rows = _read_csv(tmp_path / "s" / "scores.csv")
    nll = score_grids(prior, quantize_raw(test, levels))
    assert len(rows) == 30 and summary["n"] == 30 and summary["dims_per_input"] == dims
    assert list(rows[0]) == ["index", "label", "nll_nats", "bits_per_token", "bits_per_dim", "bits_per_dim_kind",
                             "complexity_nats", "local_nats", "typicality", "ood_score", "ood_method"]
    assert [int(r["label"]) for r in rows] == (torch.arange(30) % 3).tolist()
    assert float(rows[4]["nll_nats"]) == pytest.approx(nll[4].item(), abs=1e-5)
    assert float(rows[4]["bits_per_dim"]) == pytest.approx(nll[4].item() / math.log(2) / dims, abs=1e-5)
    assert float(rows[4]["bits_per_dim"]) == pytest.approx(float(rows[4]["bits_per_token"]), abs=1e-6)  # raw: D = L
    assert rows[0]["bits_per_dim_kind"] == summary["bits_per_dim_kind"] == "raw_likelihood"
    # the anomaly scores come from the reference, never from the split's own training data
    assert summary["ood_method"] == DEFAULT_METHOD and summary["reference_mean_nll"] == pytest.approx(ref.mean_nll)
    assert float(rows[4]["typicality"]) == pytest.approx(abs(nll[4].item() - ref.mean_nll), abs=1e-5)
    feats = grid_features(prior, ref.local_model, quantize_raw(test, levels))
    assert float(rows[4]["ood_score"]) == pytest.approx(ref.scores(feats)[4], abs=1e-5)
    assert float(rows[4]["complexity_nats"]) == pytest.approx(feats.complexity[4], abs=1e-5)
    assert summary["bits_per_dim"] == pytest.approx(nll.mean().item() / math.log(2) / dims)


def test_score_dataset_tokens_plain_dataset(tmp_path):
    torch.manual_seed(0)
    tok = build_tokenizer(modality="image", quantizer="fsq", channels=3, image_size=8, downsample=4,
                          hidden_channels=4, num_res_blocks=1, latent_dim=4, fsq_levels=[3, 3]).eval()
    x = torch.rand(10, 3, 8, 8)
    prior = build_prior(arch="histogram", vocab_size=tok.vocab_size, shape=(2, 2))  # uniform
    summary = score_dataset(prior, tok, ListDataset(x, -torch.ones(10)), tmp_path / "t.csv", batch_size=4,
                            progress=False)
    rows = _read_csv(tmp_path / "t.csv")
    assert summary["bits_per_dim_kind"] == rows[0]["bits_per_dim_kind"] == "token_code_length"
    assert summary["ood_method"] == "nll" and summary["dims_per_input"] == 3 * 8 * 8
    # uniform prior: 4 tokens x log2(9) bits over 192 pixel dims
    assert float(rows[0]["bits_per_token"]) == pytest.approx(math.log2(9), abs=1e-5)
    assert summary["bits_per_dim"] == pytest.approx(4 * math.log2(9) / 192)
    assert float(rows[0]["ood_score"]) == pytest.approx(float(rows[0]["nll_nats"]), abs=1e-5)
    assert rows[0]["typicality"] == rows[0]["local_nats"] == ""  # no reference: no anomaly scores beyond the NLL
    with pytest.raises(ValueError, match="--fpr calibrates a threshold.*--reference DATA"):
        score_dataset(prior, tok, ListDataset(x, -torch.ones(10)), tmp_path / "t.csv", progress=False, fpr=0.05)
    grids = encode_batch(tok, torch.rand(60, 3, 8, 8))
    ref = reference_from_grids(prior, grids[:30], grids[30:], "random images")
    summary = score_dataset(prior, tok, ListDataset(x, -torch.ones(10)), tmp_path / "t.csv", progress=False,
                            reference=ref, fpr=0.1)
    rows = _read_csv(tmp_path / "t.csv")
    assert summary["ood_method"] == DEFAULT_METHOD and summary["threshold"] == pytest.approx(ref.threshold(0.1))
    assert [r["verdict"] for r in rows] == ["ood" if float(r["ood_score"]) > summary["threshold"] else "in"
                                            for r in rows]
    assert summary["flagged"] == pytest.approx(np.mean([r["verdict"] == "ood" for r in rows]))


def test_score_dataset_raw_audio(tmp_path):
    wav = torch.sin(torch.arange(5 * 64).reshape(5, 64) * 0.3) * 0.5
    codec = RawCodec("audio", 256, (64,), 8000)
    prior = build_prior(arch="histogram", vocab_size=256, shape=(64,))  # uniform: 8 bits per sample
    summary = score_dataset(prior, codec, ListDataset(wav, torch.zeros(5)), tmp_path / "a.csv",
                            progress=False)
    assert summary["bits_per_dim_kind"] == "raw_likelihood" and summary["dims_per_input"] == 64
    assert summary["bits_per_dim"] == pytest.approx(8.0) and summary["bits_per_token"] == pytest.approx(8.0)


def test_score_dataset_errors(tmp_path):
    prior = build_prior(arch="histogram", vocab_size=2, shape=(6, 6))
    codec = RawCodec("image", 2, (1, 5, 5))
    data = ListDataset(bernoulli_images(4, 0.5, 0, shape=(1, 5, 5)), torch.zeros(4))
    with pytest.raises(ValueError, match=r"grids of shape \(5, 5\) but the prior models \(6, 6\)"):
        score_dataset(prior, codec, data, tmp_path / "a.csv", progress=False)
    with pytest.raises(ValueError, match="empty"):
        score_dataset(prior, codec, ListDataset([], []), tmp_path / "a.csv", progress=False)
    assert not (tmp_path / "a.csv").exists()


def test_score_cli_ood_prints_auroc_and_writes_histograms(tmp_path, capsys):
    """`vqgen score --ood DATA`: both CSVs, AUROCs that equal a direct rank computation on the CSVs, the PNG."""
    from PIL import Image

    from pipelines.cli import main

    tok, pri = tmp_path / "pix", tmp_path / "prior"
    assert main(["tokenize", "--raw", "--levels", "2", "--dataset", "mnist5k", "--limit", "300", "--out", str(tok),
                 "--quiet"]) == 0
    assert main(["train-prior", "--tokens", str(tok), "--arch", "histogram", "--out", str(pri), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "scores.csv"
    assert main(["score", "--prior", str(pri), "--dataset", "mnist5k", "--limit", "300", "--ood", "shapes",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in ("auroc_nll", "auroc_bits_per_dim", "auroc_typicality"):
        assert name in printed

    def column(path, key):
        with open(path) as f:
            return np.array([float(r[key]) for r in csv.DictReader(f)])

    ood_csv = tmp_path / "scores.ood.csv"
    a, b = column(out, "nll_nats"), column(ood_csv, "nll_nats")
    direct = np.mean([(y > x) + 0.5 * (y == x) for x in a for y in b])
    shown = float(next(line for line in printed.splitlines() if "auroc_nll:" in line).split(":")[1])
    assert abs(shown - direct) < 1e-3  # the printed AUROC is the rank statistic over the two CSVs
    assert direct > 0.7  # shapes, binarised, are unlike digits under a per-pixel digit model (0.84 measured)
    assert Image.open(tmp_path / "scores.ood.png").size[0] > 100
