"""Start a test's worker script in several processes the way torchrun does, for the multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def launch_workers(command: list[str], nproc: int, timeout: float, prefix: str = "workers-",
                   env: dict[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    """Run ``python COMMAND`` (a script and its arguments, or ``-c CODE ...``) in ``nproc`` processes, one thread each,
    with ``env`` added to the environment. With nproc > 1 they get the env:// rendezvous variables torchrun sets
    (RANK, WORLD_SIZE, MASTER_ADDR/PORT: what Accelerate and ``torch.distributed`` read), without torchrun's own agent
    process (it would import torch a third time on a 2-core machine); one process runs as a plain single process.
    If one fails, the others (blocked in a collective) are stopped; an ``AssertionError`` gives every exit code and
    the tail of each process's output. Returns each process's output."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logs = Path(tempfile.mkdtemp(prefix=prefix))
    procs = []
    for r in range(nproc):
        penv = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        if nproc > 1:
            penv |= {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        with (logs / f"rank{r}.log").open("w") as f:
            procs.append(subprocess.Popen([sys.executable, *command], env=penv, cwd=cwd, stdout=f,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    while [p.poll() for p in procs].count(None) and time.monotonic() < deadline:  # polls every process
        if any(p.returncode not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = [(logs / f"rank{r}.log").read_text() for r in range(nproc)]
    tails = "".join(f"--- rank {r} ---\n" + text[-4000:] for r, text in enumerate(out))
    assert all(p.returncode == 0 for p in procs), f"exit codes {[p.returncode for p in procs]}\n{tails}"
    return out
