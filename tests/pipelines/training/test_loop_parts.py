"""The training loop's parts on their own: the settings dataclass (its comments are the CLI help), the LR
schedule, the optimizer's parameter groups, the data order, the signal flag, the NaN/inf guard, the running
means, evaluation's mode handling, the loop position, and the import paths that older code uses."""

from __future__ import annotations

import ast
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import tokenize
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch

import pipelines.training.config as config_module
from pipelines.training.checkpoints import LoopState, compare_run_config, write_run_config
from pipelines.training.config import TrainConfig
from pipelines.training.evaluation import evaluate
from pipelines.training.guards import FiniteGuard, TrainingDiverged
from pipelines.training.prepare import make_loader, make_optimizer, warmup_cosine
from pipelines.training.signals import HostFlags, SignalFlag
from pipelines.training.task import TrainTask
from pipelines.training.trackers import RunningMeans

ROOT = Path(__file__).resolve().parents[3]

# Today's settings: CLI flags are generated from these fields, so a renamed field or a changed default is a change
# of the command line.
DEFAULTS = dict(steps=1000, batch_size=64, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=None,
                min_lr_ratio=0.1, grad_clip=1.0, grad_accum=1, mixed_precision="auto", eval_every=500, save_every=500,
                keep_checkpoints=2, log_every=10, seed=0, resume=False, max_seconds=None, num_workers=0,
                eval_batch_size=None, progress=True, compile=False, stop_after_step=None, device=None)


def test_train_config_fields_keep_their_defaults_and_each_has_a_help_comment():
    got = {f.name: f.default for f in fields(TrainConfig)}
    assert got == {"out": MISSING, **DEFAULTS}  # out (the run folder) is the one required setting
    source = Path(config_module.__file__).read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    comments = {t.start[0]: t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            assert node.lineno == node.end_lineno, f"{node.target.id}: one line, so its comment is on it"
            comment = comments.get(node.lineno, "")
            assert len(comment) > 12, f"{node.target.id} has no trailing help comment"


def test_train_config_module_imports_no_torch():
    code = "import sys, pipelines.training.config; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_warmup_cosine_ramps_linearly_then_decays_to_the_floor():
    f = warmup_cosine(4, 14, 0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    after = [f(s) for s in range(4, 15)]
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly down after the warm-up
    g = warmup_cosine(0, 10, 0.0)  # no warm-up: the first step already uses the peak
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5) and g(10) == pytest.approx(0.0, abs=1e-12)


def test_optimizer_decays_matrices_only_skips_frozen_parameters_and_starts_on_the_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)
    opt, sched = make_optimizer(model, TrainConfig(out="x", lr=0.5, weight_decay=0.1, steps=10, warmup_steps=2))
    decay, no_decay = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert sched.get_last_lr() == [0.25, 0.25]  # step 0 of a 2-step warm-up: half the peak
    assert opt.defaults["betas"] == (0.9, 0.99)


class _World:
    """What make_loader reads of an Accelerator."""

    device = torch.device("cpu")
    num_processes = 1
    is_main_process = True


