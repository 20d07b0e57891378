"""Every worked example in the README runs as written, with tiny step counts and data limits."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def worked_examples() -> list[list[str]]:
    """The `vqgen ...` commands of the README's "Worked examples" code block, as argv lists (comments dropped)."""
    text = README.read_text()
    section = text[text.index("## Worked examples"):]
    block = section[section.index("```bash") + len("```bash"): section.index("```", section.index("```bash") + 7)]
    cmds = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("vqgen "):
            cmds.append(shlex.split(line)[1:])
    return cmds


def shrink(argv: list[str]) -> list[str]:
    """The same command with tiny budgets: 2 steps (a checkpoint each step), 64 training examples, 8 eval examples;
    priors hold out half their 64 grids for the score reference."""
    out = list(argv)
    if "--steps" in out:
        out[out.index("--steps") + 1] = "2"
        out += ["--save-every", "1", "--eval-every", "1000"]
    if "--dataset" in out and out[0] != "score":
        out += ["--limit", "64"]
    if out[0] == "train-tokenizer":
        out += ["--eval-limit", "8"]
    if out[0] == "train-prior" and "--window" not in out:  # 64 examples: hold out half, so the prior still records
        out += ["--reference-fraction", "0.5"]  # a score reference (>= 20); a streams prior makes none
    if out[0] == "demo":
        out += ["--quick"]
    return out + ["--quiet"]


def _inputs(cwd: Path) -> None:
    """digit1.png, digit2.png (32x32 digits) and clip.wav (1.5 s at 22.05 kHz: resampled, two clips) for step 7."""
    import soundfile as sf
    from PIL import Image

    from pipelines.data import DataSpec, load_data

    test = load_data(DataSpec("mnist5k")).test
    for i in (1, 2):
        Image.fromarray((test[i][0][0].numpy() * 255).astype(np.uint8)).save(cwd / f"digit{i}.png")
    t = np.arange(int(1.5 * 22050)) / 22050
    sf.write(cwd / "clip.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 22050)


def test_the_readme_has_worked_examples_for_every_command() -> None:
    used = {argv[0] for argv in worked_examples()}
    assert {"train-tokenizer", "reconstruct", "tokenize", "train-prior", "sample", "score", "compress", "decompress",
            "export", "demo", "codec"} <= used


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~45 s on an idle 2-core machine; generous for a loaded one
def test_every_worked_example_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    for argv in worked_examples():
        argv = shrink(argv)
        argv = [re.sub(r"checkpoint-\d+", lambda _: sorted(p.name for p in (tmp_path / "runs/tok/checkpoints").iterdir())[-1], a)
                for a in argv]
        rc = main(argv)
        assert rc == 0, f"`vqgen {' '.join(argv)}` exited {rc}: {capsys.readouterr().err[-2000:]}"
    assert len(list(Path("runs/sevens").glob("sample_*.png"))) == 20
    assert sorted(p.name for p in Path("runs/decoded").iterdir()) == ["digit1.png", "digit2.png"]
    assert Path("runs/clip-codec.wav").stat().st_size > Path("runs/clip.vqc").stat().st_size > 0
    import soundfile as sf

    wave, rate = sf.read("runs/clip-decoded/clip.wav")
    assert rate == 16000 and len(wave) == 24000  # resampled to the codec's rate, trimmed to the input's length
    assert (Path("exported/mnist-fsq-onnx") / "encoder.onnx").is_file()
