"""bench/data_scale.py --quick: both corpora go through `vqgen tokenize` and `vqgen train-prior` as processes, memory
and the time to the first step are measured for each, and the ratios are those of the rows. The values themselves
are not checked (a quick run on a shared CPU says nothing about scaling): only that they were measured."""

from __future__ import annotations

import pytest

from bench import data_scale as ds


def test_quick_run_measures_both_corpora(tmp_path):
    res = ds.main(["--quick", "--work", str(tmp_path)])
    small, big = res["rows"]
    assert (small["images"], big["images"]) == (200, 2000) and res["steps"] == 5
    for row in (small, big):
        assert sum(row["tokens"]["grids"].values()) == row["images"]  # every image, train and test
        assert row["tokens"]["tokens"] == row["images"] * 64 * 64 * 3  # one 8-bit token per pixel and channel
        assert 1.0 <= row["tokens"]["bytes_per_token"] < 1.01  # uint8 shards: one byte a token plus the headers
        for stage in ("tokenize", "train_prior"):
            assert row[stage]["peak_rss_mib"] >= row[stage]["peak_anon_rss_mib"] > 50  # a Python process with torch
        assert 0 < row["train_prior"]["first_step_s"] < row["train_prior"]["wall_s"]
        assert (tmp_path / f"prior_{row['images']}" / "train_log.csv").is_file()
    assert res["ratios"]["train_first_step"] == pytest.approx(
        big["train_prior"]["first_step_s"] / small["train_prior"]["first_step_s"], rel=1e-2)
    md = ds.markdown(res)
    assert "| train-prior: time to first step (s) |" in md and "2,000 images" in md


def test_the_corpus_is_the_same_for_a_seed(tmp_path):
    assert ds._image(0, 7) == ds._image(0, 7) and ds._image(0, 7) != ds._image(1, 7)
    info = ds.build_corpus(tmp_path / "c", 12)
    from datasets import load_from_disk

    loaded = load_from_disk(str(tmp_path / "c"))
    assert info["images"] == len(loaded) == 12 and loaded.features["label"].names == ds.LABELS
    assert loaded.cast_column("image", type(loaded.features["image"])(decode=False))[3]["image"]["bytes"] == \
        ds._image(0, 3)[0]
