"""What a training run is asked to do (``TrainConfig``) and how it ended (``TrainResult``).

Plain dataclasses with no torch import. Each ``TrainConfig`` field's trailing comment is its user-facing help
(what it does, its unit, what None means): command-line flags and their help are generated from them (fields with
``metadata={"flag": False}`` are set by the commands, not by a flag of their own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class TrainConfig:
    """Loop settings shared by ``train-tokenizer`` and ``train-prior``."""

    out: str = field(metadata={"flag": False})  # run folder (each command's --out): becomes a save_pretrained folder; resumable checkpoints go under OUT/checkpoints
    steps: int = 1000  # optimizer steps to train for (the count a --resume run continues to)
    batch_size: int = 64  # examples per batch per process, as Accelerate counts it
    lr: float = 1e-3  # peak learning rate of AdamW, reached at the end of the warm-up
    weight_decay: float = 0.0  # AdamW weight decay, on weight matrices only (biases and norms: none)
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW's (beta1, beta2)
    warmup_steps: int | None = None  # linear learning-rate warm-up, in steps; None: min(100, steps // 10)
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio on the last step
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    grad_accum: int = 1  # micro-batches per optimizer step (gradient accumulation)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # no (fp32), fp16, bf16 or auto: the launcher's, else bf16 on CUDA, else (train-tokenizer, the spectral codec) bf16 on a CPU with bf16 in hardware, else no
    eval_every: int = 500  # evaluate on the test split every N steps (and after the last step)
    save_every: int = 500  # write a resumable checkpoint every N steps (and after the last step)
    keep_checkpoints: int = 2  # how many of the newest checkpoints to keep under OUT/checkpoints
    log_every: int = 10  # log the training scalars (CSV, TensorBoard, progress bar) every N steps
    seed: int = field(default=0, metadata={"flag": False})  # (--seed) seeds the data order and every RNG (python, numpy, torch) when training starts
    resume: bool = False  # continue from the newest checkpoint under OUT/checkpoints at its data position
    max_seconds: float | None = None  # wall-clock budget in seconds, then evaluate, save, stop; None: none
    num_workers: int = 0  # DataLoader worker processes; 0: load batches in the training process
    eval_batch_size: int | None = None  # batch size for evaluation; None: batch_size
    progress: bool = field(default=True, metadata={"flag": False})  # show a progress bar (main process only; the CLI's --quiet)
    compile: bool = False  # torch.compile the model for training (the saved model is the plain module)
    stop_after_step: int | None = field(default=None, metadata={"flag": False})  # testing aid: act as if SIGTERM arrived after this step; None: never
    device: str | None = None  # cpu, cuda or cuda:N; None: cuda if available (a launcher's: each process's)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(
                f"--mixed-precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)
        self.eval_every = max(1, self.eval_every)
        self.save_every = max(1, self.save_every)
        self.keep_checkpoints = max(1, self.keep_checkpoints)


@dataclass
class TrainResult:
    """How a run ended: ``status`` is "finished", "preempted" (signal; checkpoint written) or "budget"."""

    status: str
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
