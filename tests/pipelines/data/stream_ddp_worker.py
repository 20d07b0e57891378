"""Two processes training on one stream (launched by test_streaming.py the way torchrun does): an uninterrupted
run, a run stopped after step 2 with a checkpoint, and its --resume; each process writes the rows (labels) it
trained on in each run to OUT/rank{R}.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from stream_recorder import Recorder  # beside this script

from pipelines.data import DataSpec, load_data
from pipelines.training.config import TrainConfig
from pipelines.training.loop import train


def run(data: str, out: Path, steps: int, buffer: int, **kw) -> list[int]:
    splits = load_data(DataSpec(data, modality="image", image_size=8, channels=1, streaming=True,
                                shuffle_buffer=buffer))
    task = Recorder()
    cfg = TrainConfig(out=str(out), steps=steps, batch_size=2, save_every=1000, eval_every=1000, log_every=1000,
                      progress=False, device="cpu", mixed_precision="no", **kw)
    train(task, splits.train, None, cfg)
    return task.seen


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    seen = {"whole": run(data, out / "whole", 6, 0),
            "cut": run(data, out / "cut", 6, 0, stop_after_step=2),
            "resumed": run(data, out / "cut", 6, 0, resume=True),
            "shuffled_cut": run(data, out / "sh", 5, 4, stop_after_step=2),
            "shuffled_resumed": run(data, out / "sh", 5, 4, resume=True)}
    torch.distributed.barrier()
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
