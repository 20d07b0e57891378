"""bench/baselines.py: PNG and gzip of the grids a prior compresses (what `vqgen compress` used to print beside its
own file): bit packing, 16-bit PNGs, raw images as the images they are, and a failing baseline reported as None."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bench.baselines as B
from pipelines.likelihood.compress import compression_stats
from prior import build_prior
from tokenizers_vq import RawCodec


def fitted_histogram(tokens: torch.Tensor, vocab: int):
    """A histogram prior fitted on ``tokens`` int [N, *shape] (an exact, instant model of them)."""
    prior = build_prior(arch="histogram", vocab_size=vocab, shape=tuple(tokens.shape[1:]))
    prior.net.fit(tokens.reshape(len(tokens), -1), None)
    return prior.eval()


def rand_tokens(n: int, shape: tuple[int, ...], vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, *shape), generator=torch.Generator().manual_seed(seed))


def test_a_fitted_prior_beats_gzip_and_png_on_its_own_data():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(64, 16, generator=g), -1)  # a skewed table per position
    tokens = torch.multinomial(probs, 400, replacement=True, generator=g).T.reshape(400, 8, 8)
    stats = compression_stats(fitted_histogram(tokens, vocab=16), tokens)
    base = B.baseline_sizes(tokens, 16)
    assert stats.file_bytes < base["gzip_bytes"] < base["png_bytes"]
    assert base["bits_per_dim_gzip"] == pytest.approx(8 * base["gzip_bytes"] / (400 * 64))
    assert base["bits_per_dim_png"] == pytest.approx(8 * base["png_bytes"] / (400 * 64))


def test_gzip_size_packs_bits_for_binary_data():
    zeros = torch.zeros(10, 64, 64, dtype=torch.long)
    assert B.gzip_size(zeros, 2) < B.gzip_size(zeros, 3)


@pytest.mark.parametrize("shape", [(4, 5), (7,), (2, 3, 2)])
def test_png_baseline_handles_vocabularies_over_256(shape):
    tokens = rand_tokens(3, shape, 1000, seed=4)
    assert tokens.max() >= 256  # needs 16-bit PNGs (current Pillow refuses the old explicit "I;16" mode)
    assert B.png_size(tokens) > B.png_size(tokens % 256) > 0
    base = B.baseline_sizes(tokens, 1000)
    assert base["png_bytes"] == B.png_size(tokens) and base["bits_per_dim_png"] > 0


def test_values_over_16_bits_have_no_png_baseline():
    tokens = torch.full((2, 3, 3), 2**16, dtype=torch.long)
    with pytest.raises(ValueError, match="at most 16 bits"):
        B.png_size(tokens)
    assert B.baseline_sizes(tokens, 2**17)["png_bytes"] is None


@pytest.mark.parametrize("levels,channels", [(2, 1), (256, 1), (256, 3)])
def test_raw_image_grids_are_stored_as_the_images_they_are(levels, channels):
    codec = RawCodec("image", levels, (channels, 6, 8))
    x = torch.rand(5, channels, 6, 8, generator=torch.Generator().manual_seed(0))
    grids = codec.encode(x)
    images = B.grid_images(grids, codec)
    assert len(images) == 5 and images[0].size == (8, 6)
    assert images[0].mode == ("1" if levels == 2 else "L" if channels == 1 else "RGB")
    back = np.asarray(images[0].convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255
    assert np.allclose(back.reshape(6, 8, channels).transpose(2, 0, 1), codec.decode(grids[:1])[0].numpy(), atol=1e-6)
    base = B.baseline_sizes(grids, levels, codec)
    assert base["png_bytes"] == B.png_size(grids, codec) > 0
    assert base["bits_per_dim_png"] == pytest.approx(8 * base["png_bytes"] / (5 * channels * 6 * 8))


@pytest.mark.parametrize("baseline", ["png_size", "gzip_size"])
def test_a_failing_baseline_is_none_and_the_other_is_still_given(monkeypatch, baseline):
    def boom(*_a, **_k):
        raise RuntimeError("baseline exploded")

    monkeypatch.setattr(B, baseline, boom)
    base = B.baseline_sizes(rand_tokens(4, (4, 4), 9), 9)
    failed, other = ("png", "gzip") if baseline == "png_size" else ("gzip", "png")
    assert base[f"{failed}_bytes"] is None and base[f"bits_per_dim_{failed}"] is None
    assert base[f"{other}_bytes"] > 0 and math.isfinite(base[f"bits_per_dim_{other}"])
