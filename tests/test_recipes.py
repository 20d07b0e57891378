"""Every recipe in recipes/ names its command line, holds only flags its command knows, and runs through the CLI for
a step (tiny data, no compile); --print-config writes a file --config reads back to the same settings."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.cli import main, parse_command
from pipelines.data.tokens import TokenHeader, save_tokens
from recipes import load_recipe, recipe_names, recipe_path

ROOT = Path(__file__).resolve().parents[1]
NAMES = recipe_names()


def _command(name: str) -> str:
    return yaml.safe_load(recipe_path(name).read_text())["command"]


def test_every_recipe_names_its_command_line() -> None:
    assert {"compression/pixelcnn16", "speech/spectral_rvq13", "demo/image_prior"} <= set(NAMES)
    for name in NAMES:
        text = recipe_path(name).read_text()
        cmd = _command(name)
        assert re.search(rf"^# vqgen {cmd} --config recipes/{name}\.yaml", text, re.M), name
        assert "python -m bench." in text or "`vqgen demo" in text, f"{name}: say which bench or demo measured it"


NEEDED = {"train-prior": ["--tokens", "t", "--out", "o"], "train-tokenizer": ["--out", "o"]}


def test_every_recipe_parses_to_its_settings() -> None:
    for name in NAMES:
        cmd = _command(name)
        _, parsed, _ = parse_command([cmd, "--config", str(recipe_path(name)), *NEEDED[cmd]])
        for key, value in load_recipe(name).items():
            got = parsed.values[key]
            assert (list(got) if isinstance(got, tuple) else got) == value, (name, key)
            assert key in parsed.explicit, (name, key)


@pytest.mark.parametrize("name", ["compression/pixelcnn16", "speech/spectral_rvq13"])
def test_print_config_writes_a_recipe_that_reads_back(name: str, tmp_path: Path) -> None:
    import contextlib
    import io

    cmd = _command(name)
    _, parsed, _ = parse_command([cmd, "--config", str(recipe_path(name)), *NEEDED[cmd]])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([cmd, "--config", str(recipe_path(name)), *NEEDED[cmd], "--print-config"]) == 0
    (tmp_path / "printed.yaml").write_text(buf.getvalue())
    printed = yaml.safe_load(buf.getvalue())
    for key, value in load_recipe(name).items():  # every setting of the recipe is in the printed file
        assert printed[key] == value, key
    _, again, _ = parse_command([cmd, "--config", str(tmp_path / "printed.yaml"), *NEEDED[cmd]])
    assert {k: v for k, v in again.values.items() if k in printed} == {k: parsed.values[k] for k in printed}


def test_a_recipe_for_another_command_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train-tokenizer", "--config", "compression/pixelcnn16", "--out", str(tmp_path / "x")]) == 2
    assert "is for `vqgen train-prior`" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: train-prior\narch: lstm\nlstm_widht: 3\n")
    assert main(["train-prior", "--config", str(bad), "--tokens", "t", "--out", "o"]) == 2
    assert "unknown settings ['lstm_widht']" in capsys.readouterr().err


@pytest.fixture(scope="module")
def token_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small token folders for the prior recipes: binarised and 8-bit 16x16 digits, and a (t, q) codebook grid."""
    d = tmp_path_factory.mktemp("recipe_tokens")
    for levels in (2, 256):
        assert main(["tokenize", "--raw", "--levels", str(levels), "--dataset", "mnist5k", "--limit", "32",
                     "--image-size", "16", "--out", str(d / f"pixels{levels}"), "--quiet"]) == 0
    # the 500-digit test split makes each evaluation slow: keep 16
    for levels in (2, 256):
        folder = d / f"pixels{levels}"
        from pipelines.data.tokens import load_token_header, load_tokens

        header = load_token_header(folder)
        train, test = load_tokens(folder, "train"), load_tokens(folder, "test")
        header.counts = {"train": len(train[0]), "test": 16}
        save_tokens(folder, header, {"train": train, "test": (test[0][:16], test[1][:16])})
    g = torch.Generator().manual_seed(0)
    codes = {s: (torch.randint(0, 16, (n, 12, 2), generator=g), torch.arange(n) % 2) for s, n in (("train", 24),
                                                                                                  ("test", 8))}
    header = TokenHeader(vocab_size=16, token_shape=[12, 2], modality="audio", dataset="synthetic",
                         codec={"class_name": "RawCodec", "num_codebooks": 2, "fingerprint": "0" * 32,
                                "input_shape": [24]},
                         num_classes=2, class_names=["a", "b"], counts={s: len(c[0]) for s, c in codes.items()})
    save_tokens(d / "codebooks", header, codes)
    return {"pixels2": d / "pixels2", "pixels256": d / "pixels256", "codebooks": d / "codebooks"}


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_runs_for_a_few_steps(name: str, tmp_path: Path, token_folders: dict[str, Path]) -> None:
    cmd = _command(name)
    settings = load_recipe(name)
    tiny = ["--steps", "1", "--batch-size", "2", "--eval-every", "1000", "--save-every", "1000", "--max-seconds", "120",
            "--no-compile", "--quiet", "--out", str(tmp_path / "run")]
    if cmd == "train-prior":
        text = recipe_path(name).read_text()
        tokens = ("codebooks" if settings.get("codebook_pattern") == "delay"
                  else "pixels256" if "--levels 256" in text.split("\n", 1)[0] else "pixels2")
        argv = [cmd, "--config", name, "--tokens", str(token_folders[tokens]), *tiny]
    else:
        argv = [cmd, "--config", name, "--limit", "4", "--eval-limit", "2", *tiny]
        if settings.get("dataset") == "spoken-digits" and not shutil.which("espeak-ng"):
            argv += ["--dataset", "tones"]  # the recipe's model and loop, on audio this machine can make
        if settings.get("modality") == "audio":
            argv += ["--clip-seconds", "0.4"]
    assert main(argv) == 0, argv
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
