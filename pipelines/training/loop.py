"""The one training loop (Accelerate) that tokenizer and prior training share: ``train``.

A ``TrainTask`` supplies the model, its loss, its evaluation and how to save the finished model; the loop owns
everything else, one concern per module of this package:

- ``config``: ``TrainConfig`` (the settings) and ``TrainResult`` (how a run ended);
- ``accelerator``: device, mixed precision, the launcher's process group;
- ``prepare``: the data checks, seedable data order, AdamW with warm-up + cosine schedule;
- this module: the steps (gradient clipping and accumulation, what each optimizer step triggers) and the end;
- ``evaluation``: periodic held-out evaluation, split across processes (``EvalShard``);
- ``trackers``: a tqdm bar (main process only), TensorBoard when installed, a CSV always;
- ``checkpoints``: atomic checkpoints (``accelerator.save_state`` into a temporary folder, then a rename) and
  ``--resume`` at the same data position mid-epoch;
- ``signals``: SIGTERM/SIGINT handling that checkpoints and exits cleanly, on every process at once;
- ``guards``: a NaN/inf guard that stops with the step and keeps the last good checkpoint.

The names this module defined before the split are still importable from it (``__all__``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from vqgen_io import atomic_write_text

from .accelerator import describe_world, make_accelerator, resolve_mixed_precision
from .checkpoints import (
    FROM_CHECKPOINT,
    FROM_COMMAND_LINE,
    RUN_CONFIG,
    LoopState,
    NoCheckpointError,
    compare_run_config,
    resume,
    save_checkpoint,
    write_run_config,
)
from .config import TrainConfig, TrainResult
from .evaluation import EvalShard, evaluate, forward_count, shard_ranges
from .guards import FiniteGuard, TrainingDiverged
from .prepare import check_data, make_loader, make_optimizer, warmup_cosine
from .signals import HostFlags, SignalFlag
from .task import TrainTask
from .trackers import CSVTracker, TrainScalars, end_trackers, start_trackers

__all__ = [  # train, and what this module defined before the split (importers of pipelines.training.loop)
    "train", "TrainConfig", "TrainResult", "TrainTask", "TrainingDiverged", "NoCheckpointError", "EvalShard",
    "shard_ranges", "forward_count", "make_accelerator", "resolve_mixed_precision", "describe_world",
    "warmup_cosine", "CSVTracker", "compare_run_config", "RUN_CONFIG", "FROM_CHECKPOINT", "FROM_COMMAND_LINE",
]


def train(task: TrainTask, train_set: Dataset, test_set: Dataset | None, cfg: TrainConfig,
          hparams: dict[str, Any] | None = None) -> TrainResult:
    """Run the loop for ``task``; on "finished" or "budget" the final model is saved to ``cfg.out``.

    Every process of a launch calls this with the same arguments. Data: Accelerate's seedable sampler draws
    one permutation of ``train_set`` per epoch (the same on every process) and cuts it into batches of
    ``batch_size``; with N processes batch i goes to process i % N, so the N batches of one optimizer step are
    the consecutive global batch a single process with ``N * batch_size`` would take (exactly so when the
    split is a multiple of the global batch; otherwise Accelerate pads the last step with examples from the
    start). Evaluation runs on every process on its share of ``test_set`` and the sums are all-reduced
    (``EvalShard``); checkpoints and resume take every process; a signal on any process stops all of them
    after the same step, with a checkpoint. ``hparams``: extra scalars recorded with the run's settings in
    ``train_config.json``.

    A streamed ``train_set`` (an ``IterableDataset`` with ``set_epoch``, ``epoch``, ``state_dict`` and
    ``load_state_dict``: ``data.streaming.StreamedImages`` or ``StreamedAudio``) already holds this process's share of the stream: its
    loader is not prepared by Accelerate (which would send an iterable dataset's batches from the main process, or
    have every process read all of it, and reads one batch ahead, past the position a checkpoint records); its
    batches are moved to the device here. An epoch runs until the stream ends on any process (all stop together),
    and the dataset is registered for checkpointing, so ``--resume`` continues at its next unseen item.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg, out)
    autocast = f", {accelerator.mixed_precision} autocast" if accelerator.mixed_precision != "no" else ""
    accelerator.print(f"training with {describe_world(accelerator)}{autocast}")
    set_seed(cfg.seed)
    check_data(task, train_set, test_set)
    loader = make_loader(train_set, cfg, accelerator)
    opt, sched = make_optimizer(task.model, cfg)
    streamed = isinstance(train_set, IterableDataset)
    if streamed:  # see the docstring: the loader stays this process's own
        model, opt, sched = accelerator.prepare(task.model, opt, sched)
    else:
        model, opt, loader, sched = accelerator.prepare(task.model, opt, loader, sched)
    state = LoopState()
    accelerator.register_for_checkpointing(state)
    if streamed:  # the stream's epoch and position, of every process (custom_checkpoint_1.pkl)
        accelerator.register_for_checkpointing(train_set)
    last_ckpt = str(resume(accelerator, out, cfg, state)) if cfg.resume else None
    if accelerator.is_main_process:
        write_run_config(out, cfg)
    start_trackers(accelerator, cfg, hparams)

    steps = _Steps(accelerator, task, cfg, model, opt, sched, loader, state, train_set, test_set, last_ckpt)
    status = steps.run()
    # A pre-empted run ends with its checkpoint and no final model; the others evaluate and save (finish).
    result = (TrainResult(status, state.step, steps.metrics, steps.last_ckpt) if status == "preempted"
              else steps.finish(status))
    end_trackers(accelerator)
    return result


