"""Multi-process training on CPU with torchrun (gloo): the same code path `accelerate launch` uses on GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(nproc: int, *args: str, timeout: int = 240) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), *args] if nproc > 1 else [sys.executable, str(WORKER), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_processes_match_one_process_with_same_global_batch(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _torchrun(2, "prior", str(two), "8", "5")
    _torchrun(1, "prior", str(one), "16", "5")
    r0, r1, single = (load_file(str(p)) for p in (two / "rank0.safetensors", two / "rank1.safetensors",
                                                   one / "rank0.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        torch.testing.assert_close(r0[k], single[k], rtol=0, atol=1e-5, msg=k)
    assert (two / "model.safetensors").is_file()  # the main process wrote the final folder


def test_vq_tokenizer_trains_with_two_processes_and_codebooks_stay_in_sync(tmp_path):
    # k-means initialisation and EMA codebook updates all-reduce across ranks (vector-quantize-pytorch
    # sync_codebook/sync_kmeans); a hang here is the failure its issues #25 and #105 describe.
    out = tmp_path / "vq"
    _torchrun(2, "tokenizer", str(out), "8", "4", timeout=300)
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert "model.quantizer.vq._codebook.embed" in r0, sorted(r0)[:10]  # the codebook is among the compared tensors
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=1e-6, msg=k)
