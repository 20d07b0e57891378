"""What the loop trains with, made before the first step: the checked data, a data loader with a seedable
order, and AdamW with its warm-up + cosine schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

from .config import TrainConfig
from .task import TrainTask

log = logging.getLogger("vqgen.train")


def check_data(task: TrainTask, train_set: Dataset, test_set: Dataset | None) -> None:
    """Refuse an empty training split, and let the task check each split once (``TrainTask.validate_data``) so
    its per-step loss can skip value checks. Raises ``ValueError``. A streamed split (an ``IterableDataset``) has
    no length: an empty one is found when its first epoch gives no batch (``loop``)."""
    if not isinstance(train_set, IterableDataset) and len(train_set) == 0:
        raise ValueError("the training split is empty")
    task.validate_data(train_set, "train")
    if test_set is not None:
        task.validate_data(test_set, "test")


def make_loader(train_set: Dataset, cfg: TrainConfig, accelerator: Accelerator) -> DataLoader:
    """Shuffled batches of ``cfg.batch_size`` (the last partial one dropped), in an order drawn from
    ``cfg.seed``.

    A split with fewer examples than a batch is drawn with replacement, one optimizer step's worth of full
    batches per "epoch" on every process, rather than refused (a few long recordings or a handful of images is
    still a valid dataset); a warning says so.

    A streamed split (``IterableDataset``: ``data.streaming.StreamedImages`` or ``StreamedAudio``) is batched in its own order (its
    shuffle buffer), the last partial batch of an epoch dropped, in this process only: its stream position goes into
    the checkpoints, which worker processes would keep to themselves, so ``--num-workers`` is refused."""
    g = torch.Generator().manual_seed(cfg.seed)
    pin = accelerator.device.type == "cuda"  # pinned batches copy to the GPU without a host wait
    if isinstance(train_set, IterableDataset):
        if cfg.num_workers:
            raise ValueError(f"--num-workers {cfg.num_workers} with --streaming: a stream is read in the training "
                             "process, so that its position is checkpointed with the run and --resume continues at "
                             "the next unseen item; use --num-workers 0")
        return DataLoader(train_set, batch_size=cfg.batch_size, drop_last=True, num_workers=0, pin_memory=pin)
    if len(train_set) >= cfg.batch_size:
        return DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                          num_workers=cfg.num_workers, generator=g, pin_memory=pin)
    per_epoch = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    if accelerator.is_main_process:
        log.warning("the training split has %d examples, fewer than --batch-size %d: batches are drawn with "
                    "replacement", len(train_set), cfg.batch_size)
    sampler = RandomSampler(train_set, replacement=True, num_samples=per_epoch, generator=g)
    return DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                      num_workers=cfg.num_workers, pin_memory=pin)


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier for 0-based step ``step``: linear warm-up over ``warmup`` steps (``(step + 1) /
    warmup``), then cosine decay from 1 to ``min_ratio`` over the remaining ``total - warmup`` steps
    (``min_ratio`` after them)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer,
                                                                 torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (``cfg.lr``, ``cfg.betas``) with ``cfg.weight_decay`` on the weight matrices only (parameters of
    2 or more dimensions; biases, norms and other vectors get none) and its ``warmup_cosine`` schedule over
    ``cfg.steps``, to be stepped once per optimizer step."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    schedule = warmup_cosine(cfg.warmup_steps or 0, cfg.steps, cfg.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return opt, sched
