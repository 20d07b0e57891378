"""The one training loop (Accelerate) that tokenizer and prior training share.

A ``TrainTask`` supplies the model, its loss, its evaluation and how to save the finished model; this
module owns everything else: AdamW with warm-up + cosine schedule, gradient clipping and accumulation,
mixed precision, seedable data order, a tqdm bar (main process only), periodic evaluation, trackers
(TensorBoard when installed, a CSV always), atomic checkpoints (``accelerator.save_state`` into a temporary
folder, then a rename), ``--resume`` at the same data position mid-epoch, SIGTERM/SIGINT handling that
checkpoints and exits cleanly, and a NaN/inf guard that stops with the step and keeps the last good
checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.tracking import GeneralTracker
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from vqgen_io import atomic_write_text

from .checkpoints import checkpoint_dir, latest_checkpoint, save_checkpoint

log = logging.getLogger("vqgen.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


class NoCheckpointError(FileNotFoundError):
    """``--resume`` was asked for but there is nothing to resume from."""


@dataclass
class TrainConfig:
    """Loop settings shared by ``train-tokenizer`` and ``train-prior``."""

    out: str  # the run folder: becomes a save_pretrained folder, checkpoints under out/checkpoints
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # per process, as Accelerate counts it
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int | None = None  # derived: min(100, steps // 10)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = 1.0  # max global grad norm (None: no clipping)
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    eval_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    max_seconds: float | None = None  # stop (and finish normally) after this wall-clock budget
    num_workers: int = 0
    eval_batch_size: int | None = None
    progress: bool = True
    compile: bool = False  # torch.compile the model for training (saving always uses the plain module)
    stop_after_step: int | None = None  # testing aid: behave as if SIGTERM arrived after this step
    device: str | None = None  # "cpu", "cuda", "cuda:N" or None (cuda if available); launchers pick per process

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)
        self.eval_every = max(1, self.eval_every)
        self.save_every = max(1, self.save_every)
        self.keep_checkpoints = max(1, self.keep_checkpoints)


class TrainTask:
    """What one kind of training supplies to the loop. Subclasses set ``model`` and implement the hooks."""

    model: nn.Module
    name: str = "model"

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss for one micro-batch, plus scalars to show/log."""
        raise NotImplementedError

    def count(self, batch: Any) -> int:
        """Units (tokens, pixels, samples) in a batch, for throughput."""
        return len(batch[0])

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
        """Held-out metrics (runs on the main process with the unwrapped model)."""
        return {}

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        """Write the finished model as a save_pretrained folder."""
        model.save_pretrained(out)  # type: ignore[attr-defined]

    def on_step(self, step: int) -> None:
        """Called after each optimizer step (e.g. annealing)."""

    def validate_data(self, dataset: Dataset, split: str) -> None:
        """Check a whole split once before training (raise ``ValueError`` naming the problem), so that the
        per-step loss can skip its own value checks."""


class _LoopState:
    """Registered with Accelerate so ``save_state``/``load_state`` carry the loop position."""

    def __init__(self) -> None:
        self.step = 0
        self.batches_seen = 0  # micro-batches consumed since the start (gives epoch and offset)
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "batches_seen": self.batches_seen, "best": self.best}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step, self.batches_seen, self.best = int(d["step"]), int(d["batches_seen"]), dict(d.get("best", {}))


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


# ---------------------------------------------------------------------------- schedule
def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _trackers(out: Path) -> list[Any]:
    trackers: list[Any] = [CSVTracker("vqgen", out)]
    try:
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    except ImportError:
        pass
    return trackers


@dataclass
class TrainResult:
    """How a run ended: ``status`` is "finished", "preempted" (signal; checkpoint written) or "budget"."""

    status: str
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None


class _SignalFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (cluster pre-emption)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def make_accelerator(cfg: TrainConfig, out: Path, with_trackers: bool = True) -> Accelerator:
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    # Accelerate only picks the gloo CPU backend under torchrun when told the run is on CPU.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # AcceleratorState is a process-wide singleton that refuses a second Accelerator with other settings
    # (e.g. a bf16 run after an fp32 one in the same process, as the demo or a notebook does); forget the
    # previous run's settings but keep the process group.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    dev = torch.device(cfg.device) if cfg.device else None  # ValueError for a malformed name
    if dev is not None and dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and not multi_process:
            torch.cuda.set_device(dev.index)  # Accelerate's single process uses the current CUDA device
    elif dev is not None and dev.type != "cpu":
        raise ValueError(f"--device {cfg.device}: training runs on cpu or cuda")
    return Accelerator(
        cpu=(dev is not None and dev.type == "cpu") or (multi_process and not torch.cuda.is_available()),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        # The scheduler is stepped by hand once per optimizer step: Accelerate's default steps it once per
        # process, which would make an N-process run follow a different LR curve than one process.
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=_trackers(out) if with_trackers else None,
        project_dir=str(out),
    )


