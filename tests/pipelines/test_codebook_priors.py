"""Priors over codebook token grids in the pipelines: train-prior takes num_codebooks from the token folder's
codec record and --codebook-pattern; a prior meets only a codec with its codebooks; delay priors compress."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipelines.data.tokens import TokenHeader, save_tokens
from pipelines.likelihood.compress import compress_grids, decompress_grids
from pipelines.stages import common
from pipelines.stages.common import PriorFolder, resolve_codec
from pipelines.stages.train import train_prior
from pipelines.training.config import TrainConfig
from prior import build_prior
from tokenizers_vq import RawCodec

TINY = dict(n_layer=1, n_head=2, d_model=16)


def _token_folder(path: Path, q: int | None) -> Path:
    """A token folder of (6, 4) grids whose codec record says ``num_codebooks=q`` (None: no such field)."""
    record = RawCodec("image", 256, (1, 6, 4)).record()  # any record: the prior reads vocabulary, grid, codebooks
    record["token_shape"] = [6, 4]
    if q is not None:
        record["num_codebooks"] = q
    t = torch.randint(0, 4, (32, 6, 4), generator=torch.Generator().manual_seed(0))
    lab = torch.zeros(32, dtype=torch.long)
    save_tokens(path, TokenHeader(vocab_size=4, token_shape=(6, 4), modality="audio", dataset="toy", codec=record),
                {"train": (t, lab), "test": (t[:8], lab[:8])})
    return path


@pytest.mark.parametrize("pattern", ["flatten", "delay"])
def test_train_prior_reads_num_codebooks(tmp_path: Path, pattern: str) -> None:
    tok = _token_folder(tmp_path / "tok", q=4)
    cfg = TrainConfig(out=str(tmp_path / "prior"), steps=2, batch_size=4, eval_every=1000, save_every=1000,
                      progress=False)
    train_prior(tok, {"arch": "transformer", "codebook_pattern": pattern, **TINY}, cfg)
    from prior import load_prior

    p = load_prior(str(tmp_path / "prior"))
    assert p.config.num_codebooks == 4 and p.config.codebook_pattern == pattern and p.shape == (6, 4)


def test_train_prior_without_a_codebook_record(tmp_path: Path) -> None:
    tok = _token_folder(tmp_path / "tok", q=None)  # a missing field counts as one codebook
    cfg = TrainConfig(out=str(tmp_path / "prior"), steps=1, batch_size=4, eval_every=1000, save_every=1000,
                      progress=False)
    with pytest.raises(ValueError, match="needs tokens with a codebook axis"):
        train_prior(tok, {"arch": "transformer", "codebook_pattern": "delay", **TINY}, cfg)
    train_prior(tok, {"arch": "transformer", **TINY}, cfg)


def _stub_codec(q: int, fingerprint: str) -> SimpleNamespace:
    return SimpleNamespace(vocab_size=4, num_codebooks=q, fingerprint=fingerprint, token_shape=lambda: (6, q))


@pytest.mark.parametrize("recorded", [None, "aaaa"])
def test_a_codec_with_other_codebooks_is_refused(tmp_path: Path, monkeypatch, recorded: str | None) -> None:
    """A prior trained on q=4 tokens, given a q=2 codec (sample / score / compress all resolve it so)."""
    prior = build_prior(arch="transformer", vocab_size=4, shape=(6, 4), num_codebooks=4, **TINY)
    folder = PriorFolder(tmp_path, prior, {"fingerprint": recorded, "path": None} if recorded else None)
    monkeypatch.setattr(common, "load_codec", lambda *a, **k: _stub_codec(2, "bbbb"))
    with pytest.raises(ValueError, match=r"4 codebooks per position \(prior\) != 2 \(codec\)"):
        resolve_codec(folder, override="q2-codec")


def test_delay_prior_compresses_losslessly() -> None:
    torch.manual_seed(0)
    p = build_prior(arch="transformer", vocab_size=5, shape=(4, 3), num_codebooks=3, codebook_pattern="delay",
                    num_classes=2, **TINY).eval()
    x = torch.randint(0, 5, (5, 4, 3), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, -1, 1, 0])
    data = compress_grids(p, x, labels, chunk_size=2)
    out = decompress_grids(p, data)
    assert torch.equal(out.tokens, x) and torch.equal(out.labels, labels)
