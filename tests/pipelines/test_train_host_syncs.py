"""The training step does not read values back from the device (issue 12, part 2): data is validated once where
it enters, the loop keeps its running averages and NaN guard on the device and reads them on logging steps; and
``--mixed-precision auto`` picks bf16 autocast on CUDA only."""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import pytest
import torch

import pipelines
import prior
import tokenizers_vq
from pipelines.training.accelerator import resolve_mixed_precision
from pipelines.training.config import TrainConfig
from pipelines.training.guards import TrainingDiverged
from pipelines.training.loop import train
from pipelines.training.tasks import PriorTask, TokenGridDataset, TokenizerTask
from prior import build_prior
from tokenizers_vq import build_tokenizer

OUR_CODE = tuple(str(Path(m.__file__).parent) + os.sep for m in (pipelines, prior, tokenizers_vq))
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")  # each waits for a CUDA tensor's value


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread, as in test_distributed.py: the second one's spin-waits made these tiny runs tens of times
    slower on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def reads(monkeypatch) -> collections.Counter:
    """Counts every device-to-host read made directly by vqgen's own code (not by torch, Accelerate or
    vector-quantize-pytorch), keyed by (method, file, line)."""
    seen: collections.Counter = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **kw):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(OUR_CODE):
                seen[(_name, os.path.basename(caller.co_filename), sys._getframe(1).f_lineno)] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


def _tokens(n: int = 64) -> TokenGridDataset:
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (n, 2, 1), generator=g)
    return TokenGridDataset(first.expand(n, 2, 3).contiguous(), torch.randint(0, 2, (n,), generator=g))


def _task(kind: str):
    torch.manual_seed(0)
    if kind == "prior":
        return PriorTask(build_prior(arch="transformer", vocab_size=4, shape=(2, 3), num_classes=2, n_layer=1,
                                     n_head=2, d_model=16), "toy", 6), _tokens()
    tok = build_tokenizer(modality="image", quantizer=kind, image_size=8, hidden_channels=8, latent_dim=8,
                          num_res_blocks=1, fsq_levels=[5, 5], codebook_size=16)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return TokenizerTask(tok, "toy"), torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))


@pytest.mark.parametrize("kind", ["prior", "fsq", "vq"])
def test_steps_between_logging_steps_read_nothing_from_the_device(tmp_path, reads, kind):
    """2 steps and 6 steps (one logging step, the last, in each) make the same reads: none per step."""
    counts = []
    for steps in (2, 6):
        reads.clear()
        task, data = _task(kind)
        train(task, data, None, TrainConfig(out=str(tmp_path / str(steps)), steps=steps, batch_size=8, log_every=100,
                                            save_every=100, progress=False))
        counts.append(dict(reads))
    assert counts[0] == counts[1], counts
    # and with a logging step every 2 steps, each adds the one read of the running averages
    reads.clear()
    task, data = _task(kind)
    train(task, data, None, TrainConfig(out=str(tmp_path / "log2"), steps=6, batch_size=8, log_every=2,
                                        save_every=100, progress=False))
    assert sum(reads.values()) == sum(counts[1].values()) + 2 * 2  # 2 more logging steps, each: guard + averages


def test_tokenizer_data_is_validated_once_and_the_step_skips_the_value_check(tmp_path):
    task, data = _task("fsq")
    bad = data.tensors[0].clone()
    bad[3, 0, 2, 2] = 1.5
    with pytest.raises(ValueError, match=r"toy \[train\]: image tokenizer input must lie in \[0, 1\], got range"):
        train(task, torch.utils.data.TensorDataset(bad, data.tensors[1]), None,
              TrainConfig(out=str(tmp_path), steps=2, batch_size=8, progress=False))
    assert not (tmp_path / "checkpoints").exists()  # refused before any step
    with pytest.raises(ValueError, match=r"toy \[test\]: image tokenizer input contains NaN"):
        nan = data.tensors[0].clone()
        nan[0, 0, 0, 0] = float("nan")
        train(task, data, torch.utils.data.TensorDataset(nan, data.tensors[1]),
              TrainConfig(out=str(tmp_path), steps=2, batch_size=8, progress=False))
    with pytest.raises(ValueError, match="must lie in"):
        task.model(bad[:4])  # the model still checks its input by default
    loss, _ = task.loss(task.model, (bad[:4], None))  # the training step does not (its data was checked)
    assert torch.isfinite(loss)


def test_nan_guard_reads_at_the_next_logging_or_save_step_and_names_the_first_bad_step(tmp_path):
    class NaNFrom(PriorTask):
        def loss(self, model, batch):
            self.calls = getattr(self, "calls", 0) + 1
            loss, shown = super().loss(model, batch)
            return (loss * float("inf") if self.calls >= 3 else loss), shown

    task = NaNFrom(build_prior(arch="lstm", vocab_size=4, shape=(2, 3), lstm_hidden=8), "toy", 6)
    with pytest.raises(TrainingDiverged, match=r"loss became inf at step 3 \(epoch 0\).*none \(no checkpoint"):
        train(task, _tokens(), None, TrainConfig(out=str(tmp_path), steps=20, batch_size=8, log_every=5,
                                                 save_every=100, progress=False))
    assert task.calls == 5  # it ran on to the logging step (no read per step), and saved nothing after the bad step
    assert not (tmp_path / "checkpoints").exists()


def test_mixed_precision_auto_is_bf16_on_cuda_only_and_follows_the_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert TrainConfig(out="x").mixed_precision == "auto"
    assert resolve_mixed_precision("auto", torch.device("cpu")) == "no"
    for explicit in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(explicit, torch.device("cpu")) == explicit
    if torch.cuda.is_available():
        expected = "bf16" if torch.cuda.is_bf16_supported() else "no"
        assert resolve_mixed_precision("auto", torch.device("cuda")) == expected
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch` with a bf16 config
    assert resolve_mixed_precision("auto", torch.device("cpu")) == "bf16"
    assert resolve_mixed_precision("no", torch.device("cuda")) == "no"  # an explicit choice wins
    with pytest.raises(ValueError, match="--mixed-precision must be auto, no, fp16 or bf16, got 'fp8'"):
        TrainConfig(out="x", mixed_precision="fp8")


def test_auto_trains_in_fp32_on_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    task, data = _task("prior")
    train(task, data, None, TrainConfig(out=str(tmp_path), steps=1, batch_size=8, progress=False, device="cpu"))
    assert "autocast" not in capsys.readouterr().out
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    task, data = _task("prior")
    train(task, data, None, TrainConfig(out=str(tmp_path / "b"), steps=1, batch_size=8, progress=False, device="cpu"))
    assert "bf16 autocast" in capsys.readouterr().out