def test_data_order_follows_the_seed_and_a_small_split_is_drawn_with_replacement(caplog):
    data = torch.utils.data.TensorDataset(torch.arange(20))
    order = [torch.cat([b[0] for b in make_loader(data, TrainConfig(out="x", batch_size=4, seed=s), _World())])
             for s in (1, 1, 2)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    assert sorted(order[0].tolist()) == list(range(20))  # one permutation per epoch
    small = torch.utils.data.TensorDataset(torch.arange(3))
    with caplog.at_level("WARNING", logger="vqgen.train"):
        batches = list(make_loader(small, TrainConfig(out="x", batch_size=4, grad_accum=2), _World()))
    assert [len(b[0]) for b in batches] == [4, 4]  # one optimizer step's worth of full batches
    assert "drawn with replacement" in caplog.text


def test_signal_flag_records_the_signal_a_second_ctrl_c_interrupts_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with SignalFlag() as sig:
        assert sig.signum is None
        signal.raise_signal(signal.SIGTERM)  # the process keeps running: the loop checks the flag after its step
        assert sig.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_signal_flag_off_the_main_thread_leaves_signals_alone():
    before, seen = signal.getsignal(signal.SIGTERM), []

    def run() -> None:
        with SignalFlag() as sig:
            seen.append((sig.signum, signal.getsignal(signal.SIGTERM)))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [(None, before)]


class _OneProcess:
    """What the guard, the host flags and evaluation read of an Accelerator in a one-process run."""

    num_processes = 1

    def autocast(self):
        return torch.autocast("cpu", enabled=False)


def test_finite_guard_names_the_first_bad_step_and_the_last_checkpoint():
    guard = FiniteGuard(torch.device("cpu"))
    for step, loss in [(1, 0.5), (2, 0.4)]:
        guard.add(torch.tensor(loss), step, epoch=0)
    assert guard.first_bad(_OneProcess()) is None and guard.check(_OneProcess(), "ckpt") is None
    guard.add(torch.tensor(float("inf")), 3, epoch=1)
    guard.add(torch.tensor(float("nan")), 4, epoch=1)  # a later bad step does not replace the first
    assert guard.first_bad(_OneProcess()) == (3, 1, math.inf)
    error = guard.check(_OneProcess(), "run/checkpoints/checkpoint-00000002")
    assert isinstance(error, TrainingDiverged)
    assert "loss became inf at step 3 (epoch 1)" in str(error) and "checkpoint-00000002" in str(error)
    assert "none (no checkpoint was written yet)" in str(guard.check(_OneProcess(), None))


def test_host_flags_of_one_process_are_its_own():
    assert HostFlags(_OneProcess()).any(True, False) == [True, False]


def test_running_means_average_tensors_and_numbers_and_read_in_order():
    means = RunningMeans()
    means.add({"loss": torch.tensor(1.0), "n": 2})
    means.add({"loss": torch.tensor(2.0), "n": 4})
    assert means.read() == pytest.approx({"loss": 1.1, "n": 2.2})
    assert list(means.read()) == ["loss", "n"]


def test_evaluation_runs_in_eval_mode_without_grad_and_restores_the_mode():
    class Probe(TrainTask):
        def evaluate(self, model, dataset, batch_size, shard=None):
            return {"training": float(model.training), "grad": float(torch.is_grad_enabled()),
                    "batch": batch_size, "sharded": float(shard is not None)}

    model = torch.nn.Linear(2, 2).train()
    got = evaluate(_OneProcess(), Probe(), model, [], 5)
    assert got == {"training": 0.0, "grad": 0.0, "batch": 5, "sharded": 0.0} and model.training


def test_loop_state_round_trips_and_resume_notes_say_which_value_is_used(tmp_path):
    state = LoopState()
    state.step, state.batches_seen, state.best = 7, 19, {"nll": 1.5}
    again = LoopState()
    again.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert (again.step, again.batches_seen, again.best) == (7, 19, {"nll": 1.5})
    assert compare_run_config(tmp_path, TrainConfig(out=str(tmp_path))) == []  # no run_config.json yet
    write_run_config(tmp_path, TrainConfig(out=str(tmp_path), steps=10, betas=(0.9, 0.95)))
    assert compare_run_config(tmp_path, TrainConfig(out=str(tmp_path), steps=10, betas=(0.9, 0.95))) == []
    notes = compare_run_config(tmp_path, TrainConfig(out=str(tmp_path), steps=20, betas=(0.9, 0.95), lr=0.1))
    assert len(notes) == 3  # lr, steps, and warmup_steps (derived from steps)
    assert notes[0].startswith("--lr 0.1 differs from the checkpoint's 0.001: the checkpoint's is used")
    assert "--steps 20 differs from the run's 10: 20 (the command line) is used" in notes


def test_the_old_import_paths_still_work():
    import pipelines.training as package
    import pipelines.training.loop as loop

    for name in loop.__all__:
        assert getattr(loop, name) is not None, name
    for name in package.__all__:
        assert getattr(package, name) is getattr(sys.modules[f"pipelines.training.{package._HOMES[name]}"], name)
    assert loop.TrainConfig is package.TrainConfig is TrainConfig and loop.train is package.train
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


# ---------------------------------------------------------------------------------------------- shift augmentation
def test_token_grid_shift_rolls_reproducibly():
    from pipelines.training.tasks import TokenGridDataset

    grids = torch.arange(3 * 6 * 6).reshape(3, 6, 6)
    ds = TokenGridDataset(grids, torch.zeros(3, dtype=torch.long), shift=2, seed=5)
    a = [ds[i][0] for i in range(3)]
    for g, x in zip(grids, a):  # a roll: the same tokens, moved by at most 2 along each axis
        assert any(torch.equal(torch.roll(g, (dy, dx), (0, 1)), x) for dy in range(-2, 3) for dx in range(-2, 3))
    assert all(torch.equal(x, ds[i][0]) for i, x in enumerate(a))  # same seed, epoch and index: same roll
    ds.set_epoch(1)
    assert any(not torch.equal(x, ds[i][0]) for i, x in enumerate(a))  # another epoch, other rolls
    assert torch.equal(TokenGridDataset(grids, torch.zeros(3)).__getitem__(1)[0], grids[1])  # shift 0: untouched
    with pytest.raises(ValueError, match="image token grids"):
        TokenGridDataset(torch.zeros(2, 10, dtype=torch.long), torch.zeros(2), shift=1)
