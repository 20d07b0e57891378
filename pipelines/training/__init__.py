"""Training: the one Accelerate loop (``loop.train``) and what tokenizers and priors plug into it (``tasks``).

One module per concern: ``config`` (settings, result), ``task`` (the ``TrainTask`` hooks), ``accelerator``
(device, precision, process group), ``prepare`` (data checks, data order, optimizer and schedule), ``loop``
(the steps), ``evaluation``, ``checkpoints`` (atomic saves, ``--resume``), ``trackers``, ``signals`` and
``guards``.

The main names are re-exported here, imported on first use so that ``import pipelines.training.checkpoints``
(or ``from pipelines.training import TrainConfig``) does not load the whole loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "TrainConfig": "config", "TrainResult": "config", "TrainTask": "task", "train": "loop",
    "EvalShard": "evaluation", "shard_ranges": "evaluation", "forward_count": "evaluation",
    "TrainingDiverged": "guards", "NoCheckpointError": "checkpoints", "CheckpointWriteError": "checkpoints",
    "make_accelerator": "accelerator", "resolve_mixed_precision": "accelerator",
}
__all__ = [
    "CheckpointWriteError", "EvalShard", "NoCheckpointError", "TrainConfig", "TrainResult", "TrainTask",
    "TrainingDiverged", "forward_count", "make_accelerator", "resolve_mixed_precision", "shard_ranges",
    "train",
]

if TYPE_CHECKING:
    from .accelerator import make_accelerator, resolve_mixed_precision
    from .checkpoints import CheckpointWriteError, NoCheckpointError
    from .config import TrainConfig, TrainResult
    from .evaluation import EvalShard, forward_count, shard_ranges
    from .guards import TrainingDiverged
    from .loop import train
    from .task import TrainTask


def __getattr__(name: str) -> Any:
    """A re-exported name, imported from its home module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later look-ups find it without this hook
    return value
