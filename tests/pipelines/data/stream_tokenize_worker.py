"""``vqgen tokenize --streaming`` by several processes (launched by test_streaming_tokenize_ddp.py the way torchrun
does): ``python stream_tokenize_worker.py OUT STEPS_JSON``, the steps run in order, each followed by a barrier:

- ``{"run": CLI args, "die": {rank: [split, k]}}``: ``vqgen tokenize ARGS`` in this process; a process whose rank
  has a ``die`` entry raises when it comes to write that shard (it stops there, as a killed process would: the
  entries are chosen so that no process is left waiting in a collective for a stopped one);
- ``{"snapshot": folder}``: the main process records the mtime and SHA-256 of every file in the
  folder, and the JSON files' contents;
- ``{"delete": [paths]}``: the main process removes those files.

Each process writes OUT/rank{R}.json: per step, the exit code and the ``vqgen.tokenize`` log lines (snapshot: the
mtimes and hashes)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from stream_recorder import dying_at_shard  # beside this script

import pipelines.stages.tokenize as tk
from pipelines.cli import main as cli_main


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    out, steps = Path(sys.argv[1]), json.loads(sys.argv[2])
    rank = int(os.environ["RANK"])
    tk._world()  # joins the launch's process group, which the barriers below use
    lines = _Lines()
    logger = logging.getLogger("vqgen.tokenize")
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    done: list[dict] = []
    for step in steps:
        if "run" in step:
            die = step.get("die", {}).get(str(rank))
            lines.lines = []
            with dying_at_shard(*die) if die is not None else nullcontext():
                rc = cli_main(["tokenize", *step["run"]])
            done.append({"rc": rc, "log": lines.lines})
        elif "snapshot" in step:
            folder = Path(step["snapshot"])
            files = sorted(folder.iterdir()) if rank == 0 else []
            done.append({"mtimes": {p.name: p.stat().st_mtime_ns for p in files},
                         "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
                         "sidecars": {p.name: json.loads(p.read_text()) for p in files if p.suffix == ".json"}})
        elif "delete" in step:
            if rank == 0:
                for p in step["delete"]:
                    Path(p).unlink()
            done.append({})
        torch.distributed.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(done))


if __name__ == "__main__":
    main()
