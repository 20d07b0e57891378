"""bench/speech_codec.py reads recipes/speech/spectral_rvq13.yaml: its model and loop are the file's (equal to
the command the shipped tokenizer was trained by), its flags override them, its snapshots end at the file's
max_seconds."""

from __future__ import annotations

import json
import shlex

import bench.speech_codec as S
from bench.common import ROOT
from recipes import load_recipe


def _resolve(*argv: str):
    args = S.build_parser().parse_args(list(argv))
    return args, S.resolve_recipe(args)


def test_the_defaults_are_the_recipe_file():
    settings = load_recipe("speech/spectral_rvq13", "train-tokenizer")
    args, (data, model, loop, file) = _resolve()
    assert file == "recipes/speech/spectral_rvq13.yaml"
    assert data == {"name": settings["dataset"], "seed": 0, "sample_rate": 16000}  # the rate it scores at
    assert model | loop | {"dataset": args.dataset, "max_seconds": settings["max_seconds"]} == settings
    # the bench's own snapshots: the last one is the file's budget
    assert max(args.minutes) * 60 == settings["max_seconds"]


def test_flags_override_the_file():
    args, (data, model, loop, _) = _resolve("--dataset", "tones", "--num-quantizers", "5", "--lr", "2e-3",
                                            "--mixed-precision", "no", "--waveform-loss-weight", "20")
    assert data["name"] == "tones" and args.dataset == "tones"
    assert model["num_quantizers"] == 5 and model["waveform_loss_weight"] == 20
    assert model["codebook_size"] == 512  # the file's
    assert loop["lr"] == 0.002 and loop["mixed_precision"] == "no" and loop["steps"] == 12000


def test_the_recipe_file_holds_the_shipped_tokenizers_command():
    """bench/results/speech_codec_spoken_digits_512.json recorded the command line (every value a flag then)
    that trained the shipped spoken-digits tokenizer: the file's values are those."""
    res = json.loads((ROOT / "bench" / "results" / "speech_codec_spoken_digits_512.json").read_text())
    argv = shlex.split(res["meta"]["command"])[2:]  # past `python bench/speech_codec.py`
    recorded, _ = _resolve(*[a for a in argv if a != "--install"])
    args, _ = _resolve()
    for key in (*S.MODEL_FLAGS, *S.LOOP_FLAGS, "dataset", "minutes"):
        assert getattr(args, key) == getattr(recorded, key), key
    assert res["snapshots"][-1]["minutes"] * 60 == load_recipe("speech/spectral_rvq13")["max_seconds"]


def test_markdown_names_the_size_the_threads_and_the_note(monkeypatch):
    """The section's title names a recipe's ConvNeXt width x depth, its command keeps OMP_NUM_THREADS (a time budget
    depends on it) and --note adds its paragraph; without them the page is as before."""
    rows = [{"codebooks": 5, "kbps": 2.25, "stoi": 0.835, "si_snr_db": -29.1, "log_mel_l1": 0.236, "usage_min": 0.66,
             "accuracy": 0.994}]
    snaps = [{"minutes": 30, "steps": 12000, "rows": rows}]
    meta = {"dataset": "spoken-digits", "cpu": "cpu", "cores": 2, "torch": "t", "load_average_start": [0],
            "load_average_end": [0], "train_seconds": 1766, "command": "python -m bench.speech_codec",
            "model": {"causal": True, "istft_dim": 128, "istft_layers": 3}, "note": "Beside a test run."}
    page = S.markdown(snaps, meta, True)
    assert page.startswith("# Causal spectral codec, 128x3, from scratch on spoken-digits")
    assert "| 30 | 12000 | 5 | 2.25 | 0.835 | -29.10 | 0.236 | 66% | 99.4% |" in page
    assert "\nBeside a test run.\n" in page
    plain = S.markdown(snaps, meta | {"model": {}, "note": None}, True)
    assert plain.startswith("# Spectral codec from scratch on spoken-digits") and "Beside" not in plain
    args = S.build_parser().parse_args(["--recipe", "speech/causal_128x3", "--note", "x", "--results-name", "r"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmd = S.command_line(args)
    assert cmd.startswith("python -m bench.speech_codec --recipe speech/causal_128x3 ") and "--note" not in cmd
    assert cmd.endswith(" --seed 0 --results-name r")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert S.command_line(args) == "OMP_NUM_THREADS=1 " + cmd
