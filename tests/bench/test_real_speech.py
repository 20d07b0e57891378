"""bench/real_speech.py --quick: the folders are built from the Debian packages' recordings (no held-out speaker in
training, non-speech prompts left out), vqgen's default audio tokenizer trains through the command line for 2 steps,
and every held-out recording is scored for vqgen and Codec2 2400. Skipped where the packages are not installed.
The scores themselves are not checked (2 steps of training say nothing)."""

from __future__ import annotations

import math

import pytest

from bench import real_speech as rs


def _packages_or_skip() -> None:
    try:
        rs.check_packages(("2400",))
    except rs.MissingData as e:
        pytest.skip(str(e))


def test_non_speech_prompts_are_left_out_by_name():
    for name in ("beep.wav", "silence/3.wav", "ascending-2tone.wav", "tt-monkeys.wav"):
        assert rs.NON_SPEECH.search(name)
    for name in ("hello-world.wav", "digits/1.wav", "tt-weasels.wav", "vm-beeps-ok.wav"):
        assert not rs.NON_SPEECH.search(name)


def test_missing_packages_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(rs, "ASTERISK", tmp_path / "nowhere")
    with pytest.raises(rs.MissingData, match="apt-get install codec2 codec2-examples asterisk-core-sounds-en-wav"):
        rs.check_packages(("2400",))


def test_quick_run_trains_by_default_and_scores_held_out_speakers(tmp_path):
    _packages_or_skip()
    res = rs.main(["--quick", "--work", str(tmp_path), "--codec2-modes", "2400"])
    train = {d["name"] for d in res["data"]["train"]}
    held = [d["name"] for d in res["data"]["heldout"]]
    assert train == set(rs.TRAIN_VOICES) and not train & set(held)
    assert held[0] == rs.HELDOUT_VOICE[0] and len(held) == 3
    assert all(0 < d["seconds"] <= 20 for d in res["data"]["train"])
    (run,) = res["vqgen"]
    # the default command: only the dataset, the run folder, a time budget and a seed (and --steps in --quick)
    assert run["command"].split("train-tokenizer ")[1].split() == [
        "--modality", "audio", "--dataset", "WORK/train", "--out", "WORK/run_0", "--max-seconds", "60", "--seed", "0",
        "--steps", "2"]
    assert run["steps"] == 2 and run["tokenizer"]["kbps"] == 2.25 and len(run["tokenizer"]["usage"]) == 5
    (c2,) = res["codec2"]
    for row in (run, c2):
        assert set(row["stoi"]) == set(held) and all(0 < v <= 1 for v in row["stoi"].values())
        assert math.isclose(row["stoi_mean"], sum(row["stoi"].values()) / len(held), abs_tol=1e-3)
    assert c2["kbps"] == 2.4 and 0 <= c2["delay_ms"] <= 60
    assert "| **mean** |" in rs.markdown(res)
    assert (tmp_path / "run_0" / "bench_train.json").is_file()
