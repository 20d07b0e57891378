"""Resumable checkpoints of a training run: ``OUT/checkpoints/checkpoint-NNNNNNNN`` folders written by
``accelerator.save_state`` into a temporary folder and renamed into place, so a save cut off halfway is
never mistaken for a checkpoint."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

CKPT_PREFIX = "checkpoint-"


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
    return (f"could not write the step-{step} checkpoint to {tmp} ({why}; {free} on that file system). The partial "
            f"folder was removed. Last complete checkpoint: {last if last else 'none'}"
            + ("; free some space (or pass another --out) and run again with --resume" if full else ""))


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Only renamed folders count: a save cut off halfway is still a
    ``.tmp-`` folder and is ignored."""
    d = checkpoint_dir(out)
    if not d.is_dir():
        return []
    ckpts = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX):].isdigit()]
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
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as "enforce fail ... unexpected pos"
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
