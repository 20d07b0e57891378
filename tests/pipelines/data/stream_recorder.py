"""What the streaming tests share: ``Recorder``, a one-weight model whose loss records what each batch held (so a
test can compare the items an interrupted and resumed run trained on with an uninterrupted run's), and
``dying_at_shard``, a ``vqgen tokenize`` that stops where a killed one would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def dying_at_shard(split: str, k: int) -> Iterator[None]:
    """Inside: ``vqgen tokenize`` raises when it comes to write shard ``k`` of ``split`` (it stops there with the
    shards before it written, as a killed run would); the real ``write_shard`` is back after."""
    import pipelines.stages.tokenize as tk

    real = tk.write_shard

    def write_shard(out, s, j, *a, **kw):
        if (s, j) == (split, k):
            raise RuntimeError(f"killed at {split} shard {k}")
        return real(out, s, j, *a, **kw)

    tk.write_shard = write_shard
    try:
        yield
    finally:
        tk.write_shard = real
