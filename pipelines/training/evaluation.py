"""Held-out evaluation during training: run the task's ``evaluate`` on one process, or split across every
process of a launch (``EvalShard``, ``shard_ranges``, ``forward_count``) with the sums all-reduced."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from .task import TrainTask


@dataclass
class EvalShard:
    """This process's part of an evaluation run by every process of a multi-process training.

    ``rank`` of ``world`` processes; ``reduce`` sums a tensor over the processes (an all-reduce: every process
    gets the total, on the tensor's device). A task's ``evaluate`` scores only its part of the test split (see
    ``shard_ranges``), sums its statistics (sums and counts, never averages), reduces them with ``reduce``,
    and then computes the metrics from the totals: every process returns the same numbers as a 1-process
    evaluation. Every process must run the model the same number of times (``forward_count``), padding with a
    repeated batch whose results it drops: under FSDP each forward all-gathers the parameters, so unequal
    counts would hang.
    """

    rank: int
    world: int
    reduce: Callable[[torch.Tensor], torch.Tensor]


def shard_ranges(n: int, world: int, group_of: Callable[[int], Any] | None = None) -> list[tuple[int, int]]:
    """Split the indices ``[0, n)`` into ``world`` contiguous ``(start, stop)`` ranges of nearly equal size,
    in rank order. ``group_of(i)`` (optional: the file that window i of a long recording belongs to) moves
    each cut forward to the next group boundary, so no group is split between two processes (its score needs
    all of it)."""
    cuts = [0]
    for r in range(1, world):
        c = max(cuts[-1], r * n // world)
        if group_of is not None:
            while 0 < c < n and group_of(c) == group_of(c - 1):
                c += 1
        cuts.append(c)
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))


def forward_count(ranges: list[tuple[int, int]], batch_size: int) -> int:
    """Batches of ``batch_size`` in the largest range: the number of forwards every process runs."""
    return max((math.ceil((b - a) / batch_size) for a, b in ranges), default=0)


def evaluate(accelerator: Accelerator, task: TrainTask, model: nn.Module, test_set: Dataset,
             batch_size: int) -> dict[str, Any]:
    """Held-out metrics (name -> number, as ``task.evaluate`` returns them), the same on every process, in
    eval mode under ``torch.no_grad`` and the run's autocast; ``model``'s train/eval mode is restored
    afterwards. One process scores the whole split; N processes each score their share and all-reduce the sums
    (``EvalShard``), so no process waits idle and nothing runs on one rank alone (under FSDP that would hang
    at the first parameter all-gather). Every process must call this."""
    was = model.training
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        if accelerator.num_processes > 1:
            shard = EvalShard(accelerator.process_index, accelerator.num_processes,
                              lambda t: accelerator.reduce(t, "sum"))
            metrics = task.evaluate(model, test_set, batch_size, shard=shard)
        else:
            metrics = task.evaluate(model, test_set, batch_size)
    model.train(was)
    return metrics
