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

import atexit
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

import accelerate
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
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
    mixed_precision: str = "auto"  # "auto" | "no" | "fp16" | "bf16"; auto: the launcher's, else bf16 on CUDA, else no
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
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)
        self.eval_every = max(1, self.eval_every)
        self.save_every = max(1, self.save_every)
        self.keep_checkpoints = max(1, self.keep_checkpoints)


@dataclass
class EvalShard:
    """This process's part of an evaluation run by every process of a multi-process training.

    ``rank`` of ``world`` processes; ``reduce`` sums a tensor over the processes (an all-reduce: every process gets
    the total, on the tensor's device). A task's ``evaluate`` scores only its part of the test split (see
    ``shard_ranges``), sums its statistics (sums and counts, never averages), reduces them with ``reduce``, and then
    computes the metrics from the totals: every process returns the same numbers as a 1-process evaluation.
    Every process must run the model the same number of times (``forward_count``), padding with a repeated batch
    whose results it drops: under FSDP each forward all-gathers the parameters, so unequal counts would hang.
    """

    rank: int
    world: int
    reduce: Callable[[torch.Tensor], torch.Tensor]


def shard_ranges(n: int, world: int, group_of: Callable[[int], Any] | None = None) -> list[tuple[int, int]]:
    """Split the indices ``[0, n)`` into ``world`` contiguous ``(start, stop)`` ranges of nearly equal size, in rank
    order. ``group_of(i)`` (optional: the file that window i of a long recording belongs to) moves each cut forward
    to the next group boundary, so no group is split between two processes (its score needs all of it)."""
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


class TrainTask:
    """What one kind of training supplies to the loop. Subclasses set ``model`` and implement the hooks."""

    model: nn.Module
    name: str = "model"

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Scalar loss for one micro-batch, plus scalars to show/log. Return the scalars as (detached) tensors, not
        floats: the loop averages them on the device and reads them only on logging steps (a ``float()`` per step
        would wait for the GPU every step)."""
        raise NotImplementedError

    def count(self, batch: Any) -> int:
        """Units (tokens, pixels, samples) in a batch, for throughput (from shapes: no host sync)."""
        return len(batch[0])

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 shard: EvalShard | None = None) -> dict[str, float]:
        """Held-out metrics, in eval mode under ``torch.no_grad``. ``shard`` None: this process scores the whole
        split; otherwise every process calls this with its ``EvalShard`` and all must return the totals' metrics
        (see ``EvalShard``). ``model`` is the unwrapped model (under FSDP the sharded one: call it, not its parts)."""
        return {}

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        """Write the finished model as a save_pretrained folder (the main process only)."""
        model.save_pretrained(out)  # type: ignore[attr-defined]

    def unsharded_copy(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """A plain (not sharded) CPU model of the same configuration holding ``state_dict`` (the full state dict
        gathered from the FSDP-sharded one), for ``save_final`` under FSDP. Tasks that train under FSDP implement it."""
        raise NotImplementedError(f"{type(self).__name__} cannot save a model trained with FSDP (no unsharded_copy)")

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


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses: ``requested`` unless it is "auto"; "auto" takes the launcher's setting when
    ``accelerate launch`` gave one (a config's ``mixed_precision``), else bf16 on a CUDA device that supports it (bf16
    autocast: weights, optimizer state, softmax and loss stay float32), else "no" (fp32; CPU bf16 autocast is slower
    than fp32 on most CPUs)."""
    if requested != "auto":
        return requested
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        return launcher
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def _fsdp_requested() -> bool:
    # ``accelerate launch`` with a config whose distributed_type is FSDP sets this for every process.
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(cfg: TrainConfig, out: Path, with_trackers: bool = True) -> Accelerator:
    """The Accelerator for one run: device, precision, the launcher's process group, trackers.

    Raises ``ValueError`` for what cannot work here (fp16 or FSDP without CUDA, an unknown ``--device``) instead of
    letting Accelerate fall back silently.
    """
    # Accelerate only picks the gloo CPU backend under torchrun when told the run is on CPU.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = torch.device(cfg.device) if cfg.device else None  # ValueError for a malformed name
    if dev is not None and dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and not multi_process:
            torch.cuda.set_device(dev.index)  # Accelerate's single process uses the current CUDA device
    elif dev is not None and dev.type != "cpu":
        raise ValueError(f"--device {cfg.device}: training runs on cpu or cuda")
    on_cpu = (dev is not None and dev.type == "cpu") or not torch.cuda.is_available()
    if _fsdp_requested() and on_cpu:
        # Accelerate runs FSDP on accelerators only: on CPU it would train with DDP (or as unconnected single
        # processes) and keep quiet about it.
        raise ValueError(
            f"FSDP needs CUDA: this launch asks for FSDP (ACCELERATE_USE_FSDP=true, e.g. scripts/configs/fsdp.yaml), but "
            f"it would run on the CPU, where Accelerate {accelerate.__version__} cannot shard and silently trains with "
            "DDP instead. Run it on GPUs, or on CPU launch DDP with torchrun (python -m torch.distributed.run "
            "--nproc_per_node=N scripts/train_prior.py ...)")
    precision = resolve_mixed_precision(cfg.mixed_precision, dev or torch.device("cpu" if on_cpu else "cuda"))
    if precision == "fp16" and on_cpu:
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    # AcceleratorState is a process-wide singleton that refuses a second Accelerator with other settings
    # (e.g. a bf16 run after an fp32 one in the same process, as the demo or a notebook does); forget the
    # previous run's settings but keep the process group, which lives as long as the process (see _keep_group).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=(dev is not None and dev.type == "cpu") or (multi_process and not torch.cuda.is_available()),
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        # The scheduler is stepped by hand once per optimizer step: Accelerate's default steps it once per
        # process, which would make an N-process run follow a different LR curve than one process.
        step_scheduler_with_optimizer=False,
        # non_blocking: batches are copied from pinned memory without making the host wait for the GPU.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=not on_cpu),
        # No buffer is per-process state: codebook EMA statistics are all-reduced by the quantizer, the rest are
        # constants. DDP's default would re-send rank 0's buffers (KV caches included) before every forward, which
        # costs a broadcast per step and hides a codebook that has stopped syncing.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with=_trackers(out) if with_trackers else None,
        project_dir=str(out),
    )
    _keep_group()
    return accelerator


