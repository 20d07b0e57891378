"""What a run logs: Accelerate trackers (TensorBoard when installed, ``train_log.csv`` always) and the
training scalars (running means kept on the device, throughput), written on logging steps."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from tqdm.auto import tqdm

from .config import TrainConfig


class CSVTracker(GeneralTracker):
    """An Accelerate tracker that appends every logged scalar to ``out/train_log.csv`` (always available,
    unlike TensorBoard)."""

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.path = Path(logging_dir) / "train_log.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self) -> Any:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        (self.path.parent / "train_config.json").write_text(json.dumps(values, indent=2, default=str))

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in values.items():
                w.writerow([step, k, float(v)])


def default_trackers(out: Path) -> list[Any]:
    """The trackers for ``Accelerator(log_with=...)``: the CSV always, TensorBoard (under ``out``) when
    installed."""
    trackers: list[Any] = [CSVTracker("vqgen", out)]
    try:
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    except ImportError:
        pass
    return trackers


def start_trackers(accelerator: Accelerator, cfg: TrainConfig, hparams: dict[str, Any] | None) -> None:
    """Start the trackers with the run's settings and ``hparams`` (scalars only; ``train_config.json``). Main
    process only."""
    if accelerator.is_main_process:
        accelerator.init_trackers("vqgen", config={k: v for k, v in {**asdict(cfg), **(hparams or {})}.items()
                                                   if isinstance(v, (int, float, str, bool))})


def end_trackers(accelerator: Accelerator) -> None:
    """Finish the run's trackers: ``end_training`` without destroying the process group (see ``keep_group``
    in ``accelerator``)."""
    for tracker in accelerator.trackers:
        tracker.finish()


class RunningMeans:
    """Exponential moving averages (0.9) of the shown training scalars, kept where they are computed: adding a
    tensor launches a kernel but never waits for it; ``read`` brings them all to the host at once (one
    sync)."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor | float] = {}

    def add(self, scalars: dict[str, torch.Tensor | float]) -> None:
        for k, v in scalars.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            old = self.values.get(k)
            self.values[k] = v if old is None else 0.9 * old + 0.1 * v

    def read(self) -> dict[str, float]:
        tensors = {k: v for k, v in self.values.items() if isinstance(v, torch.Tensor)}
        res = {k: float(v) for k, v in self.values.items() if not isinstance(v, torch.Tensor)}
        if tensors:
            device = next(iter(tensors.values())).device
            stacked = torch.stack([v.to(device).reshape(()) for v in tensors.values()])
            res |= dict(zip(tensors, stacked.tolist()))
        return {k: res[k] for k in self.values}


class TrainScalars:
    """The training scalars of a run: running means of the task's scalars and the throughput (units per
    second, summed over the processes) since the last logging step."""

    def __init__(self, start: float):
        self.means = RunningMeans()
        self.units = 0  # units (tokens, pixels, samples) since the last logging step, all processes
        self.since = start  # time.time() of the last logging step (or the start)

    def add(self, scalars: dict[str, torch.Tensor | float], units: int) -> None:
        """One micro-batch's scalars (the loss among them) and its units."""
        self.units += units
        self.means.add(scalars)

    def log(self, accelerator: Accelerator, bar: tqdm, step: int, lr: float, now: float) -> None:
        """Show the scalars on ``bar`` and log them as ``train/*`` at ``step`` (one host sync), then restart
        the throughput count at ``now``."""
        shown = self.means.read()  # the one host sync of a logging step
        rate = self.units / max(1e-9, now - self.since)
        self.since, self.units = now, 0
        bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown.items()}, "units/s": f"{rate:.3g}"})
        accelerator.log({**{f"train/{k}": v for k, v in shown.items()}, "train/lr": lr,
                         "train/units_per_s": rate}, step=step)
