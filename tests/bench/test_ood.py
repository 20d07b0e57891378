"""bench/ood.py's prior: the recipe file recipes/ood/pixelcnn5_8bit.yaml, equal to what the committed results
were trained with; --quick and --prior-args go on top of it (no training here: the run itself is minutes)."""

from __future__ import annotations

import json

import pytest

import bench.ood as O
from bench.common import ROOT
from recipes import load_recipe


def test_the_prior_is_the_recipe_file_and_overrides_go_on_top():
    recipe, file = O.prior_recipe()
    assert file == "recipes/ood/pixelcnn5_8bit.yaml"
    assert recipe == load_recipe("ood/pixelcnn5_8bit", "train-prior")
    quick, _ = O.prior_recipe(quick=True, overrides=["steps=3", "lr=2e-3"])
    assert quick == recipe | O.QUICK_OVERRIDES | {"steps": 3, "lr": 0.002}
    with pytest.raises(ValueError, match=r"'pixelcnn_layer' is not a field --prior-args may set"):
        O.prior_recipe(overrides=["pixelcnn_layer=3"])


def test_the_recipe_file_holds_what_the_committed_results_were_trained_with():
    res = json.loads((ROOT / "bench" / "results" / "ood.json").read_text())
    recipe, _ = O.prior_recipe()
    # eval_every / save_every aside: one evaluation and one save, at the end, either way
    recorded = res["prior"]["training"]["recipe"]
    drop = ("eval_every", "save_every")
    assert {k: v for k, v in recipe.items() if k not in drop} == {k: v for k, v in recorded.items() if k not in drop}
    assert recipe["eval_every"] >= recipe["steps"] and recipe["save_every"] >= recipe["steps"]
