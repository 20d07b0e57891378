"""`vqgen tokenize` in one process and in two (issue 23): the speed-up of a launch, and the same folder either way.

A freshly initialised FSQ image tokenizer (``--hidden-channels``; the time does not depend on the weights) encodes
mnist5k (``--limit`` training digits and the 500 test digits) through the CLI, as separate processes:

- 1 process, torch's default threads (one per core);
- 1 process, 1 thread;
- 2 processes of 1 thread each, launched as torchrun launches them (RANK, WORLD_SIZE, MASTER_ADDR/PORT; gloo).

Each row gives the wall clock of the tokenization (the stage's own clock, from the first shard to the manifest:
``tokenize: N shards by W processes in S s``) and of the whole command (Python start, imports, dataset loading,
tokenization), the best of ``--repeats``. The two-process folder must equal the one-process folder shard for
shard (same SHA-256 per shard), else the script fails. Then a run is killed (SIGKILL) once half of its shards are
finished and restarted with ``--resume``: the shards it kept and encoded are counted, and the folder must again equal
the uninterrupted one.

Run: ``python -m bench.tokenize_parallel`` on an otherwise idle machine (writes bench/results/tokenize_parallel.json
and docs/benchmarks/tokenize_parallel.md); ``--quick`` (300 digits, 1 repeat) prints only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, cpu_model, write_results

STAGE = re.compile(r"tokenize: (\d+) shards by (\d+) process(?:es)? in ([0-9.]+) s")
COUNTS = re.compile(r"tokenize: (\d+) shards encoded, (\d+) kept from an earlier run")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tokenize(args: list[str], nproc: int, threads: int | None) -> tuple[float, float, str]:
    """(stage seconds, command seconds, main process's log) of ``vqgen tokenize ARGS`` in ``nproc`` processes with
    ``threads`` intra-op threads each (None: torch's default)."""
    port, procs = _port(), []
    logs = Path(tempfile.mkdtemp(prefix="tokenize-bench-"))
    t = time.perf_counter()
    for r in range(nproc):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("OMP_NUM_THREADS", None)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        if nproc > 1:
            env |= {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        f = (logs / f"{r}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "pipelines.cli", "tokenize", *args], env=env, cwd=ROOT,
                                      stdout=f, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t
    text = (logs / "0.log").read_text()
    if any(codes):
        raise RuntimeError(f"tokenize failed ({codes}):\n" + "\n".join((logs / f"{r}.log").read_text()[-3000:]
                                                                      for r in range(nproc)))
    m = STAGE.search(text)
    if not m:
        raise RuntimeError(f"no stage time in the log:\n{text[-2000:]}")
    return float(m[3]), wall, text


def kill_and_resume(args: list[str], out: Path, shards: int, poll_s: float = 0.01) -> dict[str, Any]:
    """``vqgen tokenize ARGS --out OUT`` in one process of one thread, killed with SIGKILL once about half of its
    ``shards`` are finished (their sidecar records written), then run again with ``--resume``: how many shards the
    killed run finished, how many the resumed run encoded and how many it kept (from its log)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = out.with_suffix(".killed.log")
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "tokenize", *args, "--out", str(out)], env=env,
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None and len(list(out.glob("*-?????.json"))) < shards // 2:
            time.sleep(poll_s)
        if proc.poll() is not None:
            raise RuntimeError(f"tokenize ended before half of its {shards} shards were written; its log: {log}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = len(list(out.glob("*-?????.json")))
    stage, wall, text = run_tokenize([*args, "--out", str(out), "--resume"], 1, 1)
    m = COUNTS.search(text)
    if not m:
        raise RuntimeError(f"no shard counts in the resumed run's log:\n{text[-2000:]}")
    return {"finished_when_killed": finished, "encoded_on_resume": int(m[1]), "kept_on_resume": int(m[2]),
            "resume_stage_s": round(stage, 3), "resume_command_s": round(wall, 3)}


def shard_digests(folder: Path) -> dict[str, list[str]]:
    head = json.loads((folder / "tokens.json").read_text())
    return {s: [f["sha256"] for f in info["files"]] for s, info in head["shards"].items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=5000, help="training digits (mnist5k has 5,000; the test split 500)")
    ap.add_argument("--hidden-channels", type=int, default=64, help="the tokenizer's width")
    ap.add_argument("--repeats", type=int, default=2, help="runs per row; the best is reported")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="300 digits, 1 repeat; print only")
    a = ap.parse_args(argv)
    if a.quick:
        a.limit, a.repeats = 300, 1
    import torch

    from tokenizers_vq import build_tokenizer

    work = Path(a.work or tempfile.mkdtemp(prefix="tokenize-parallel-"))
    torch.manual_seed(0)
    tok = build_tokenizer(modality="image", quantizer="fsq", channels=1, image_size=32,
                          hidden_channels=a.hidden_channels)
    tok.save_pretrained(work / "tokenizer")
    base = ["--tokenizer", str(work / "tokenizer"), "--dataset", "mnist5k", "--limit", str(a.limit), "--device", "cpu",
            "--quiet", "--batch-size", "64"] + (["--shard-rows", "50"] if a.quick else [])  # quick: shards to kill between
    layouts = [("1 process, default threads", 1, None), ("1 process, 1 thread", 1, 1),
               ("2 processes, 1 thread each", 2, 1)]
    rows, digests = [], {}
    for name, nproc, threads in layouts:
        best = None
        for i in range(a.repeats):
            out = work / f"tokens_{nproc}_{threads}_{i}"
            stage, wall, _ = run_tokenize([*base, "--out", str(out)], nproc, threads)
            digests.setdefault(name, shard_digests(out))
            if digests[name] != next(iter(digests.values())):
                raise RuntimeError(f"{name}: the shards differ from {next(iter(digests))}'s")
            if best is None or stage < best[0]:
                best = (stage, wall)
        rows.append({"layout": name, "processes": nproc, "threads": threads, "stage_s": round(best[0], 3),
                     "command_s": round(best[1], 3)})
        print(f"{name}: tokenization {best[0]:.2f} s, whole command {best[1]:.2f} s", flush=True)
    n_shards = sum(len(v) for v in next(iter(digests.values())).values())
    killed = kill_and_resume(base, work / "tokens_killed", n_shards)
    killed["same_shards"] = shard_digests(work / "tokens_killed") == next(iter(digests.values()))
    if not killed["same_shards"]:
        raise RuntimeError("the killed and resumed folder differs from the uninterrupted one")
    print(f"kill -9 at half-way: {killed}", flush=True)
    ref = {r["layout"]: r for r in rows}
    one, one_t1, two = (ref[n] for n, _, _ in layouts)
    results = {"cpu": cpu_model(), "cores": os.cpu_count(), "limit": a.limit, "hidden_channels": a.hidden_channels,
               "repeats": a.repeats, "rows": rows, "same_shards": True,
               "speedup_stage": round(one["stage_s"] / two["stage_s"], 3),
               "speedup_stage_vs_1_thread": round(one_t1["stage_s"] / two["stage_s"], 3),
               "speedup_command": round(one["command_s"] / two["command_s"], 3),
               "shards": n_shards, "kill_and_resume": killed}
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
    if a.quick:
        return results
    md = ["# Parallel tokenization", "",
          f"`python -m bench.tokenize_parallel`: `vqgen tokenize` of mnist5k ({a.limit} training + 500 test digits, "
          f"{results['shards']} shards) with a fresh FSQ tokenizer (width {a.hidden_channels}), on {results['cores']} "
          f"cores ({results['cpu']}); best of {a.repeats}. Tokenization: the stage's clock, first shard to manifest; "
          "command: the whole process, Python start and dataset loading included. The two-process folder is the "
          "one-process folder, shard for shard (same SHA-256).", "",
          "| layout | tokenization (s) | whole command (s) |", "|---|---|---|"]
    md += [f"| {r['layout']} | {r['stage_s']:.2f} | {r['command_s']:.2f} |" for r in rows]
    md += ["", f"Two processes against one with default threads: {results['speedup_stage']:.2f}x on the tokenization, "
               f"{results['speedup_command']:.2f}x on the whole command; against one process of one thread: "
               f"{results['speedup_stage_vs_1_thread']:.2f}x.", "",
           f"Killed with SIGKILL once half of the {n_shards} shards were finished (1 process, 1 thread): "
           f"{killed['finished_when_killed']} shards were finished; `--resume` kept {killed['kept_on_resume']} "
           f"(checksums verified) and encoded {killed['encoded_on_resume']}, in {killed['resume_stage_s']:.2f} s; the "
           f"folder equals the uninterrupted one shard for shard: {'yes' if killed['same_shards'] else 'NO'}."]
    write_results("tokenize_parallel", results, "\n".join(md))
    return results


if __name__ == "__main__":
    main()
