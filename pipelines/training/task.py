"""``TrainTask``: what one kind of training supplies to the loop (the model, its loss, evaluation and final
save). The tokenizer and prior tasks that implement it live in ``tasks``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .evaluation import EvalShard


class TrainTask:
    """What one kind of training supplies to the loop. Subclasses set ``model`` and implement the hooks."""

    model: nn.Module
    name: str = "model"

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Scalar loss for one micro-batch, plus scalars to show/log. Return the scalars as (detached)
        tensors, not floats: the loop averages them on the device and reads them only on logging steps (a
        ``float()`` per step would wait for the GPU every step)."""
        raise NotImplementedError

    def count(self, batch: Any) -> int:
        """Units (tokens, pixels, samples) in a batch, for throughput (from shapes: no host sync)."""
        return len(batch[0])

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 shard: EvalShard | None = None) -> dict[str, float]:
        """Held-out metrics, in eval mode under ``torch.no_grad``. ``shard`` None: this process scores the
        whole split; otherwise every process calls this with its ``EvalShard`` and all must return the totals'
        metrics (see ``EvalShard``). ``model`` is the unwrapped model (under FSDP the sharded one: call it,
        not its parts)."""
        return {}

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        """Write the finished model as a save_pretrained folder (the main process only)."""
        model.save_pretrained(out)  # type: ignore[attr-defined]

    def unsharded_copy(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """A plain (not sharded) CPU model of the same configuration holding ``state_dict`` (the full state
        dict gathered from the FSDP-sharded one), for ``save_final`` under FSDP. Tasks that train under FSDP
        implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot save a model trained with FSDP (no unsharded_copy)")

    def on_step(self, step: int) -> None:
        """Called after each optimizer step (e.g. annealing)."""

    def validate_data(self, dataset: Dataset, split: str) -> None:
        """Check a whole split once before training (raise ``ValueError`` naming the problem), so that the
        per-step loss can skip its own value checks."""
