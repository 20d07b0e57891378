"""Resumable checkpoints of a training run: ``OUT/checkpoints/checkpoint-NNNNNNNN`` folders written by
``accelerator.save_state`` into a temporary folder and renamed into place, so a save cut off halfway is never
mistaken for a checkpoint; the loop position they carry (``LoopState``); and ``--resume``, which loads the
newest one and compares the run's recorded loop settings (``run_config.json``) with this command's."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from vqgen_io import atomic_write_text

from .config import TrainConfig

CKPT_PREFIX = "checkpoint-"
RUN_CONFIG = "run_config.json"  # the loop settings a run was (last) started with, compared on --resume
# On --resume the optimizer's state is restored, so its settings come from the checkpoint; the loop's own
# settings (how long, how big a batch, the schedule's shape) come from the command line.
FROM_CHECKPOINT = ("lr", "betas", "weight_decay")
FROM_COMMAND_LINE = ("steps", "batch_size", "grad_accum", "warmup_steps", "min_lr_ratio", "mixed_precision",
                     "seed", "grad_clip")


class NoCheckpointError(FileNotFoundError):
    """``--resume`` was asked for but there is nothing to resume from."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a permission): the message says where, why, and which
    complete checkpoint a ``--resume`` would continue from; the half-written folder has been removed."""


def _write_failure(e: BaseException, tmp: Path, step: int, out: str | Path) -> str:
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "unexpected pos" in str(e)
    try:
        free = f"{shutil.disk_usage(tmp.parent).free / 2**20:.0f} MiB free now"
    except OSError:
        free = "free space unknown"
    why = "no space left on device" if full else f"{type(e).__name__}: {str(e)[:200]}"
    last = latest_checkpoint(out)
    return (f"could not write the step-{step} checkpoint to {tmp} ({why}; {free} on that file system). "
            f"The partial folder was removed. Last complete checkpoint: {last if last else 'none'}"
            + ("; free some space (or pass another --out) and run again with --resume" if full else ""))


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Only renamed folders count: a save cut off halfway is still a
    ``.tmp-`` folder and is ignored."""
    d = checkpoint_dir(out)
    if not d.is_dir():
        return []
    ckpts = [p for p in d.iterdir()
             if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def latest_checkpoint(out: str | Path) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1] if ckpts else None


def save_checkpoint(accelerator: Accelerator, out: str | Path, step: int, keep: int) -> Path:
    """``accelerator.save_state`` into ``checkpoints/.tmp-checkpoint-N``, then rename to
    ``checkpoint-N`` (atomic), then prune to the last ``keep``. All processes must call this."""
    d = checkpoint_dir(out)
    final = d / f"{CKPT_PREFIX}{step:08d}"
    tmp = d / f".tmp-{CKPT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        d.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
    # torch's zip writer reports a full disk as a RuntimeError "enforce fail ... unexpected pos"
    except (OSError, RuntimeError) as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(_write_failure(e, tmp, step, out)) from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "COMPLETE").write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class LoopState:
    """The loop's position, registered with Accelerate so ``save_state``/``load_state`` carry it."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps taken
        self.batches_seen = 0  # micro-batches consumed since the start (gives epoch and offset)
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "batches_seen": self.batches_seen, "best": self.best}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step, self.batches_seen = int(d["step"]), int(d["batches_seen"])
        self.best = dict(d.get("best", {}))


def resume(accelerator: Accelerator, out: Path, cfg: TrainConfig, state: LoopState) -> Path:
    """Load the newest checkpoint under ``out`` into the prepared model, optimizer, scheduler, RNGs and
    ``state`` (every process calls this), print where the run continues and which loop settings differ from
    the run's. Returns the checkpoint. Raises ``NoCheckpointError`` when there is none, ``ValueError`` when it
    belongs to another model or optimizer."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise NoCheckpointError(
            f"--resume: no checkpoint under {checkpoint_dir(out)}; start without --resume (or check --out)"
        )
    notes = compare_run_config(out, cfg)
    try:
        accelerator.load_state(str(ckpt))
    except (RuntimeError, KeyError, ValueError) as e:  # a state dict of another model or optimizer
        if str(e).startswith("--resume:"):  # a registered object's own message (a stream's process count)
            raise ValueError(f"{e} (checkpoint {ckpt})") from None
        if "custom checkpoint" in str(e).lower():  # Accelerate: another set of registered objects
            raise ValueError(f"--resume: the checkpoint {ckpt} holds the state of other objects than this run "
                             "registers (was --streaming added or removed?); resume with the arguments the run was "
                             "started with, or start a new --out") from None
        raise ValueError(f"--resume: the checkpoint {ckpt} does not fit this run's model or optimizer "
                         f"({str(e)[:300]}); resume with the arguments the run was started with, or start "
                         "a new --out") from None
    accelerator.print(f"resumed from {ckpt} at step {state.step}")
    for note in notes:
        accelerator.print(f"--resume: {note}")
    return ckpt


def _run_settings(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in FROM_CHECKPOINT + FROM_COMMAND_LINE}


def write_run_config(out: Path, cfg: TrainConfig) -> None:
    """Record the loop settings this run started with (``out/run_config.json``; the main process only)."""
    atomic_write_text(out / RUN_CONFIG, json.dumps(_run_settings(cfg), indent=2))


def compare_run_config(out: Path, cfg: TrainConfig) -> list[str]:
    """On --resume: one line per loop setting that differs from the run's ``run_config.json``, saying which
    value is used (optimizer settings: the checkpoint's, restored with its state; the rest: the command
    line's)."""
    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        return []
    saved, now = json.loads(path.read_text()), _run_settings(cfg)
    notes = []
    for k in FROM_CHECKPOINT + FROM_COMMAND_LINE:
        if k in saved and saved[k] != now[k]:
            flag = "--" + k.replace("_", "-")
            if k in FROM_CHECKPOINT:
                notes.append(f"{flag} {now[k]} differs from the checkpoint's {saved[k]}: the checkpoint's "
                             "is used (the optimizer and its schedule are restored); start a new --out to "
                             "change it")
            else:
                notes.append(f"{flag} {now[k]} differs from the run's {saved[k]}: {now[k]} "
                             "(the command line) is used")
    return notes
