"""bench/vs_transformers.py: its quick mode times our Transformer prior and Hugging Face GPT-2 once each and
reports the three ratios (training step, sampling at batch 1 and 16)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import vs_transformers

pytest.importorskip("transformers")  # the GPT-2 peer (the dev extra)


def test_bench_quick_mode_reports_three_ratios(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "vs.json"
    vs_transformers.main(["--quick", "--json", str(out)])
    assert torch.get_num_threads() == threads  # the bench restores the caller's thread count
    res = json.loads(out.read_text())
    assert set(res["ratios"]) == {"train", "sample_b1", "sample_b16"}
    for k, r in res["ratios"].items():
        assert math.isfinite(r) and r > 0, k
        for who in ("ours", "hf"):
            assert len(res["seconds"][k][who]) == 1 and res["seconds"][k][who][0] > 0
    assert res["params"]["ours"] > 0 and res["params"]["hf"] > 0
    assert res["machine"]["torch_threads"] == 1
