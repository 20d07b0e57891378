"""Tokenizers shipped inside the package, loaded through the normal ``load_tokenizer`` path.

A speech codec takes longer to train than a demo can wait, so the package carries a small pretrained
spoken-digits tokenizer (trained by ``python -m bench.speech_codec --install``; its command, data and training
time are in docs/BENCHMARKS.md). ``load_pretrained(name)`` checks the folder's fingerprint against the one
recorded here, so a damaged or swapped file is an error, not a silently different codec.
"""

from __future__ import annotations

import json
from pathlib import Path

from .codec import Codec
from .tokenizer import load_tokenizer

ROOT = Path(__file__).parent / "pretrained"


def available() -> dict[str, dict[str, str]]:
    """name -> its record (``folder``, ``fingerprint``, ``trained_by``, ``data``), from ``pretrained/index.json``."""
    index = ROOT / "index.json"
    if not index.is_file():
        return {}
    return json.loads(index.read_text())


def pretrained_path(name: str) -> Path:
    """The folder of the shipped tokenizer ``name`` (e.g. ``"spoken-digits"``); ``KeyError`` names the choices."""
    records = available()
    if name not in records:
        raise KeyError(f"no pretrained tokenizer named {name!r}; shipped: {sorted(records) or 'none'}")
    return ROOT / records[name]["folder"]


def load_pretrained(name: str, map_location: str = "cpu") -> Codec:
    """Load the shipped tokenizer ``name`` and check its fingerprint (config + weights) against the index."""
    record = available().get(name)
    path = pretrained_path(name)
    codec = load_tokenizer(path, map_location=map_location)
    if codec.fingerprint != record["fingerprint"]:
        raise ValueError(
            f"the pretrained tokenizer in {path} has fingerprint {codec.fingerprint}, but the package recorded "
            f"{record['fingerprint']}: the files were changed or damaged; reinstall vqgen, or retrain it with "
            f"`{record.get('trained_by', 'python -m bench.speech_codec --install')}`")
    return codec
