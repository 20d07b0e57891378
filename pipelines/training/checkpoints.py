"""Resumable checkpoints of a training run: ``OUT/checkpoints/checkpoint-NNNNNNNN`` folders written by
``accelerator.save_state`` into a temporary folder and renamed into place, so a save cut off halfway is
never mistaken for a checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate import Accelerator

CKPT_PREFIX = "checkpoint-"


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
    accelerator.save_state(str(tmp))
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