RUN_CONFIG = "run_config.json"  # the loop settings a run was (last) started with, compared on --resume
# On --resume the optimizer's state is restored, so its settings come from the checkpoint; the loop's own settings
# (how long, how big a batch, the schedule's shape) come from the command line.
FROM_CHECKPOINT = ("lr", "betas", "weight_decay")
FROM_COMMAND_LINE = ("steps", "batch_size", "grad_accum", "warmup_steps", "min_lr_ratio", "mixed_precision", "seed",
                     "grad_clip")


def describe_world(accelerator: Accelerator) -> str:
    """What a launch really got, e.g. "2 processes, MULTI_CPU, gloo, on cpu": printed when training starts, so a
    launcher that silently started fewer processes than its config asked for is seen at once."""
    n = accelerator.num_processes
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "no process group"
    kind = str(accelerator.distributed_type).split(".")[-1]
    return f"{n} process{'es' if n > 1 else ''}, {kind}, {backend}, on {accelerator.device}"


def _run_settings(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in FROM_CHECKPOINT + FROM_COMMAND_LINE}


def compare_run_config(out: Path, cfg: TrainConfig) -> list[str]:
    """On --resume: one line per loop setting that differs from the run's ``run_config.json``, saying which value
    is used (optimizer settings: the checkpoint's, restored with its state; the rest: the command line's)."""
    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        return []
    saved, now = json.loads(path.read_text()), _run_settings(cfg)
    notes = []
    for k in FROM_CHECKPOINT + FROM_COMMAND_LINE:
        if k in saved and saved[k] != now[k]:
            flag = "--" + k.replace("_", "-")
            if k in FROM_CHECKPOINT:
                notes.append(f"{flag} {now[k]} differs from the checkpoint's {saved[k]}: the checkpoint's is used "
                             "(the optimizer and its schedule are restored); start a new --out to change it")
            else:
                notes.append(f"{flag} {now[k]} differs from the run's {saved[k]}: {now[k]} (the command line) is used")
    return notes


