"""What the streaming tests train: a one-weight model whose loss records what each batch held, so a test can
compare the items an interrupted and resumed run trained on with an uninterrupted run's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipelines.training.task import TrainTask


def labels_of(x: torch.Tensor, y: torch.Tensor) -> list[Any]:
    """The batch's labels (the tests' row numbers)."""
    return [int(v) for v in y]


class Recorder(TrainTask):
    """Records ``record(x, y)`` of every batch it trains on in ``seen`` (default: the labels)."""

    name = "recorder"

    def __init__(self, record: Callable[[torch.Tensor, torch.Tensor], list[Any]] = labels_of) -> None:
        self.model = nn.Linear(1, 1)
        self.record, self.seen = record, []

    def loss(self, model, batch):
        x, y = batch
        self.seen += self.record(x, y)
        return model(x.flatten(1).mean(dim=1)[:, None]).pow(2).mean(), {}

    def save_final(self, model, out, metrics):
        pass
