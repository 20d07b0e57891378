"""The Accelerator of a run: device, mixed precision, the launcher's process group (kept for the life of the
process) and the trackers."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import accelerate
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs

from .config import TrainConfig
from .trackers import default_trackers


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX tiles), where bf16 autocast can be faster than
    fp32 (without it, bf16 is emulated and slower)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these (private) probes: assume not
        return False


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses: ``requested`` unless it is "auto"; "auto" takes the launcher's setting when
    ``accelerate launch`` gave one (a config's ``mixed_precision``), else bf16 on a CUDA device that supports
    it (bf16 autocast: weights, optimizer state, softmax and loss stay float32), else "no" (fp32; CPU bf16
    autocast is slower than fp32 on most CPUs)."""
    if requested != "auto":
        return requested
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        return launcher
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def _fsdp_requested() -> bool:
    # ``accelerate launch`` with a config whose distributed_type is FSDP sets this for every process.
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _device(cfg: TrainConfig, multi_process: bool) -> torch.device | None:
    """``cfg.device`` checked (None: not given); makes a single process's ``cuda:N`` the current CUDA
    device."""
    dev = torch.device(cfg.device) if cfg.device else None  # ValueError for a malformed name
    if dev is not None and dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {cfg.device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and not multi_process:
            torch.cuda.set_device(dev.index)  # Accelerate's single process uses the current CUDA device
    elif dev is not None and dev.type != "cpu":
        raise ValueError(f"--device {cfg.device}: training runs on cpu or cuda")
    return dev


def make_accelerator(cfg: TrainConfig, out: Path, with_trackers: bool = True) -> Accelerator:
    """The Accelerator for one run: device, precision, the launcher's process group, trackers.

    Raises ``ValueError`` for what cannot work here (fp16 or FSDP without CUDA, an unknown ``--device``)
    instead of letting Accelerate fall back silently.
    """
    # Accelerate only picks the gloo CPU backend under torchrun when told the run is on CPU.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = _device(cfg, multi_process)
    on_cpu = (dev is not None and dev.type == "cpu") or not torch.cuda.is_available()
    if _fsdp_requested() and on_cpu:
        # Accelerate runs FSDP on accelerators only: on CPU it would train with DDP (or as unconnected single
        # processes) and keep quiet about it.
        raise ValueError(
            "FSDP needs CUDA: this launch asks for FSDP (ACCELERATE_USE_FSDP=true, e.g. "
            "scripts/configs/fsdp.yaml), but it would run on the CPU, where Accelerate "
            f"{accelerate.__version__} cannot shard and silently trains with DDP instead. Run it on GPUs, "
            "or on CPU launch DDP with torchrun (python -m torch.distributed.run --nproc_per_node=N "
            "scripts/train_prior.py ...)")
    precision = resolve_mixed_precision(cfg.mixed_precision, dev or torch.device("cpu" if on_cpu else "cuda"))
    if precision == "fp16" and on_cpu:
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    # AcceleratorState is a process-wide singleton that refuses a second Accelerator with other settings
    # (e.g. a bf16 run after an fp32 one in the same process, as the demo or a notebook does); forget the
    # previous run's settings but keep the process group, which lives as long as the process
    # (see keep_group).
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
        # No buffer is per-process state: codebook EMA statistics are all-reduced by the quantizer, the rest
        # are constants. DDP's default would re-send rank 0's buffers (KV caches included) before every
        # forward, which costs a broadcast per step and hides a codebook that has stopped syncing.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with=default_trackers(out) if with_trackers else None,
        project_dir=str(out),
    )
    keep_group()
    return accelerator


_GROUP_CLOSER_REGISTERED = False


def keep_group() -> None:
    """Keep the launcher's process group for the life of the process and close it at exit.

    ``Accelerator.end_training`` destroys it, after which a second ``train`` in the same process (a resume
    after a pre-emption, the demo's tokenizer then prior) would find Accelerate believing it is still up. So
    runs end by finishing their trackers only (``trackers.end_trackers``), and the group is destroyed once, at
    exit (NCCL warns about a group never destroyed)."""
    global _GROUP_CLOSER_REGISTERED
    if _GROUP_CLOSER_REGISTERED or not torch.distributed.is_initialized():
        return

    def close() -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(close)
    _GROUP_CLOSER_REGISTERED = True


def describe_world(accelerator: Accelerator) -> str:
    """What a launch really got, e.g. "2 processes, MULTI_CPU, gloo, on cpu": printed when training starts, so
    a launcher that silently started fewer processes than its config asked for is seen at once."""
    n = accelerator.num_processes
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "no process group"
    kind = str(accelerator.distributed_type).split(".")[-1]
    return f"{n} process{'es' if n > 1 else ''}, {kind}, {backend}, on {accelerator.device}"