def train(task: TrainTask, train_set: Dataset, test_set: Dataset | None, cfg: TrainConfig,
          hparams: dict[str, Any] | None = None) -> TrainResult:
    """Run the loop for ``task``; on "finished" or "budget" the final model is saved to ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg, out)
    accelerator.print(f"training with {describe_world(accelerator)}")
    set_seed(cfg.seed)
    if len(train_set) == 0:
        raise ValueError("the training split is empty")
    task.validate_data(train_set, "train")
    if test_set is not None:
        task.validate_data(test_set, "test")
    g = torch.Generator().manual_seed(cfg.seed)
    if len(train_set) < cfg.batch_size:
        # Fewer examples than a batch: draw full batches with replacement (one optimizer step per "epoch", on every
        # process) rather than refuse; a few long recordings or a handful of images is still a valid dataset.
        per_epoch = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
        if accelerator.is_main_process:
            log.warning("the training split has %d examples, fewer than --batch-size %d: batches are drawn with "
                        "replacement", len(train_set), cfg.batch_size)
        sampler = RandomSampler(train_set, replacement=True, num_samples=per_epoch, generator=g)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers)
    else:
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            num_workers=cfg.num_workers, generator=g)
    model = task.model
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps or 0, cfg.steps, cfg.min_lr_ratio))
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    state = _LoopState()
    accelerator.register_for_checkpointing(state)
    fwd_model = torch.compile(model) if cfg.compile else model

    if cfg.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise NoCheckpointError(
                f"--resume: no checkpoint under {checkpoint_dir(out)}; start without --resume (or check --out)"
            )
        notes = compare_run_config(out, cfg)
        try:
            accelerator.load_state(str(ckpt))
        except (RuntimeError, KeyError, ValueError) as e:  # a state dict of another model or optimizer
            raise ValueError(f"--resume: the checkpoint {ckpt} does not fit this run's model or optimizer ({str(e)[:300]}); "
                             "resume with the arguments the run was started with, or start a new --out") from None
        accelerator.print(f"resumed from {ckpt} at step {state.step}")
        for note in notes:
            accelerator.print(f"--resume: {note}")
    if accelerator.is_main_process:
        atomic_write_text(out / RUN_CONFIG, json.dumps(_run_settings(cfg), indent=2))
    if accelerator.is_main_process:
        accelerator.init_trackers("vqgen", config={k: v for k, v in {**asdict(cfg), **(hparams or {})}.items()
                                                   if isinstance(v, (int, float, str, bool))})

    n_batches = len(loader)
    unwrapped = accelerator.unwrap_model(model)
    t_start, last_log_t, units_since = time.time(), time.time(), 0
    metrics: dict[str, Any] = {}
    last_ckpt: str | None = str(latest_checkpoint(out)) if cfg.resume else None
    status = "finished"
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {task.name}", dynamic_ncols=True,
               disable=not (cfg.progress and accelerator.is_local_main_process))
    running: dict[str, float] = {}
    with _SignalFlag() as sig:
        while state.step < cfg.steps:
            epoch, offset = divmod(state.batches_seen, n_batches)
            loader.set_epoch(epoch)
            if hasattr(train_set, "set_epoch"):  # Accelerate skips the dataset's under a sharded batch sampler
                train_set.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    model.train()
                    loss, shown = task.loss(fwd_model, batch)
                    bad = torch.tensor(0.0 if torch.isfinite(loss.detach()) else 1.0, device=accelerator.device)
                    if accelerator.num_processes > 1:
                        bad = accelerator.reduce(bad, "sum")
                    if bad.item() > 0:
                        bar.close()
                        raise TrainingDiverged(
                            f"loss became {loss.item()} at step {state.step + 1} (epoch {epoch}); training stopped. "
                            f"The last good checkpoint is {last_ckpt or 'none (no checkpoint was written yet)'}. "
                            "Lower --lr, use --mixed-precision no, or check the data for NaN/inf values."
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                state.batches_seen += 1
                units_since += task.count(batch) * accelerator.num_processes
                for k, v in {"loss": loss.item(), **shown}.items():
                    running[k] = 0.9 * running.get(k, v) + 0.1 * v
                if not accelerator.sync_gradients:
                    continue
                sched.step()
                state.step += 1
                task.on_step(state.step)
                bar.update(1)
                now = time.time()
                if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                    rate = units_since / max(1e-9, now - last_log_t)
                    last_log_t, units_since = now, 0
                    bar.set_postfix({**{k: f"{v:.4g}" for k, v in running.items()}, "units/s": f"{rate:.3g}"})
                    accelerator.log({**{f"train/{k}": v for k, v in running.items()}, "train/lr": sched.get_last_lr()[0],
                                     "train/units_per_s": rate}, step=state.step)
                if test_set is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                    metrics = _evaluate(accelerator, task, unwrapped, test_set, cfg)
                    accelerator.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                                    step=state.step)
                    if accelerator.is_main_process:
                        bar.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                                    if isinstance(v, (int, float))))
                stop = sig.signum is not None or (cfg.stop_after_step is not None and state.step >= cfg.stop_after_step)
                if accelerator.num_processes > 1:
                    stop = accelerator.reduce(torch.tensor(float(stop), device=accelerator.device), "sum").item() > 0
                if stop:
                    last_ckpt = str(save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints))
                    status = "preempted"
                    accelerator.print(f"\nstopped by signal at step {state.step}; checkpoint {last_ckpt}. "
                                      "Continue with the same command plus --resume.")
                    break
                if state.step % cfg.save_every == 0 and state.step < cfg.steps:
                    last_ckpt = str(save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints))
                if cfg.max_seconds is not None and now - t_start > cfg.max_seconds:
                    status = "budget"
                    break
                if state.step >= cfg.steps:
                    break
            if status != "finished":
                break
    bar.close()
    if status == "preempted":
        accelerator.end_training()
        return TrainResult(status, state.step, metrics, last_ckpt)
    if test_set is not None and status == "budget":
        metrics = _evaluate(accelerator, task, unwrapped, test_set, cfg)
    last_ckpt = str(save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints))
    metrics = {**metrics, "step": state.step, "train_seconds": round(time.time() - t_start, 2),
               "stopped_by": status}
    if accelerator.is_main_process:
        task.save_final(unwrapped, out, metrics)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(status, state.step, metrics, last_ckpt)


def _evaluate(accelerator: Accelerator, task: TrainTask, model: nn.Module, test_set: Dataset, cfg: TrainConfig) -> dict[str, Any]:
    """Main process evaluates the unwrapped model; the others wait, then receive the numbers."""
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        was = model.training
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            metrics = task.evaluate(model, test_set, cfg.eval_batch_size or cfg.batch_size)
        model.train(was)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [metrics]
        broadcast_object_list(box, from_process=0)
        metrics = box[0]
    return metrics
