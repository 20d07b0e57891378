"""The tokenizer shipped in the package loads through load_tokenizer, matches its recorded fingerprint, codes
speech at 2.25 kbit/s (5 codebooks of 512 codes at 50 frames/s), and a changed copy is refused."""

import shutil

import pytest
import torch

from tokenizers_vq import load_tokenizer
from tokenizers_vq import pretrained as P


def test_shipped_spoken_digits_tokenizer_loads_and_is_fingerprint_checked(tmp_path, monkeypatch):
    assert "spoken-digits" in P.available()
    tok = P.load_pretrained("spoken-digits")
    assert tok.fingerprint == P.available()["spoken-digits"]["fingerprint"]
    assert tok.config.audio_head == "istft" and tok.num_codebooks == 5 and tok.bitrate == 2250.0
    x = torch.sin(torch.linspace(0, 2000, 16000)).unsqueeze(0) * 0.3
    codes = tok.encode(x)
    assert codes.shape == (1, 50, 5) and tok.decode(codes).shape == (1, 16000)
    # a swapped or damaged copy: same folder layout, other weights
    copy = tmp_path / "pretrained"
    shutil.copytree(P.ROOT, copy)
    changed = load_tokenizer(copy / "spoken_digits")
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    changed.save_pretrained(copy / "spoken_digits")
    monkeypatch.setattr(P, "ROOT", copy)
    with pytest.raises(ValueError, match="were changed or damaged"):
        P.load_pretrained("spoken-digits")
    with pytest.raises(KeyError, match="no pretrained tokenizer named"):
        P.pretrained_path("nope")
