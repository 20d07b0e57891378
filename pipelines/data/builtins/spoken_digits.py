"""The ``spoken-digits`` built-in (SC09-like): the ten digits synthesised with espeak-ng, cached as a folder.

Read back through the local audio folder loader: ``(x float32 [clip_samples] in [-1, 1], label int64 0..9)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from tqdm.auto import tqdm

from ..folders import load_audio_folder
from ..spec import DATASETS, BuiltinDataset, DataSpec, Splits

ESPEAK_INSTALL = ("the spoken-digits dataset is synthesised with espeak-ng, which is not installed. Install it "
                  "with `sudo apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS) or "
                  "`sudo dnf install espeak-ng` (Fedora), then run again")
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Accent + voice variant pairs; the last two are held out as the test speakers (SC09 also splits by speaker).
ESPEAK_VOICES = ["en-us", "en-gb+f2", "en-gb-scotland+m3", "en-029+f4", "en-gb-x-rp+m7", "en-us-nyc+f1",
                 "en-us+f3", "en-gb+m4"]
ESPEAK_TEST_VOICES = 2
ESPEAK_SPEEDS = [130, 165, 200]  # words per minute (espeak-ng default 175)
ESPEAK_PITCHES = [35, 50, 65]  # 0-99 (default 50)


def spoken_digits_dir(spec: DataSpec) -> Path:
    """Where the clips at ``spec.sample_rate`` are cached: ``<cache_dir or ~/.cache/vqgen/spoken-digits>/sr<rate>``."""
    base = Path(spec.cache_dir) if spec.cache_dir else Path.home() / ".cache" / "vqgen" / "spoken-digits"
    return base / f"sr{spec.sample_rate}"


def _trim_silence(wave: np.ndarray, rate: int, threshold: float = 0.01, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``threshold``, keeping ``margin_s`` either side: espeak-ng
    pads each word with ~0.3 s of silence, which would push short digits off-centre in 1 s clips."""
    loud = np.flatnonzero(np.abs(wave) > threshold)
    if len(loud) == 0:
        return wave
    m = int(margin_s * rate)
    return wave[max(0, loud[0] - m):loud[-1] + m + 1]


def generate_spoken_digits(spec: DataSpec) -> Path:
    """Synthesise the ten digits in every voice x speed x pitch with espeak-ng into
    ``<cache>/sr<rate>/{train,test}/<digit>/<voice>_<speed>_<pitch>.wav`` (16-bit, ``spec.sample_rate``).
    Done once: the folder is built under a temporary name and renamed when complete."""
    out = spoken_digits_dir(spec)
    if (out / "train").is_dir() and (out / "test").is_dir():
        return out
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(ESPEAK_INSTALL)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(d, v, s, p) for d in range(10) for v in ESPEAK_VOICES for s in ESPEAK_SPEEDS for p in ESPEAK_PITCHES]
    test_voices = set(ESPEAK_VOICES[-ESPEAK_TEST_VOICES:])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".spoken-digits-") as tmp:
        tmp_root = Path(tmp) / "data"
        for d, voice, speed, pitch in tqdm(jobs, desc="synthesising spoken digits (espeak-ng)", unit="clip"):
            raw = Path(tmp) / "raw.wav"
            cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), DIGIT_WORDS[d]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0 or not raw.is_file():
                raise RuntimeError(f"espeak-ng failed on {' '.join(cmd)}: {res.stderr.strip()}")
            arr, rate = sf.read(str(raw), dtype="float32", always_2d=True)
            wave = torch.from_numpy(arr.mean(1))
            if rate != spec.sample_rate:
                wave = AF.resample(wave, rate, spec.sample_rate)
            clip = _trim_silence(wave.clamp(-1, 1).numpy(), spec.sample_rate)
            split = "test" if voice in test_voices else "train"
            dest = tmp_root / split / str(d) / f"{voice.replace('+', '_')}_{speed}_{pitch}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(dest), clip, spec.sample_rate, subtype="PCM_16")
        if not out.exists():  # another process may have finished first; theirs is as good as ours
            os.replace(tmp_root, out)
    return out


def load_spoken_digits(spec: DataSpec) -> Splits:
    """The ``spoken-digits`` built-in (SC09-like): 10 classes '0'..'9'; 6 train voices, 2 held-out test
    voices, 3 speeds x 3 pitches each (540 train, 180 test clips), read back as a local folder."""
    root = generate_spoken_digits(spec)
    folder_spec = DataSpec(**{**spec.__dict__, "name": str(root), "train_split": "train", "test_split": "test"})
    return load_audio_folder(folder_spec)


@DATASETS.register("spoken-digits")
class SpokenDigits(BuiltinDataset):
    modality = "audio"
    description = "the ten English digits spoken by espeak-ng in 8 voices, 3 speeds and 3 pitches (2 voices held out); generated once into a cache; needs espeak-ng"
    load = staticmethod(load_spoken_digits)
