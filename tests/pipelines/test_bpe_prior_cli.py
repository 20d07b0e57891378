"""A prior trained on BPE-merged tokens through the CLI: `vqgen sample` decodes its samples back through the merges
and the codec with no extra flags; score and compress, which need codec tokens, refuse it clearly."""

from __future__ import annotations

import json

from pipelines.cli import main


def test_bpe_prior_samples_through_the_cli_and_score_refuses(tmp_path, capsys) -> None:
    tok, bpe, merged, prior = (tmp_path / n for n in ("tok", "bpe", "merged", "prior"))
    data = ["--dataset", "mnist5k", "--limit", "120"]
    assert main(["tokenize", "--raw", "--levels", "2", *data, "--out", str(tok), "--quiet"]) == 0
    assert main(["bpe", "train", "--tokens", str(tok), "--vocab", "24", "--out", str(bpe), "--quiet"]) == 0
    assert main(["tokenize", "--raw", "--levels", "2", *data, "--bpe", str(bpe), "--out", str(merged), "--quiet"]) == 0
    assert main(["train-prior", "--tokens", str(merged), "--arch", "transformer", "--out", str(prior), "--steps", "3",
                 "--batch-size", "8", "--d-model", "16", "--n-layer", "1", "--quiet"]) == 0
    assert (prior / "bpe" / "bpe.json").is_file()  # the merges travel with the prior
    out = tmp_path / "samples"
    assert main(["sample", "--prior", str(prior), "--n", "3", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "samples.json").read_text())
    assert summary["token_shape"] == [32, 32] and summary["vocab_size"] == 2  # the codec's grid, not merged ids
    assert 0 <= summary["bpe_length_mismatches"] <= 3
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    tokens = json.loads((out / "tokens.json").read_text())
    assert len(tokens) == 3 and len(tokens[0]) == 32 and all(v in (0, 1) for row in tokens[0] for v in row)
    capsys.readouterr()
    assert main(["score", "--prior", str(prior), *data, "--out", str(tmp_path / "s.csv"), "--quiet"]) != 0
    assert "models BPE-merged sequences" in capsys.readouterr().err
