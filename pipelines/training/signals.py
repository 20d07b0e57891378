"""Stopping together: SIGTERM/SIGINT (cluster pre-emption, Ctrl-C) become a flag the loop checks after each
step, and every process agrees on the host-side stop flags so that all of them stop after the same step."""

from __future__ import annotations

import signal
from typing import Any

import torch
from accelerate import Accelerator

_HOST_GROUP: Any = None  # the gloo group for HostFlags, made once per process (see HostFlags)


class SignalFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (cluster pre-emption).

    A context manager: installs its handler on entry (main thread only; elsewhere signals are left alone) and
    puts the previous handlers back on exit. ``signum`` is the signal received, or None. A second Ctrl-C
    raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
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


class HostFlags:
    """Per-step agreement between processes on facts only the host knows (a signal arrived, the time budget is
    spent), so every process stops after the same step: an all-reduce (max) of a small CPU tensor over a gloo
    group, which never waits for the GPU. One process: no communication."""

    def __init__(self, accelerator: Accelerator):
        global _HOST_GROUP
        self.active = accelerator.num_processes > 1 and torch.distributed.is_initialized()
        self.group = None
        if self.active and torch.distributed.get_backend() != "gloo":
            if _HOST_GROUP is None:  # new_group is itself collective: made once per process, by every process
                _HOST_GROUP = torch.distributed.new_group(backend="gloo")
            self.group = _HOST_GROUP

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: is it set on any process? Every process must call this with the same number of
        flags."""
        if not self.active:
            return list(flags)
        t = torch.tensor([float(f) for f in flags])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return [v > 0 for v in t.tolist()]
