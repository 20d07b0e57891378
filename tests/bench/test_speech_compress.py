"""bench/speech_compress.py --quick: the two-stage speech codec's plumbing on 12 held-out spoken-digit clips.

Tokenize, train a tiny unconditional prior per rung (q = 5 and q = 2 codebooks), ``compress`` / ``decompress``
the clips as WAV files, and check what the bench reports: the decoded tokens equal the encoded ones, the
decompressed audio is the tokenizer's own reconstruction, the rates follow from the byte counts, and a rerun
reuses the trained priors (skipped without espeak-ng: the spoken-digits data is synthesised by it); and the
prior's recipe: recipes/speech/prior_delay.yaml, equal to what the committed results were trained with.
"""

from __future__ import annotations

import json
import shutil

import pytest

import bench.speech_compress as SC
from bench.common import ROOT
from recipes import load_recipe

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="spoken-digits needs espeak-ng: apt-get install espeak-ng")


def test_the_prior_and_its_budgets_are_the_recipe_file():
    settings = load_recipe("speech/prior_delay", "train-prior")
    assert SC.RECIPE_FILE == "recipes/speech/prior_delay.yaml" and SC.PRIOR | SC.LOOP | SC.STAGE == settings
    assert SC.STAGE == {"reference_fraction": 0}  # as every prior trained before priors carried a reference
    assert SC.BUDGET[5] == {"steps": settings["steps"], "seconds": settings["max_seconds"],
                            "batch": settings["batch_size"]} and SC.LR == settings["lr"]
    assert SC.BUDGET[2] == SC.BUDGET[5] | {"steps": 250}  # the q = 2 rung's own steps


def test_the_recipe_file_holds_what_the_committed_results_were_trained_with():
    res = json.loads((ROOT / "bench" / "results" / "speech_compress.json").read_text())
    coded = [r for r in res["results"] if r.get("family") == "vqgen-coded"]
    assert {r["codebooks"] for r in coded} == {5, 2}
    for r in coded:
        sealed = r["prior"]["recipe"]
        assert sealed["model"] == SC.PRIOR and sealed["lr"] == SC.LR
        assert sealed["budget"] == SC.BUDGET[r["codebooks"]]


@needs_espeak
def test_bad_rungs_are_refused_naming_the_range(tmp_path):
    with pytest.raises(ValueError, match=r"--rungs must be in \[1, 5\] \(the shipped tokenizer's codebooks\), got 2 7"):
        SC.main(["--quick", "--work", str(tmp_path), "--rungs", "2", "7"])


@needs_espeak
def test_quick_run_codes_losslessly_and_reports_consistent_rates(tmp_path):
    res = SC.main(["--quick", "--work", str(tmp_path), "--no-write"])
    rows = {r["codec"]: r for r in res["results"]}
    seconds = res["meta"]["audio_seconds"]
    assert res["meta"]["clips"] == 12 and seconds == pytest.approx(12.0)
    for q, fixed_kbps in ((5, 2.25), (2, 0.9)):
        fixed = rows[f"vqgen tokens q={q}, fixed-length code"]
        coded = rows[f"vqgen tokens q={q} + prior, range-coded"]
        assert fixed["kbps"] == coded["fixed_kbps"] == fixed_kbps  # 50 positions/s x q x 9 bits (512 codes)
        # lossless token coding: every decoded token is the encoded one ...
        assert coded["tokens_equal"] is True and coded["tokens_differing"] == 0
        # ... so the decompressed WAVs are the tokenizer's reconstruction, up to 16-bit rounding
        assert coded["max_abs_diff_vs_fixed"] <= 1.5 / 32768
        assert coded["stoi"] == pytest.approx(fixed["stoi"], abs=2e-3)
        # the reported rates are the byte counts over the audio's duration
        assert coded["kbps"] == pytest.approx(8 * coded["file_bytes"] / seconds / 1000, abs=1e-4)
        assert coded["payload_kbps"] == pytest.approx(8 * coded["payload_bytes"] / seconds / 1000, abs=1e-4)
        assert coded["header_bytes"] == coded["file_bytes"] - coded["payload_bytes"] > 0
        # a range coder spends within a few bits per chunk of the ideal code length
        assert coded["ideal_bits"] - 32 <= 8 * coded["payload_bytes"] <= coded["ideal_bits"] + 128
        # a teacher-forced pass gives the same code length as the coder's step-by-step one (float rounding apart)
        by_book = coded["bits_per_token_by_codebook"]
        assert len(by_book) == q
        assert sum(by_book) / q == pytest.approx(coded["bits_per_token_ideal"], abs=0.01)
        assert coded["prior"]["recipe"]["budget"] == SC.QUICK["budget"] and coded["prior"]["step"] == 4
    assert rows["original (16-bit PCM WAV)"]["stoi"] == pytest.approx(1.0)
    # a second run reuses the tokens and priors it finds (same recipe): nothing is retrained
    before = {q: (tmp_path / f"prior_q{q}" / "model.safetensors").stat().st_mtime_ns for q in (5, 2)}
    assert SC.main(["--quick", "--work", str(tmp_path), "--until", "priors"]) == {}
    assert before == {q: (tmp_path / f"prior_q{q}" / "model.safetensors").stat().st_mtime_ns for q in (5, 2)}
