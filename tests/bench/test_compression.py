"""bench/compression.py: the quick run's table (every standard tool's row, a missing tool skipped with its
install command, exact round trips, sizes that match an independent computation), its recipe parsing, and its
rows' recipes: the files of recipes/compression/, equal to what the committed results were trained with."""

from __future__ import annotations

import json
import lzma
import math
import shutil

import numpy as np
import pytest
import torch

import bench.compression as C
from bench.common import ROOT, parse_overrides, recipe_keys, split_recipe
from recipes import load_recipe

BINARISED_TOOLS = {"JBIG (pbmtojbg)": ("pbmtojbg", "jbgtopbm"), "xz -9e": ("xz",), "bzip2 -9": ("bzip2",),
                   "gzip -9 -n": ("gzip",), "PNG": ()}
EIGHT_BIT_TOOLS = {"WebP lossless (cwebp)": ("cwebp", "dwebp"), "xz -9e": ("xz",), "bzip2 -9": ("bzip2",),
                   "gzip -9 -n": ("gzip",), "PNG": ()}


def test_quick_run_table(tmp_path, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(C, "which", lambda t: None if t in ("cjxl", "djxl") else real(t))  # JPEG XL "not installed"
    res = C.main(["--quick", "--work", str(tmp_path), "--pixelcnn-args", "lr=5e-3"])
    tables = {lv["levels"]: lv for lv in res["levels"]}
    assert set(tables) == {2, 256}
    n = tables[2]["n"]
    assert n == 20 and tables[256]["n"] == 20

    for levels, tools in ((2, BINARISED_TOOLS), (256, EIGHT_BIT_TOOLS)):
        rows = {r["method"]: r for r in tables[levels]["rows"]}
        assert set(tools) | {"vqgen histogram"} <= set(rows)
        for method, needed in tools.items():
            r = rows[method]
            if any(real(t) is None for t in needed):  # really missing on this machine: skipped, with the fix
                assert r["skipped"].endswith(f"sudo apt-get install {C.PACKAGE[needed[0]]}")
                continue
            assert r["skipped"] is None and r["round_trip_exact"] is True, r
            assert r["bits_per_pixel"] == pytest.approx(8 * r["file_bytes"] / (n * 1024))
            assert r["nats_per_digit"] == pytest.approx(8 * r["file_bytes"] * math.log(2) / n)
        if levels == 256:
            jxl = rows["JPEG XL lossless (cjxl)"]
            assert jxl["skipped"] == "cjxl, djxl not installed: sudo apt-get install libjxl-tools"
            assert jxl["round_trip_exact"] is None and "file_bytes" not in jxl
        done = [r for r in rows.values() if r["kind"] == "standard" and not r["skipped"]]
        best = min(done, key=lambda r: r["file_bytes"])
        assert tables[levels]["best_standard"] == best["method"]
        assert best["x_smaller_than_best_standard"] == 1.0
        for r in rows.values():
            if r["kind"] == "vqgen":
                assert r["round_trip_exact"] is True
                assert r["file_bytes"] == r["payload_bytes"] + r["header_bytes"]
                assert 8 * r["ideal_bytes"] <= 8 * r["payload_bytes"] + 64  # the range coder within a few words

    rows2 = {r["method"]: r for r in tables[2]["rows"]}
    assert {"vqgen ngram", "vqgen pixelcnn"} <= set(rows2)
    assert rows2["vqgen pixelcnn"]["training"]["steps_done"] == 2  # the quick recipe, trained through the stage
    # the row's recipe: its file, the quick fields over it, the flag's over those; the file is recorded
    t = rows2["vqgen pixelcnn"]["training"]
    assert t["recipe_file"] == "recipes/compression/pixelcnn16.yaml"
    quick = C.QUICK_OVERRIDES[2]["pixelcnn"]
    assert t["recipe"] == load_recipe("compression/pixelcnn16") | quick | {"lr": 0.005}
    assert tables[256]["rows"][-1]["training"]["recipe_file"] == "recipes/compression/histogram.yaml"
    u = rows2["vqgen pixelcnn"]["uncached"]  # the coder without the cache, for the speed-up: exact too
    assert u["digits"] == 2 and u["round_trip_exact"] is True and u["compress_digits_per_s"] > 0
    assert rows2["vqgen ngram"]["uncached"] is None
    # the grids the bench coded are the token folder's: xz's size equals liblzma's on the same packed bits ...
    from pipelines.data.tokens import load_tokens

    train, _ = load_tokens(tmp_path / "tokens_2_limit200", "train")
    test, _ = load_tokens(tmp_path / "tokens_2_limit200", "test")
    test = test[:n]
    if real("xz") and rows2["xz -9e"]["settings"].endswith("digit after digit"):
        packed = np.packbits(test.numpy().astype(np.uint8).reshape(-1)).tobytes()
        assert rows2["xz -9e"]["file_bytes"] == len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME))
    # ... and the histogram's ideal code length is -sum log2 of add-one (Laplace) per-pixel frequencies
    ones = train.reshape(len(train), -1).sum(0).double()
    p1 = (ones + 1) / (len(train) + 2)
    x = test.reshape(n, -1).double()
    bits = -(x * torch.log2(p1) + (1 - x) * torch.log2(1 - p1)).sum().item()
    assert rows2["vqgen histogram"]["ideal_bytes"] == pytest.approx(bits / 8, rel=1e-6)


