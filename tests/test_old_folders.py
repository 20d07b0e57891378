"""Folders saved by vqgen's format-1 code (tests/fixtures/v1, written by main at fa9f99e) still load with today's
code and give the same fingerprints, tokens, reconstructions, likelihoods and samples; its compressed file still
decodes to the same images."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from pipelines.data.tokens import load_token_header, load_tokens
from prior import load_prior
from tokenizers_vq import load_tokenizer
from vqgen_io import fingerprint_module

V1 = Path(__file__).parent / "fixtures" / "v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _tokenizer_input(tok) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    c = tok.config
    if str(tok.modality) == "image":
        return torch.rand(2, c.channels, c.image_size, c.image_size, generator=g)
    t = torch.arange(c.clip_samples) / 16000.0
    x = torch.stack([0.5 * torch.sin(2 * torch.pi * 440 * t), 0.3 * torch.sin(2 * torch.pi * 220 * t)])
    return x + 0.05 * torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("name", sorted(EXPECTED["tokenizers"]))
def test_v1_tokenizer_folders(name):
    exp = EXPECTED["tokenizers"][name]
    tok = load_tokenizer(V1 / "tokenizers" / name)
    assert tok.fingerprint == exp["fingerprint"]
    x = _tokenizer_input(tok)
    tokens = tok.encode(x)
    assert tokens.tolist() == exp["tokens"]
    recon = tok.decode(tokens)
    assert float(recon.double().sum()) == pytest.approx(exp["recon_sum"], rel=1e-4, abs=1e-3)
    assert float(recon.double().abs().sum()) == pytest.approx(exp["recon_abs_sum"], rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("name", sorted(EXPECTED["priors"]))
def test_v1_prior_folders(name):
    exp = EXPECTED["priors"][name]
    p = load_prior(str(V1 / "priors" / name))
    assert fingerprint_module(p, p.config) == exp["fingerprint"]
    tokens = torch.tensor(exp["tokens"])
    labels = None if exp["labels"] is None else torch.tensor(exp["labels"])
    assert p.log_prob(tokens, labels).tolist() == pytest.approx(exp["log_prob"], rel=1e-5, abs=1e-5)
    s = p.sample(3, labels=None if labels is None else labels[:3], generator=torch.Generator().manual_seed(3))
    assert s.tolist() == exp["samples"]


@pytest.mark.parametrize("name", sorted(EXPECTED["raw"]))
def test_v1_raw_codec_folders(name):
    assert load_tokenizer(V1 / "raw" / name).fingerprint == EXPECTED["raw"][name]["fingerprint"]


def test_v1_token_and_prior_folders_and_compressed_file(tmp_path, capsys):
    run = V1 / "run"
    header = load_token_header(run / "tokens")
    assert header.counts == EXPECTED["run"]["tokens_header"]["counts"]
    tokens, labels = load_tokens(run / "tokens", "test")
    assert tuple(tokens.shape) == (16, 16, 16) and labels.shape == (16,)
    p = load_prior(str(run / "prior"))
    assert fingerprint_module(p, p.config) == EXPECTED["run"]["prior_fingerprint"]
    prior_dir = tmp_path / "prior"  # a copy: commands must not write into the fixture
    shutil.copytree(run / "prior", prior_dir)
    args = ["decompress", "--prior", str(prior_dir), str(run / "digits.vqz"), "--out", str(tmp_path / "d"), "--quiet"]
    if torch.backends.cpu.get_cpu_capability() == "AVX2":  # the file was compressed with AVX2 kernels
        assert main(args) == 0
    else:
        # Kernels of another instruction set (AVX-512) round differently: the decoder must say so and name the fix,
        # and the fix must decode the file exactly.
        rc = main(args)
        if rc != 0:
            assert "ATEN_CPU_CAPABILITY=avx2" in capsys.readouterr().err
            env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                   "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
            proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True,
                                  text=True, cwd=Path(__file__).parent.parent)
            assert proc.returncode == 0, proc.stderr
    got = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in sorted((tmp_path / "d").iterdir())}
    assert got == EXPECTED["run"]["decoded"]


V2 = Path(__file__).parent / "fixtures" / "v2"
EXPECTED_V2 = json.loads((V2 / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED_V2))
def test_v2_tokenizer_folders_keep_their_fingerprints(name):
    """Format-2 folders saved before settings were added to their sections (vq's codebook_dim and cosine): the
    same fingerprint, tokens and reconstruction with today's code (tests/fixtures/make_v2_fixtures.py)."""
    exp = EXPECTED_V2[name]
    tok = load_tokenizer(V2 / "tokenizers" / name)
    assert tok.fingerprint == exp["fingerprint"]
    x = torch.rand(2, *tok.input_shape, generator=torch.Generator().manual_seed(1))
    tokens = tok.encode(x)
    assert tokens.tolist() == exp["tokens"]
    assert float(tok.decode(tokens).double().sum()) == pytest.approx(exp["recon_sum"], rel=1e-5)


TOKENS_V2 = Path(__file__).parent / "fixtures" / "tokens_v2"


def test_v2_token_folder_reads_the_same_and_converts_to_shards(tmp_path):
    """A format-2 token folder (one int32 file per split, tests/fixtures/make_tokens_v2_fixture.py) loads as it did;
    written again by today's save_tokens it becomes uint16 shards that load to the same grids."""
    from pipelines.data.tokens import FORMAT_VERSION, check_token_folder, save_tokens

    expected = json.loads((TOKENS_V2 / "expected.json").read_text())
    header = load_token_header(TOKENS_V2)
    assert header.format_version == 2 and not header.shards
    assert check_token_folder(TOKENS_V2) == {"train": 40, "test": 10}
    loaded = {}
    for split, exp in expected.items():
        tokens, labels = load_tokens(TOKENS_V2, split)
        assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64 and list(tokens.shape) == exp["shape"]
        assert _digest(tokens) == exp["tokens"] and _digest(labels) == exp["labels"]
        loaded[split] = (tokens, labels)
    h3 = save_tokens(tmp_path, header, loaded, rows_per_shard=16)
    assert h3.format_version == FORMAT_VERSION == 3 and len(h3.shards["train"]["files"]) == 3
    assert h3.shards["train"]["dtype"] == "uint16"
    for split, exp in expected.items():
        tokens, labels = load_tokens(tmp_path, split)
        assert _digest(tokens.materialize()) == exp["tokens"] and _digest(labels.materialize()) == exp["labels"]