_GROUP_CLOSER_REGISTERED = False


def _keep_group() -> None:
    """Keep the launcher's process group for the life of the process and close it at exit.

    ``Accelerator.end_training`` destroys it, after which a second ``train`` in the same process (a resume after a
    pre-emption, the demo's tokenizer then prior) would find Accelerate believing it is still up. So runs end by
    finishing their trackers only, and the group is destroyed once, at exit (NCCL warns about a group never
    destroyed)."""
    global _GROUP_CLOSER_REGISTERED
    if _GROUP_CLOSER_REGISTERED or not torch.distributed.is_initialized():
        return

    def close() -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(close)
    _GROUP_CLOSER_REGISTERED = True


def _end(accelerator: Accelerator) -> None:
    # end_training without destroying the process group (see _keep_group)
    for tracker in accelerator.trackers:
        tracker.finish()


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


class _Running:
    """Exponential moving averages (0.9) of the shown training scalars, kept where they are computed: adding a
    tensor launches a kernel but never waits for it; ``read`` brings them all to the host at once (one sync)."""

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
            res |= dict(zip(tensors, torch.stack([v.to(device).reshape(()) for v in tensors.values()]).tolist()))
        return {k: res[k] for k in self.values}


class _FiniteGuard:
    """The NaN/inf guard without a host sync per step: remembers on the device the first micro-batch whose loss was
    not finite (its optimizer step, epoch and value); ``check`` reads that (one sync, gathered over the processes)
    before anything is logged, evaluated or checkpointed, so a checkpoint never holds weights from after a bad step."""

    def __init__(self, device: torch.device):
        self.state = torch.zeros(3, dtype=torch.float64, device=device)  # step (0: none yet), epoch, loss value

    def add(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        loss = loss.detach().reshape(()).to(self.state.dtype)
        new = ~torch.isfinite(loss) & (self.state[0] == 0)
        seen = torch.stack([torch.full_like(loss, step), torch.full_like(loss, epoch), loss])
        self.state = torch.where(new, seen, self.state)

    def first_bad(self, accelerator: Accelerator) -> tuple[int, int, float] | None:
        """(step, epoch, loss) of the earliest non-finite loss on any process, or None."""
        rows = accelerator.gather(self.state[None]) if accelerator.num_processes > 1 else self.state[None]
        bad = [(int(s), int(e), v) for s, e, v in rows.tolist() if s > 0]
        return min(bad) if bad else None


_HOST_GROUP: Any = None


class _HostFlags:
    """Per-step agreement between processes on facts only the host knows (a signal arrived, the time budget is
    spent), so every process stops after the same step: an all-reduce (max) of a small CPU tensor over a gloo group,
    which never waits for the GPU. One process: no communication."""

    def __init__(self, accelerator: Accelerator):
        global _HOST_GROUP
        self.active = accelerator.num_processes > 1 and torch.distributed.is_initialized()
        self.group = None
        if self.active and torch.distributed.get_backend() != "gloo":
            if _HOST_GROUP is None:  # new_group is itself collective: made once per process, by every process
                _HOST_GROUP = torch.distributed.new_group(backend="gloo")
            self.group = _HOST_GROUP

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: is it set on any process?"""
        if not self.active:
            return list(flags)
        t = torch.tensor([float(f) for f in flags])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return [v > 0 for v in t.tolist()]


def train(task: TrainTask, train_set: Dataset, test_set: Dataset | None, cfg: TrainConfig,
          hparams: dict[str, Any] | None = None) -> TrainResult:
    """Run the loop for ``task``; on "finished" or "budget" the final model is saved to ``cfg.out``.

    Every process of a launch calls this with the same arguments. Data: Accelerate's seedable sampler draws one
    permutation of ``train_set`` per epoch (the same on every process) and cuts it into batches of ``batch_size``;
    with N processes batch i goes to process i % N, so the N batches of one optimizer step are the consecutive
    global batch a single process with ``N * batch_size`` would take (exactly so when the split is a multiple of
    the global batch; otherwise Accelerate pads the last step with examples from the start). Evaluation runs on
    every process on its share of ``test_set`` and the sums are all-reduced (``EvalShard``); checkpoints and resume
    take every process; a signal on any process stops all of them after the same step, with a checkpoint.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg, out)
    accelerator.print(f"training with {describe_world(accelerator)}"
                      + (f", {accelerator.mixed_precision} autocast" if accelerator.mixed_precision != "no" else ""))
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    set_seed(cfg.seed)
    if len(train_set) == 0:
        raise ValueError("the training split is empty")
    task.validate_data(train_set, "train")
    if test_set is not None:
        task.validate_data(test_set, "test")
    g = torch.Generator().manual_seed(cfg.seed)
    pin = accelerator.device.type == "cuda"  # pinned batches copy to the GPU without a host wait
    if len(train_set) < cfg.batch_size:
        # Fewer examples than a batch: draw full batches with replacement (one optimizer step per "epoch", on every
        # process) rather than refuse; a few long recordings or a handful of images is still a valid dataset.
        per_epoch = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
        if accelerator.is_main_process:
            log.warning("the training split has %d examples, fewer than --batch-size %d: batches are drawn with "
                        "replacement", len(train_set), cfg.batch_size)
        sampler = RandomSampler(train_set, replacement=True, num_samples=per_epoch, generator=g)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers, pin_memory=pin)
    else:
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            num_workers=cfg.num_workers, generator=g, pin_memory=pin)
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
    # Under FSDP the parameters stay sharded: evaluation calls the prepared model (its forward gathers them).
    eval_model = model if fsdp else unwrapped
    t_start, last_log_t, units_since = time.time(), time.time(), 0
    metrics: dict[str, Any] = {}
    evaluated_at = -1
    last_ckpt: str | None = str(latest_checkpoint(out)) if cfg.resume else None
    status = "finished"
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {task.name}", dynamic_ncols=True,
               disable=not (cfg.progress and accelerator.is_local_main_process))
    running, guard, flags = _Running(), _FiniteGuard(accelerator.device), _HostFlags(accelerator)

    def stop_if_diverged() -> None:
        hit = guard.first_bad(accelerator)
        if hit is not None:
            bar.close()
            step, epoch, value = hit
            raise TrainingDiverged(
                f"loss became {value} at step {step} (epoch {epoch}); training stopped. "
                f"The last good checkpoint is {last_ckpt or 'none (no checkpoint was written yet)'}. "
                "Lower --lr, use --mixed-precision no, or check the data for NaN/inf values."
            )

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
                    guard.add(loss, state.step + 1, epoch)  # no host sync: read at the next logging/save step
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                state.batches_seen += 1
                units_since += task.count(batch) * accelerator.num_processes
                running.add({"loss": loss, **shown})
                if not accelerator.sync_gradients:
                    continue
                sched.step()
                state.step += 1
                task.on_step(state.step)
                bar.update(1)
                now = time.time()
                stop, over_budget = flags.any(
                    sig.signum is not None or (cfg.stop_after_step is not None and state.step >= cfg.stop_after_step),
                    cfg.max_seconds is not None and now - t_start > cfg.max_seconds)
                log_now = state.step % cfg.log_every == 0 or state.step == cfg.steps
                eval_now = test_set is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.steps)
                save_now = state.step % cfg.save_every == 0 and state.step < cfg.steps
                if log_now or eval_now or save_now or stop or over_budget or state.step >= cfg.steps:
                    stop_if_diverged()
                if log_now:
                    shown_now = running.read()  # the one host sync of a logging step
                    rate = units_since / max(1e-9, now - last_log_t)
                    last_log_t, units_since = now, 0
                    bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown_now.items()}, "units/s": f"{rate:.3g}"})
                    accelerator.log({**{f"train/{k}": v for k, v in shown_now.items()}, "train/lr": sched.get_last_lr()[0],
                                     "train/units_per_s": rate}, step=state.step)
                if eval_now:
                    metrics, evaluated_at = _evaluate(accelerator, task, eval_model, test_set, cfg), state.step
                    accelerator.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                                    step=state.step)
                    if accelerator.is_main_process:
                        bar.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                                    if isinstance(v, (int, float))))
                if stop:
                    last_ckpt = str(save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints))
                    status = "preempted"
                    accelerator.print(f"\nstopped by signal at step {state.step}; checkpoint {last_ckpt}. "
                                      "Continue with the same command plus --resume.")
                    break
                if save_now:
                    last_ckpt = str(save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints))
                if over_budget:
                    status = "budget"
                    break
                if state.step >= cfg.steps:
                    break
            if status != "finished":
                break
    bar.close()
    if status == "preempted":
        _end(accelerator)
        return TrainResult(status, state.step, metrics, last_ckpt)
    if test_set is not None and evaluated_at != state.step:
        metrics = _evaluate(accelerator, task, eval_model, test_set, cfg)
    last_ckpt = str(save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints))
    metrics = {**metrics, "step": state.step, "train_seconds": round(time.time() - t_start, 2),
               "stopped_by": status}
    # Under FSDP every process takes part in gathering the full state dict (it lands on the main process only).
    full_state = accelerator.get_state_dict(model) if fsdp else None
    if accelerator.is_main_process:
        final = task.unsharded_copy(full_state) if full_state is not None else unwrapped
        task.save_final(final, out, metrics)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    _end(accelerator)
    return TrainResult(status, state.step, metrics, last_ckpt)


def _evaluate(accelerator: Accelerator, task: TrainTask, model: nn.Module, test_set: Dataset,
              cfg: TrainConfig) -> dict[str, Any]:
    """Held-out metrics, the same on every process. One process scores the whole split; N processes each score
    their share and all-reduce the sums (``EvalShard``), so no process waits idle and nothing runs on one rank
    alone (under FSDP that would hang at the first parameter all-gather)."""
    batch_size = cfg.eval_batch_size or cfg.batch_size
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
