"""The shared training loop: learning, checkpoints, resume, signals, NaN guard."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.training.checkpoints import NoCheckpointError, latest_checkpoint, list_checkpoints
from pipelines.training.config import TrainConfig
from pipelines.training.guards import TrainingDiverged
from pipelines.training.loop import train
from pipelines.training.task import TrainTask
from pipelines.training.tasks import PriorTask, TokenGridDataset, TokenizerTask
from prior import build_prior
from tokenizers_vq import build_tokenizer


def _token_data(n: int = 64, seed: int = 0) -> TokenGridDataset:
    g = torch.Generator().manual_seed(seed)
    # a learnable rule: each row repeats its first token
    first = torch.randint(0, 4, (n, 2, 1), generator=g)
    return TokenGridDataset(first.expand(n, 2, 3).contiguous(), torch.randint(0, 2, (n,), generator=g))


def _prior():
    return build_prior(arch="lstm", vocab_size=4, shape=(2, 3), lstm_hidden=16, lstm_layers=1)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=6, batch_size=8, lr=1e-2, eval_every=3, save_every=2, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_prior_training_lowers_loss_and_writes_folder(tmp_path):
    data = _token_data()
    prior = _prior()
    before = -prior.log_prob(data.tokens).mean().item()
    res = train(PriorTask(prior, "toy", dims_per_input=6), data, data, _cfg(tmp_path, steps=40, eval_every=40))
    after = -prior.log_prob(data.tokens).mean().item()
    assert res.status == "finished" and res.step == 40
    assert after < before - 1.0
    for f in ("config.json", "model.safetensors", "README.md", "metrics.json", "train_log.csv"):
        assert (tmp_path / f).is_file(), f
    assert res.metrics["bits_per_token"] == pytest.approx(res.metrics["nll_nats"] / math.log(2) / 6)
    assert len(list_checkpoints(tmp_path)) <= 2  # pruned to keep_checkpoints


def test_tokenizer_training_lowers_loss(tmp_path):
    x = torch.rand(32, 1, 8, 8) * 0.2 + torch.linspace(0, 0.8, 8).view(1, 1, 1, 8)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long))
    tok = build_tokenizer(modality="image", quantizer="fsq", image_size=8, hidden_channels=8, latent_dim=8,
                          num_res_blocks=1, fsq_levels=[5, 5])
    before = tok(x)
    train(TokenizerTask(tok, "toy"), ds, ds, _cfg(tmp_path, steps=30, lr=3e-3, eval_every=30))
    tok.train()
    after = tok(x)
    # the loss is a Bernoulli cross-entropy with a floor (the targets' own entropy), so judge it and the MSE
    assert after.loss.item() < before.loss.item() - 0.02
    assert after.metrics["mse"].item() < 0.5 * before.metrics["mse"].item()


@pytest.mark.parametrize("kind", ["prior", "tokenizer"])
def test_stop_and_resume_equals_uninterrupted(tmp_path, kind):
    def make():
        if kind == "prior":
            return PriorTask(_prior(), "toy", 6), _token_data(), _token_data(16, 1)
        x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(5))
        ds = torch.utils.data.TensorDataset(x, torch.zeros(24, dtype=torch.long))
        tok = build_tokenizer(modality="image", quantizer="fsq", image_size=8, hidden_channels=8, latent_dim=8,
                              num_res_blocks=1, fsq_levels=[5, 5])
        return TokenizerTask(tok, "toy"), ds, ds

    torch.manual_seed(0)
    task, tr, te = make()
    full = train(task, tr, te, _cfg(tmp_path / "full", steps=7))  # 64/8 = 8 batches per epoch: crosses no epoch
    assert full.status == "finished" and full.step == 7
    torch.manual_seed(0)
    task, tr, te = make()
    stopped = train(task, tr, te, _cfg(tmp_path / "cut", steps=7, stop_after_step=3))
    assert stopped.status == "preempted" and stopped.step == 3
    assert latest_checkpoint(tmp_path / "cut").name == "checkpoint-00000003"
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    torch.manual_seed(123)  # resume must not depend on the caller's RNG: the checkpoint restores it
    task, tr, te = make()
    resumed = train(task, tr, te, _cfg(tmp_path / "cut", steps=7, resume=True))
    assert resumed.status == "finished" and resumed.step == 7
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_across_epoch_boundary(tmp_path):
    torch.manual_seed(0)
    full = tmp_path / "full"
    train(PriorTask(_prior(), "toy", 6), _token_data(24), None, _cfg(full, steps=8))  # 3 batches per epoch
    torch.manual_seed(0)
    cut = tmp_path / "cut"
    train(PriorTask(_prior(), "toy", 6), _token_data(24), None, _cfg(cut, steps=8, stop_after_step=4))
    train(PriorTask(_prior(), "toy", 6), _token_data(24), None, _cfg(cut, steps=8, resume=True))
    a, b = _weights(full), _weights(cut)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_resume_without_checkpoint_says_so(tmp_path):
    with pytest.raises(NoCheckpointError, match="no checkpoint"):
        train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, resume=True))


def test_half_written_checkpoint_is_never_latest(tmp_path):
    train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=4))
    good = latest_checkpoint(tmp_path)
    # a save cut off halfway leaves only the temporary folder
    (tmp_path / "checkpoints" / ".tmp-checkpoint-00000009").mkdir()
    (tmp_path / "checkpoints" / ".tmp-checkpoint-00000009" / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path) == good
    res = train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=6, resume=True))
    assert res.step == 6


class _NaNAfter(TrainTask):
    name = "nan"

    def __init__(self, at: int):
        self.model = torch.nn.Linear(2, 1)
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        out = model(batch[0]).pow(2).mean()
        return (out * float("nan") if self.calls >= self.at else out), {}

    def save_final(self, model, out, metrics):  # pragma: no cover - never reached
        raise AssertionError("a diverged run must not save a final model")


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    ds = torch.utils.data.TensorDataset(torch.randn(16, 2), torch.zeros(16))
    with pytest.raises(TrainingDiverged, match=r"at step 5.*checkpoint-00000004"):
        train(_NaNAfter(5), ds, None, _cfg(tmp_path, steps=10, batch_size=4))
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000004"
    assert load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))["weight"].isfinite().all()


def test_bad_settings_are_clear(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(out=str(tmp_path), steps=0)
    with pytest.raises(ValueError, match="mixed-precision"):
        TrainConfig(out=str(tmp_path), mixed_precision="fp8")


def test_a_split_smaller_than_a_batch_trains_on_batches_drawn_with_replacement(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="vqgen.train"):
        res = train(PriorTask(_prior(), "toy", 6), _token_data(4), None, _cfg(tmp_path, batch_size=8, steps=3))
    assert res.status == "finished" and res.step == 3
    assert any("fewer than --batch-size 8" in r.getMessage() and "replacement" in r.getMessage() for r in caplog.records)


def test_bf16_mixed_precision_trains_on_cpu_and_fp16_is_refused(tmp_path):
    prior = _prior()
    res = train(PriorTask(prior, "toy", 6), _token_data(), _token_data(16, 1),
                _cfg(tmp_path / "bf16", steps=4, eval_every=4, mixed_precision="bf16"))
    assert res.status == "finished" and math.isfinite(res.metrics["nll_nats"])
    assert all(p.dtype == torch.float32 for p in prior.parameters())  # autocast, weights stay float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a GPU"):
            train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path / "fp16", mixed_precision="fp16"))


def test_tokenizer_task_crops_audio_to_random_windows_and_checks_the_length():
    tok = build_tokenizer(modality="audio", autoencoder="mulaw", quantizer="fsq", hidden_channels=4, latent_dim=4, fsq_levels=[3, 3],
                          clip_samples=1024)
    task = TokenizerTask(tok, "tones", crop_samples=256)
    x = torch.arange(3 * 1024, dtype=torch.float32).view(3, 1024)
    torch.manual_seed(0)
    y = task.crop(x)
    assert y.shape == (3, 256)
    starts = y[:, 0] - x[:, 0]
    assert torch.equal(y, x[:, :1] + starts[:, None] + torch.arange(256))  # contiguous windows of each clip
    assert len(set(starts.tolist())) > 1  # independent offsets per clip
    torch.manual_seed(0)
    assert torch.equal(task.crop(x), y)  # torch's RNG: seeded runs repeat
    assert task.crop(x[:, :200]).shape == (3, 200)  # shorter clips pass through whole
    assert TokenizerTask(tok, "tones").crop(x) is x
    with pytest.raises(ValueError, match="multiple of downsample=64: use 256"):
        TokenizerTask(tok, "tones", crop_samples=300)
    image = build_tokenizer(modality="image", quantizer="fsq", image_size=8, hidden_channels=4, latent_dim=4,
                            fsq_levels=[3, 3])
    with pytest.raises(ValueError, match="audio tokenizers only"):
        TokenizerTask(image, "mnist", crop_samples=256)


def test_prior_data_is_validated_once_before_training_and_the_step_skips_value_checks(tmp_path):
    prior = _prior()
    bad = _token_data()
    bad.tokens[5, 1, 2] = 4  # vocab is 4
    with pytest.raises(ValueError, match=r"toy-folder \[train\]: tokens must lie in \[0, 4\), got range \[0, 4\]"):
        train(PriorTask(prior, "toy-folder", dims_per_input=6), bad, None, _cfg(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # refused before any step: nothing written
    good = _token_data()
    with pytest.raises(ValueError, match=r"\[test\]"):
        train(PriorTask(prior, "toy-folder", dims_per_input=6), good, bad, _cfg(tmp_path))
    # A plain (tokens, label) dataset (not a TokenGridDataset) is checked by one pass.
    plain = [(bad.tokens[i], bad.labels[i]) for i in range(len(bad))]
    with pytest.raises(ValueError, match="tokens must lie in"):
        PriorTask(prior, "list", dims_per_input=6).validate_data(plain, "train")
    # The training step itself does no value check (its data was checked above): no host sync per step.
    with pytest.raises(ValueError, match="must lie in"):
        prior.loss(bad.tokens)
    wrapped = PriorTask(prior, "toy", dims_per_input=6).model
    with pytest.raises(IndexError):  # reaches the embedding: proof the range check was skipped
        wrapped(bad.tokens)


def _save_tokens_v2(out, header, splits):
    """A format-2 token folder as vqgen wrote it before shards (one int32 file per split, nothing checked)."""
    import dataclasses
    import json

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name, (tokens, labels) in splits.items():
        save_file({"tokens": tokens.to(torch.int32).contiguous(), "labels": labels.long()}, out / f"{name}.safetensors")
    d = dataclasses.asdict(header) | {"token_shape": list(header.token_shape), "format_version": 2}
    d.pop("shards")
    (out / "tokens.json").write_text(json.dumps(d))


def test_token_folder_is_range_checked_when_written_and_loaded(tmp_path):
    """Shards (format 3) are checked when written (their range goes into the manifest); format-2 files, which
    were not, are checked when loaded."""
    from pipelines.data.tokens import TokenHeader, load_tokens, save_tokens
    from tokenizers_vq import RawCodec

    rec = RawCodec("image", 256, (1, 2, 3)).record()
    header = TokenHeader(vocab_size=4, token_shape=(2, 3), modality="image", dataset="toy", codec=rec)
    data = _token_data()
    save_tokens(tmp_path / "v3", header, {"train": (data.tokens, data.labels)})
    tokens, labels = load_tokens(tmp_path / "v3", "train")
    assert torch.equal(tokens, data.tokens) and torch.equal(labels, data.labels)
    bad = data.tokens.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"\[train\]: tokens range \[0, 9\] lies outside the vocabulary \[0, 4\)"):
        save_tokens(tmp_path / "v3", header, {"train": (bad, data.labels)})
    other = TokenHeader(vocab_size=4, token_shape=(3, 2), modality="image", dataset="toy", codec=rec)
    with pytest.raises(ValueError, match=r"shape \(2, 3\), but the header says \(3, 2\)"):
        save_tokens(tmp_path / "v3", other, {"train": (data.tokens, data.labels)})

    _save_tokens_v2(tmp_path / "v2", header, {"train": (data.tokens, data.labels)})
    tokens, labels = load_tokens(tmp_path / "v2", "train")
    assert torch.equal(tokens, data.tokens) and torch.equal(labels, data.labels)
    _save_tokens_v2(tmp_path / "v2", header, {"train": (bad, data.labels)})
    with pytest.raises(ValueError, match=r"train.safetensors: tokens range \[0, 9\] lies outside the vocabulary"):
        load_tokens(tmp_path / "v2", "train")
    _save_tokens_v2(tmp_path / "v2", other, {"train": (data.tokens, data.labels)})
    with pytest.raises(ValueError, match=r"shape \(2, 3\), but tokens.json says \(3, 2\)"):
        load_tokens(tmp_path / "v2", "train")


def test_full_disk_during_a_checkpoint_says_what_happened_and_cleans_up(tmp_path, monkeypatch):
    """A checkpoint write that fails with ENOSPC: a CheckpointWriteError naming the cause, the path and the last
    complete checkpoint; no .tmp- folder left behind; the earlier checkpoint still resumes."""
    import errno

    from accelerate import Accelerator

    from pipelines.training.checkpoints import CheckpointWriteError

    train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=2))
    good = latest_checkpoint(tmp_path)
    real = Accelerator.save_state

    def full(self, path, *a, **kw):
        real(self, path, *a, **kw)  # write part of it, as a disk filling up would, then fail
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full)
    with pytest.raises(CheckpointWriteError, match="no space left on device") as e:
        train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=6, resume=True))
    assert str(good) in str(e.value) and "--resume" in str(e.value)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(Accelerator, "save_state", real)
    assert train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=6, resume=True)).step == 6


def test_resume_with_other_loop_settings_says_which_value_is_used(tmp_path, capsys):
    train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=4))
    capsys.readouterr()
    train(PriorTask(_prior(), "toy", 6), _token_data(), None, _cfg(tmp_path, steps=6, lr=5e-3, resume=True))
    out = capsys.readouterr().out
    assert "--lr 0.005 differs from the checkpoint's 0.01: the checkpoint's is used" in out
    assert "--steps 6 differs from the run's 4: 6 (the command line) is used" in out


def test_resume_with_another_architecture_names_the_fields(tmp_path, capsys):
    """Through the CLI: train-prior --resume with another --arch / size is refused, naming each field."""
    from pipelines.cli import main
    from pipelines.data.tokens import TokenHeader, save_tokens

    data = _token_data(32)
    header = TokenHeader(vocab_size=4, token_shape=(2, 3), modality="image", dataset="toy",
                         codec={"input_shape": [1, 8, 12]}, counts={"train": 32, "test": 32})
    save_tokens(tmp_path / "tok", header, {"train": (data.tokens, data.labels), "test": (data.tokens, data.labels)})
    base = ["train-prior", "--tokens", str(tmp_path / "tok"), "--out", str(tmp_path / "p"), "--steps", "2",
            "--batch-size", "8", "--quiet"]
    assert main(base + ["--arch", "lstm", "--lstm-hidden", "16"]) == 0
    capsys.readouterr()
    assert main(base + ["--arch", "transformer", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "arch: 'lstm' in the run, 'transformer' now" in err and "another prior" in err