class _Steps:
    """The step loop of one run, on prepared objects: micro-batches, optimizer steps, and what each optimizer
    step triggers (logging, evaluation, checkpoints, stopping); then ``finish`` for a run not pre-empted."""

    def __init__(self, accelerator: Accelerator, task: TrainTask, cfg: TrainConfig, model: nn.Module,
                 opt: torch.optim.Optimizer, sched: Any, loader: DataLoader, state: LoopState,
                 train_set: Dataset, test_set: Dataset | None, last_ckpt: str | None):
        self.accelerator, self.task, self.cfg, self.out = accelerator, task, cfg, Path(cfg.out)
        self.model, self.opt, self.sched, self.loader, self.state = model, opt, sched, loader, state
        self.train_set, self.test_set = train_set, test_set
        self.fwd_model = torch.compile(model) if cfg.compile else model
        self.fsdp = accelerator.distributed_type == DistributedType.FSDP
        self.unwrapped = accelerator.unwrap_model(model)
        # Under FSDP parameters stay sharded: evaluation calls the prepared model, whose forward gathers them.
        self.eval_model = model if self.fsdp else self.unwrapped
        self.metrics: dict[str, Any] = {}
        self.evaluated_at = -1
        self.last_ckpt = last_ckpt  # the newest checkpoint: named if the loss diverges, returned at the end
        self.t_start = time.time()
        self.scalars = TrainScalars(time.time())
        self.bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {task.name}", dynamic_ncols=True,
                        disable=not (cfg.progress and accelerator.is_local_main_process))
        self.guard, self.flags = FiniteGuard(accelerator.device), HostFlags(accelerator)

    def run(self) -> str:
        """Train until the last step ("finished"), a signal ("preempted", checkpoint written) or the time
        budget ("budget"); resumes mid-epoch at ``state.batches_seen``. Returns the status."""
        status = "finished"
        with SignalFlag() as sig:
            if isinstance(self.train_set, IterableDataset):
                status = self._run_stream(sig)
                self.bar.close()
                return status
            n_batches = len(self.loader)
            while self.state.step < self.cfg.steps and status == "finished":
                epoch, offset = divmod(self.state.batches_seen, n_batches)
                self.loader.set_epoch(epoch)
                if hasattr(self.train_set, "set_epoch"):  # Accelerate skips it under a sharded batch sampler
                    self.train_set.set_epoch(epoch)
                epoch_loader = (self.accelerator.skip_first_batches(self.loader, offset) if offset
                                else self.loader)
                ended, _ = self._epoch(epoch_loader, epoch, sig)
                status = ended or status
        self.bar.close()
        return status

    def _epoch(self, batches: Any, epoch: int, sig: SignalFlag) -> tuple[str | None, int]:
        """Train on ``batches`` (micro-batches of epoch ``epoch``) until they end or the run does: (the run's status
        when it ended here, else None; the micro-batches taken)."""
        taken = 0
        for batch in batches:
            taken += 1
            self._micro_step(batch, epoch)
            if not self.accelerator.sync_gradients:
                continue
            ended = self._after_step(sig)
            if ended is not None:
                return ended, taken
        return None, taken

    def _run_stream(self, sig: SignalFlag) -> str:
        """``run`` on a streamed split: epoch after epoch (the dataset's ``epoch``, restored on resume with its
        position) until the last step, a signal or the budget. Raises ``ValueError`` when two epochs running give
        no full batch (a stream with fewer readable examples than ``--batch-size``)."""
        stream: Any = self.train_set
        status, empty = "finished", 0
        while self.state.step < self.cfg.steps and status == "finished":
            epoch = stream.epoch
            stream.set_epoch(epoch)
            ended, batches = self._epoch(self._stream_batches(), epoch, sig)
            if ended is not None:
                status = ended
            else:  # the stream ended: the next epoch starts from its beginning
                # (one empty epoch is a resume whose checkpoint sat at the end of one)
                empty = empty + 1 if batches == 0 else 0
                if empty >= 2:
                    self.bar.close()
                    raise ValueError(f"the streamed training split gave no full batch of --batch-size "
                                     f"{self.cfg.batch_size} in epoch {epoch}: it has fewer readable examples "
                                     "(per process) than a batch; lower --batch-size or check the dataset")
                stream.set_epoch(epoch + 1)
        return status

    def _stream_batches(self) -> Any:
        """This process's batches of the streamed split, on the device, until the stream of any process ends."""
        accelerator = self.accelerator
        device, multi = accelerator.device, accelerator.num_processes > 1
        it = iter(self.loader)
        while True:
            batch = next(it, None)
            # Shares of a stream differ in length (rows, unreadable files): every process ends the epoch at the
            # first batch one of them lacks, so that none waits in a collective the others never join.
            ended = self.flags.any(batch is None)[0] if multi else batch is None
            if ended:
                return
            yield send_to_device(batch, device, non_blocking=device.type == "cuda")

    def _micro_step(self, batch: Any, epoch: int) -> None:
        """Forward and backward on one micro-batch; the optimizer steps once Accelerate has accumulated."""
        accelerator, state = self.accelerator, self.state
        with accelerator.accumulate(self.model):
            self.model.train()
            loss, shown = self.task.loss(self.fwd_model, batch)
            self.guard.add(loss, state.step + 1, epoch)  # no host sync: read at the next logging/save step
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.cfg.grad_clip:
                accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        state.batches_seen += 1
        self.scalars.add({"loss": loss, **shown}, self.task.count(batch) * accelerator.num_processes)

    def _after_step(self, sig: SignalFlag) -> str | None:
        """What an optimizer step triggers. Returns the run's status when it ends here ("preempted", "budget",
        "finished"), else None."""
        cfg, state = self.cfg, self.state
        self.sched.step()
        state.step += 1
        self.task.on_step(state.step)
        self.bar.update(1)
        now = time.time()
        stop, over_budget = self.flags.any(
            sig.signum is not None or (cfg.stop_after_step is not None and state.step >= cfg.stop_after_step),
            cfg.max_seconds is not None and now - self.t_start > cfg.max_seconds)
        log_now = state.step % cfg.log_every == 0 or state.step == cfg.steps
        eval_now = self.test_set is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.steps)
        save_now = state.step % cfg.save_every == 0 and state.step < cfg.steps
        if log_now or eval_now or save_now or stop or over_budget or state.step >= cfg.steps:
            self._stop_if_diverged()  # one host sync, before anything is logged, evaluated or saved
        if log_now:
            self.scalars.log(self.accelerator, self.bar, state.step, self.sched.get_last_lr()[0], now)
        if eval_now:
            self._evaluate_and_log()
        if stop:
            self._save()
            self.accelerator.print(f"\nstopped by signal at step {state.step}; checkpoint {self.last_ckpt}. "
                                   "Continue with the same command plus --resume.")
            return "preempted"
        if save_now:
            self._save()
        if over_budget:
            return "budget"
        return "finished" if state.step >= cfg.steps else None

    def _stop_if_diverged(self) -> None:
        error = self.guard.check(self.accelerator, self.last_ckpt)
        if error is not None:
            self.bar.close()
            raise error

    def _evaluate(self) -> dict[str, Any]:
        test_set = self.test_set
        assert test_set is not None
        return evaluate(self.accelerator, self.task, self.eval_model, test_set,
                        self.cfg.eval_batch_size or self.cfg.batch_size)

    def _evaluate_and_log(self) -> None:
        step = self.state.step
        self.metrics, self.evaluated_at = self._evaluate(), step
        numbers = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}
        self.accelerator.log({f"eval/{k}": v for k, v in numbers.items()}, step=step)
        if self.accelerator.is_main_process:
            self.bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))

    def _save(self) -> None:
        ckpt = save_checkpoint(self.accelerator, self.out, self.state.step, self.cfg.keep_checkpoints)
        self.last_ckpt = str(ckpt)

    def finish(self, status: str) -> TrainResult:
        """End a "finished" or "budget" run: evaluate unless the last step was evaluated, write the last
        checkpoint, and save the final model and ``metrics.json`` into the run folder (main process). Every
        process calls it."""
        accelerator, state = self.accelerator, self.state
        if self.test_set is not None and self.evaluated_at != state.step:
            self.metrics = self._evaluate()
        self._save()
        metrics = {**self.metrics, "step": state.step, "train_seconds": round(time.time() - self.t_start, 2),
                   "stopped_by": status}
        # Under FSDP every process takes part in gathering the full state dict (only the main one gets it).
        full_state = accelerator.get_state_dict(self.model) if self.fsdp else None
        if accelerator.is_main_process:
            final = self.task.unsharded_copy(full_state) if full_state is not None else self.unwrapped
            self.task.save_final(final, self.out, metrics)
            atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2))
        accelerator.wait_for_everyone()
        return TrainResult(status, state.step, metrics, self.last_ckpt)
