"""bench/tokenizer_quality.py --recipe: a train-tokenizer recipe's row (the README's tones row from
recipes/tones/mulaw_fsq16-8-8.yaml) gets the file's dataset, quantizer, model fields, budget and loop, the
flags override them, and the file equals the committed row; nothing is trained here (``run_one`` is stood
in for)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import bench.tokenizer_quality as TQ
from bench.common import ROOT


class _Stop(Exception):
    pass


def _first_row(monkeypatch, *argv: str) -> dict:
    """What ``main(argv)`` hands ``run_one`` for its first row."""
    got = {}

    def run_one(dataset, quantizer, budget, overrides, loop, splits, seed, crop_samples=None):
        got.update(dataset=dataset, quantizer=quantizer, budget=budget, overrides=overrides, loop=loop,
                   crop_samples=crop_samples)
        raise _Stop

    monkeypatch.setattr(TQ, "run_one", run_one)
    monkeypatch.setattr(TQ, "load_data", lambda spec: SimpleNamespace(modality="audio"))  # no data needed
    with pytest.raises(_Stop):
        TQ.main(list(argv))
    return got


def test_a_recipe_gives_its_row(monkeypatch):
    got = _first_row(monkeypatch, "--recipe", "tones/mulaw_fsq16-8-8", "--no-write")
    assert got == {"dataset": "tones", "quantizer": "fsq", "budget": 600,
                   "overrides": {"modality": "audio", "audio_head": "logistic", "fsq_levels": [16, 8, 8],
                                 "waveform_loss_weight": 100},
                   "loop": {"batch_size": 16, "lr": 2e-3, "mixed_precision": "bf16"}, "crop_samples": 2048}


def test_flags_override_the_recipe(monkeypatch):
    got = _first_row(monkeypatch, "--recipe", "tones/mulaw_fsq16-8-8", "--audio-budget", "30", "--set",
                     "fsq_levels=[8,8]", "--mixed-precision", "no", "--lr", "1e-3", "--crop-samples", "0",
                     "--no-write")
    assert got["budget"] == 30 and got["overrides"]["fsq_levels"] == [8, 8] and got["crop_samples"] is None
    assert got["loop"] == {"batch_size": 16, "lr": 1e-3, "mixed_precision": "no"}
    assert got["overrides"]["waveform_loss_weight"] == 100


def test_without_a_recipe_the_defaults_are_unchanged(monkeypatch):
    got = _first_row(monkeypatch, "--datasets", "tones", "--no-write")
    assert got == {"dataset": "tones", "quantizer": "fsq", "budget": 300.0, "overrides": {},
                   "loop": {"batch_size": 16, "lr": 2e-3, "mixed_precision": "auto"}, "crop_samples": 2048}


def test_the_recipe_file_holds_the_committed_row():
    """The README's tones row in bench/results/tokenizer_quality.json: what --recipe gives, value by value."""
    res = json.loads((ROOT / "bench" / "results" / "tokenizer_quality.json").read_text())
    rec = TQ.from_recipe("tones/mulaw_fsq16-8-8")
    assert rec["file"] == "recipes/tones/mulaw_fsq16-8-8.yaml"
    row = next(r for r in res["results"]
               if r["dataset"] == rec["dataset"] and r["quantizer"] == rec["quantizer"]
               and r.get("config", {}).get("fsq_levels") == rec["model"]["fsq_levels"])
    assert row["meets_target"] and row["budget_s"] == rec["loop"]["max_seconds"]
    assert row["mixed_precision"] == rec["loop"]["mixed_precision"]
    assert row["config"]["waveform_loss_weight"] == rec["model"]["waveform_loss_weight"]
    # the bench's audio loop, and `vqgen train-tokenizer`'s defaults, which the file leaves to them
    assert (row["batch_size"], row["lr"], row["crop_samples"]) == (16, 2e-3, 2048)
    # the file's steps is the schedule's length that row planned: `vqgen train-tokenizer --config` follows it
    from recipes import load_recipe

    assert load_recipe("tones/mulaw_fsq16-8-8")["steps"] == row["planned_steps"]


def test_a_recipe_key_the_bench_would_not_use_is_refused(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("command: train-tokenizer\ndataset: tones\nweight_decay: 0.1\n")
    with pytest.raises(ValueError, match=r"weight_decay not taken by bench.tokenizer_quality"):
        TQ.from_recipe(str(bad))
    with pytest.raises(ValueError, match=r"is for `vqgen train-prior`"):
        TQ.from_recipe("compression/pixelcnn16")