def test_recipe_overrides_parse_yaml_values_and_refuse_unknown_keys():
    got = parse_overrides(["pixelcnn_layers=8", "lr=2e-3", "made_hidden=[500, 500]", "attention=fixed",
                           "max-seconds=600", "compile=true"], flag="--pixelcnn-args", known=recipe_keys())
    assert got == {"pixelcnn_layers": 8, "lr": 0.002, "made_hidden": [500, 500], "attention": "fixed",
                   "max_seconds": 600, "compile": True}
    model, loop = split_recipe({"arch": "pixelcnn", **got})
    assert set(loop) == {"lr", "max_seconds", "compile"} and model["pixelcnn_layers"] == 8
    with pytest.raises(ValueError, match=r"'pixelcnn_layer' is not a field --pixelcnn-args may set; known: "):
        parse_overrides(["pixelcnn_layer=8"], flag="--pixelcnn-args", known=recipe_keys())
    with pytest.raises(ValueError, match=r"'vocab_size' is not a field --transformer-args may set"):
        parse_overrides(["vocab_size=3"], flag="--transformer-args", known=recipe_keys())  # the data's
    with pytest.raises(ValueError, match=r"--made-args: 'steps' is not key=value"):
        parse_overrides(["steps"], flag="--made-args", known=recipe_keys())


def test_the_bench_refuses_a_bad_override_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"'pixelcnn_layer' is not a field --pixelcnn-args may set"):
        C.main(["--quick", "--work", str(tmp_path), "--levels", "2", "--pixelcnn-args", "pixelcnn_layer=8"])


@pytest.mark.parametrize("n,rows,cols", [(20, 1, 20), (20, 3, 7), (7, 7, 1)])
def test_tiling_and_pnm_round_trip(n, rows, cols):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(n, 32, 32), dtype=np.uint8)
    img = C.tile(bits, rows, cols)
    assert img.shape == (rows * 32, cols * 32)
    assert np.array_equal(C.untile(C.read_pnm(C.pbm_bytes(img)), n, rows, cols), bits)
    grey = rng.integers(0, 256, size=(5, 4), dtype=np.uint8)
    pgm = b"P5\n# a comment\n4 5\n255\n" + grey.tobytes()
    assert np.array_equal(C.read_pnm(pgm), grey)


def test_the_rows_are_the_recipe_files():
    """Each row's settings live in its file only: the bench's recipes are the files as read, and --quick is
    the same files with its few fields overridden."""
    names = {2: {"histogram": "histogram", "ngram": "ngram14", "made": "made", "pixelcnn": "pixelcnn16",
                 "transformer": "transformer"},
             256: {"histogram": "histogram", "ngram": "ngram4_8bit", "pixelcnn": "pixelcnn8_8bit"}}
    for levels, rows in names.items():
        got = C.level_recipes(levels)
        assert set(got) == set(rows)
        for row, name in rows.items():
            recipe, file = got[row]
            assert file == f"recipes/compression/{name}.yaml" and (ROOT / file).is_file()
            assert recipe == load_recipe(f"compression/{name}", command="train-prior")
        quick = C.level_recipes(levels, quick=True)
        assert set(quick) == set(C.QUICK_OVERRIDES[levels])
        for row, (recipe, file) in quick.items():
            assert recipe == got[row][0] | C.QUICK_OVERRIDES[levels][row] and file == got[row][1]


def test_the_recipe_files_hold_what_the_committed_results_were_trained_with():
    """bench/results/compression.json (the README's numbers) recorded each row's recipe: the files give the
    same values (eval_every / save_every aside: the bench evaluates and saves once, at the end, either
    way)."""
    res = json.loads((ROOT / "bench" / "results" / "compression.json").read_text())
    trained = 0
    for lv in res["levels"]:
        recipes = C.level_recipes(lv["levels"])
        for r in lv["rows"]:
            if r["kind"] != "vqgen" or r["training"] is None:
                continue
            recipe, _ = recipes[r["method"].removeprefix("vqgen ")]
            # reference_fraction 0 (no grid held out for an anomaly reference) is how every prior trained before
            # priors carried one, the committed runs included
            assert recipe.get("reference_fraction", 0) == 0
            assert {k: v for k, v in recipe.items() if k not in ("eval_every", "save_every", "reference_fraction")} \
                == r["training"]["recipe"], r["method"]
            if r["training"]["steps_done"]:  # trained: one evaluation, at the end, as train_row's default
                assert recipe["eval_every"] >= recipe["steps"] and recipe["save_every"] >= recipe["steps"]
            trained += 1
    assert trained == 8
