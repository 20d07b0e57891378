"""bench/compression_folds.py (``python -m bench.compression --folds 5``): folds from the data layer, each fold's
rows coded on its own test digits, the spread computed from the per-fold numbers, recipe overrides by row."""

from __future__ import annotations

import numpy as np
import pytest

import bench.compression as C
import bench.compression_folds as F
from pipelines.data.tokens import load_tokens


def test_quick_folds_run(tmp_path):
    res = C.main(["--folds", "5", "--quick", "--rows", "histogram", "--work", str(tmp_path)])
    assert [f["fold"] for f in res["folds"]] == [0, 1] and res["n_folds"] == 5
    for f in res["folds"]:
        assert f["n"] == 20 and f["n_train"] == 4000
        rows = {r["method"]: r for r in f["rows"]}
        hist = rows["vqgen histogram"]
        assert hist["round_trip_exact"] and hist["training"]["recipe"]["reference_fraction"] == 0
        if not rows["JBIG (pbmtojbg)"].get("skipped"):
            assert hist["x_smaller_than_jbig"] == pytest.approx(rows["JBIG (pbmtojbg)"]["file_bytes"] / hist["file_bytes"])
        assert len(load_tokens(tmp_path / f"tokens_fold{f['fold']}", "test")[0]) == 1000  # the whole fold, 20 coded
    s = res["summary"]["vqgen histogram"]["nats_per_digit"]
    vals = [next(r for r in f["rows"] if r["method"] == "vqgen histogram")["nats_per_digit"] for f in res["folds"]]
    assert s["mean"] == pytest.approx(np.mean(vals)) and s["std"] == pytest.approx(np.std(vals, ddof=1))
    assert (s["min"], s["max"]) == (min(vals), max(vals))
    assert "over five folds" in F.markdown(res)
    check_merge(res, tmp_path)


def check_merge(res, tmp_path):
    """Per-fold files (``--only K --json``) merge back into the same folds and summary, in fold order."""
    import json

    files = []
    for f in reversed(res["folds"]):
        files.append(tmp_path / f"fold{f['fold']}.json")
        files[-1].write_text(json.dumps({**res, "folds": [f]}))
    merged = F.merge([str(p) for p in files])
    assert [f["fold"] for f in merged["folds"]] == [0, 1] and merged["summary"] == res["summary"]
    with pytest.raises(ValueError, match=r"fold\(s\) \[1\] appear in more than one file"):
        F.merge([str(files[0]), str(files[0])])
    other = dict(res["folds"][0], rows=[dict(r, training=dict(r["training"], recipe={"arch": "x"}))
                                        if r.get("training") else r for r in res["folds"][0]["rows"]])
    files[1].write_text(json.dumps({**res, "folds": [other]}))
    with pytest.raises(ValueError, match="other recipes"):
        F.merge([str(p) for p in files])


def test_recipe_overrides_by_row():
    args = F.build_parser().parse_args(["--rows", "pixelcnn", "--args", "pixelcnn.shift=2", "pixelcnn.dropout=0.1"])
    recipe, file = F.fold_recipes(args)["pixelcnn"]
    assert file == "recipes/compression/pixelcnn16.yaml" and recipe["shift"] == 2 and recipe["dropout"] == 0.1
    with pytest.raises(ValueError, match="ROW.KEY=VALUE"):
        F.fold_recipes(F.build_parser().parse_args(["--rows", "ngram", "--args", "pixelcnn.shift=2"]))
