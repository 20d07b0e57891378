"""The NaN/inf guard: training stops with the first step whose loss was not finite, keeping the last good
checkpoint, without a host sync per step."""

from __future__ import annotations

import torch
from accelerate import Accelerator


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


class FiniteGuard:
    """The NaN/inf guard without a host sync per step: remembers on the device the first micro-batch whose
    loss was not finite (its optimizer step, epoch and value); ``check`` reads that (one sync, gathered over
    the processes) before anything is logged, evaluated or checkpointed, so a checkpoint never holds weights
    from after a bad step."""

    def __init__(self, device: torch.device):
        # step (0: none yet), epoch, loss value
        self.state = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        """Note ``loss`` (a scalar tensor) of a micro-batch of optimizer step ``step`` (1-based) in
        ``epoch``."""
        loss = loss.detach().reshape(()).to(self.state.dtype)
        new = ~torch.isfinite(loss) & (self.state[0] == 0)
        seen = torch.stack([torch.full_like(loss, step), torch.full_like(loss, epoch), loss])
        self.state = torch.where(new, seen, self.state)

    def first_bad(self, accelerator: Accelerator) -> tuple[int, int, float] | None:
        """(step, epoch, loss) of the earliest non-finite loss on any process, or None. Every process must
        call this (a gather)."""
        rows = accelerator.gather(self.state[None]) if accelerator.num_processes > 1 else self.state[None]
        bad = [(int(s), int(e), v) for s, e, v in rows.tolist() if s > 0]
        return min(bad) if bad else None

    def check(self, accelerator: Accelerator, last_checkpoint: str | None) -> TrainingDiverged | None:
        """The error to raise if any process has seen a non-finite loss (naming its step and
        ``last_checkpoint``, the newest one written before it), else None. Every process must call this."""
        hit = self.first_bad(accelerator)
        if hit is None:
            return None
        step, epoch, value = hit
        return TrainingDiverged(
            f"loss became {value} at step {step} (epoch {epoch}); training stopped. "
            f"The last good checkpoint is {last_checkpoint or 'none (no checkpoint was written yet)'}. "
            "Lower --lr, use --mixed-precision no, or check the data for NaN/inf values."
        )
