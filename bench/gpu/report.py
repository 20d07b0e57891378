"""The bookkeeping of bench/gpu_check.sh: each step's exit status into its JSON record, and the run's summary.

``record``: after a step ran, merge its exit status, wall time and time cap into ``<results>/<step>.json`` (creating
the record when the step left none, e.g. killed at its cap before writing one; a pytest step's JUnit XML becomes its
counts and failures). ``skip``: record a step that did not run. ``summary``: join the step records into one JSON
(``gpu_check.json``) and a markdown section (``docs/benchmarks/gpu_check.md`` on a GPU run), print one line per step,
and exit 1 unless every step is ok. ``placeholder``: the markdown section before any GPU run.

Standard library only: this must work even where the step scripts' imports fail.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

STEPS = ("install", "environment", "tests", "sparse_attention", "train_mfu", "sampling", "fsdp", "tokenize")
TITLES = {"install": "0. install (missing packages, imports)", "environment": "1. environment and bf16 matmul peak",
          "tests": "2. CUDA tests", "sparse_attention": "3. flex sparse vs dense attention, 4k-64k",
          "train_mfu": "4. bf16 training throughput and MFU", "sampling": "5. KV-cached sampling vs HF generate()",
          "fsdp": "6. 1-GPU FSDP smoke run", "tokenize": "7. `vqgen tokenize` on the GPU and the CPU"}
TIMEOUT_CODES = (124, 137)  # timeout(1): the cap was reached (137: also killed after the grace period)

HOWTO = """\
`bench/gpu_check.sh` is the one prepared script for a GPU machine: on one H100 / H200 it runs, in at most 8 minutes:

0. an install step (what `bench/gpu/wheels.txt` pins and the interpreter lacks, from a carried `wheelhouse/`, with
   `pip install --no-deps`, so torch is never touched; the repository goes on `PYTHONPATH`, nothing is built);
1. the machine (nvidia-smi, torch, CUDA, package versions) and a measured bf16 matmul rate (8192^3), the MFU ceiling;
2. the CUDA tests (`tests/test_cuda.py`: tokenizers and priors on the GPU equal to the CPU, flex == factorised ==
   dense sparse attention, cached == uncached sampling, `train_prior` / `train_tokenizer` a few steps in bf16);
3. flex sparse vs dense causal attention, one training step of the 2-layer d 128 prior at 4k-64k tokens, bf16
   (`bench/gpu/sparse_flex.py`, the prior table of `bench/sparse_attention.py`);
4. bf16 training throughput and MFU of an 8-layer d 512 Transformer prior, 1024 tokens, batch 32, eager, compiled
   and through the product's training loop (`bench/gpu/train_mfu.py`);
5. KV-cached sampling tokens/s, our prior against HF GPT-2 `generate()` at the sizes of issue 12 item 5, batch 1 and
   16 (`bench/gpu/sampling_vs_hf.py`);
6. a 1-GPU FSDP smoke run: `accelerate launch --config_file scripts/configs/fsdp.yaml --num_processes 1
   scripts/train_prior.py ...` with evaluation, checkpoints, the final save, `--resume`, then load and sample
   (`bench/gpu/fsdp_smoke.py`); steps 2 and 6 run side by side (neither is timed);
7. `vqgen tokenize --device cuda` of 4,000 synthetic 64x64 RGB PNGs (`bench.data_scale.build_corpus`) with an
   untrained tokenizer of the photos recipe's family and widths, as a user runs it (one process), against
   `--device cpu` on a fifth of them: images/s and tokens/s of the command and of the stage, and the fraction of
   token grids the two devices agree on (reported, not asserted); with the time left, the GPU run again with 8 decode
   workers (`bench/gpu/tokenize_device.py`, issue 23 item 5); it runs after step 5 and before step 4, whose
   compiled mode takes the time that is left.

Each step has a time cap and writes its own JSON record as it goes (`bench/results/gpu_check/<step>.json`, with the
logs); a failing or capped step is recorded and the run goes on. At the end `bench/results/gpu_check.json` holds every
step and this section is rewritten with the results; when `$OUT` is set, the summary, this section, the pytest log
and a tarball of the step records and logs are copied there.

How to run it with the device tool (no network there):

1. here, with a network: `PYTHON=.venv/bin/python bash bench/gpu_check.sh --prepare-wheels` (about 4 MiB of wheels
   into `wheelhouse/`, which git ignores);
2. `run` with `command: "bash bench/gpu_check.sh"`, `carry: ["wheelhouse"]`, `timeout_s: 560`; it uses the image's
   `python3` (set `PYTHON=` for another interpreter);
3. from the files it brings back: `gpu_check.json` to `bench/results/`, `gpu_check.md` to `docs/benchmarks/`,
   `tar -xzf gpu_check_steps.tar.gz -C bench/results` (each step's record and log), then
   `python -m bench.assemble_docs` puts this section into `docs/BENCHMARKS.md`.

Without a GPU, `bash bench/gpu_check.sh --dry-run` walks every step on the CPU at toy sizes, with a few of the CUDA
tests (`GPU_CHECK_DRY_TESTS=all`: all of them) run on the CPU as the device: about 90 CPU-seconds, 3.5-4.5 minutes on
the shared 2-core development machine at load 8-10, before step 7 was added; step 7 adds about 18 CPU-seconds and
25-40 s (three interpreter starts; the whole dry run took 170 s at load 3 with it); results in a temporary folder, or
`--results-dir DIR`.
`tests/bench/test_gpu_check.py` runs it (marked slow)."""


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def tail(path: str | None, lines: int = 40) -> list[str]:
    if not path or not Path(path).is_file():
        return []
    return Path(path).read_text(errors="replace").splitlines()[-lines:]


def junit(path: Path) -> dict[str, Any]:
    """Counts and failing / skipped test names from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    out: dict[str, Any] = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [],
                           "skipped_tests": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        out["total"] += 1
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None or error is not None:
            el = failure if failure is not None else error
            out["failed" if failure is not None else "errors"] += 1
            out["failures"].append({"test": name, "message": (el.get("message") or "")[:500]})
        elif skipped is not None:
            out["skipped"] += 1
            out["skipped_tests"].append({"test": name, "reason": (skipped.get("message") or "")[:200]})
        else:
            out["passed"] += 1
    return out


def record(a: argparse.Namespace) -> None:
    path = Path(a.results) / f"{a.step}.json"
    d = load(path) or {"step": a.step, "status": "missing", "rows": []}
    d |= {"rc": a.rc, "wall_s": a.seconds, "cap_s": a.cap}
    if a.junit:
        if Path(a.junit).is_file():
            d["tests"] = t = junit(Path(a.junit))
            d["status"] = "ok" if a.rc == 0 and not (t["failed"] or t["errors"]) else "failed"
            cuda_skips = [s["test"] for s in t["skipped_tests"] if "test_cuda" in s["test"]]
            if d["status"] == "ok" and not a.dry_run and cuda_skips:
                d["status"] = "failed"
                d["error"] = f"{len(cuda_skips)} CUDA test(s) skipped on the GPU run, e.g. {cuda_skips[0]}"
            elif t["failures"]:
                d["error"] = f"{t['failed'] + t['errors']} test(s) failed, e.g. {t['failures'][0]['test']}"
            if t["total"] == 0:
                d["status"], d["error"] = "failed", "pytest collected no tests"
        else:
            d["status"], d["error"] = "failed", f"pytest wrote no report (exit status {a.rc})"
    if a.rc in TIMEOUT_CODES:
        d["status"] = "timeout"
        d["error"] = f"stopped at its time cap of {a.cap:.0f} s" + (f" (after: {d['error']})" if d.get("error") else "")
    elif a.rc != 0 and d.get("status") not in ("failed",):
        d["status"] = "failed"
        d.setdefault("error", f"exit status {a.rc}")
    elif a.rc == 0 and d.get("status") in ("running", "missing"):
        d["status"] = "failed"
        d["error"] = "the step exited without finishing its record"
    if d["status"] != "ok":
        d["log_tail"] = tail(a.log)
        if d.get("error") in (None, f"exit status {a.rc}") and d["log_tail"]:
            d["error"] = f"exit status {a.rc}: {d['log_tail'][-1][:300]}"
    d["log"] = Path(a.log).name if a.log else None
    save(path, d)


def skip(a: argparse.Namespace) -> None:
    save(Path(a.results) / f"{a.step}.json", {"step": a.step, "status": "skipped", "error": a.reason, "rows": []})


# ---------------------------------------------------------------------------------------------- markdown
def _f(x: Any, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _sparse(d: dict) -> list[str]:
    rows = [r for r in d.get("rows", []) if "method" in r]
    dense = {r["L"]: r for r in rows if r["method"] == "dense causal" and "ms" in r}
    out = ["| L | method | ms / step | x dense time | extra peak MiB | x dense memory | first call s |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["L"], r["method"] != "dense causal", r["method"])):
        if "ms" not in r:
            why = "out of memory" if r.get("oom") else (r.get("error") or r.get("skipped") or "")
            out.append(f"| {r['L']} | {r['method']} | {why} | | | | |")
            continue
        b = dense.get(r["L"])
        t = _f(r["ms"] / b["ms"], "{:.2f}") if b else "-"
        m = _f(r["peak_mib"] / b["peak_mib"], "{:.2f}") if b and r.get("peak_mib") and b.get("peak_mib") else "-"
        out.append(f"| {r['L']} | {r['method']} | {r['ms']:.2f} | {t} | {_f(r.get('peak_mib'))} | {m} | "
                   f"{_f(r.get('first_call_s'))} |")
    return out


def _train(d: dict) -> list[str]:
    out = [f"Model {d.get('model')}, batch {d.get('batch')} ({d.get('tokens_per_step')} tokens/step), "
           f"{_f(d.get('flops_per_token', 0) / 1e6)} MFLOP/token (6 x {d.get('matmul_params'):,} matmul weights + "
           f"attention, PaLM); peaks: measured {_f((d.get('peak_tflops') or {}).get('measured'))} TFLOP/s, datasheet "
           f"{_f((d.get('peak_tflops') or {}).get('datasheet'))} TFLOP/s." if d.get("matmul_params") else "", "",
           "| mode | tokens/s | TFLOP/s | MFU (measured peak) | MFU (datasheet) | first step s |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in d.get("rows", []):
        if "tokens_per_s" not in r:
            out.append(f"| {r.get('mode')} | {r.get('error') or r.get('skipped')} | | | | |")
            continue
        mfu = [_f(100 * r[k], "{:.1f}%") if k in r else "-" for k in ("mfu_vs_measured", "mfu_vs_datasheet")]
        out.append(f"| {r['mode']} | {r['tokens_per_s']:,.0f} | {r['achieved_tflops']:.1f} | {mfu[0]} | {mfu[1]} | "
                   f"{_f(r.get('first_step_s'))} |")
    return out


def _sampling(d: dict) -> list[str]:
    out = ["| batch | ours tokens/s | HF generate() tokens/s | ours / HF (median of rounds) |", "|---:|---:|---:|---:|"]
    for r in d.get("rows", []):
        if "tokens_per_s" not in r:
            out.append(f"| {r.get('batch')} | {r.get('error') or r.get('skipped')} | | |")
            continue
        t = r["tokens_per_s"]
        out.append(f"| {r['batch']} | {t['ours']:,.0f} | {t['hf']:,.0f} | {r['ours_speedup']:.2f}x |")
    return out


def _tokenize(d: dict) -> list[str]:
    tok, corpus = d.get("tokenizer") or {}, d.get("corpus") or {}
    out = [f"{corpus.get('images', '-')} synthetic 64x64 RGB PNGs; tokenizer {(tok.get('config') or {}).get('autoencoder')}"
           f" {tok.get('token_shape')} grid, {tok.get('vocab_size')} codes, {_f(tok.get('parameters'), '{:,}')} "
           f"parameters, {tok.get('weights')}. Command: the whole `vqgen tokenize` process (start, imports, model "
           "load); stage: its own log line (read, decode, encode, write shards)." if tok else "", "",
           "| run | device | images | batch | workers | command s | images/s | stage s | images/s (stage) | "
           "tokens/s (stage) | grids (tokens) identical to run 1 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in d.get("rows", []):
        if "wall_s" not in r:
            out.append(f"| {r.get('run')} | {r.get('device')} | {r.get('error') or r.get('skipped')} | | | | | | | | |")
            continue
        v = r.get("vs_run_1")
        agree = f"{v['grids_identical']:.2%} ({v['tokens_identical']:.4%}) of {v['images_compared']}" if v else "-"
        out.append(f"| {r['run']} | {r['device']} | {r['images']} | {r['batch_size']} | {r['num_workers']} | "
                   f"{r['wall_s']:.2f} | {_f(r.get('images_per_s'), '{:,.0f}')} | {_f(r.get('stage_s'), '{:.2f}')} | "
                   f"{_f(r.get('stage_images_per_s'), '{:,.0f}')} | {_f(r.get('stage_tokens_per_s'), '{:,.0f}')} | "
                   f"{agree} |")
    ratio = d.get("cuda_over_cpu")
    if ratio:
        out += ["", f"cuda / cpu images/s ({'stage' if ratio['per'].startswith('stage') else 'command'}): "
                    f"{ratio['ratio']:.2f}x."]
    return out


def _tests(d: dict) -> list[str]:
    t = d.get("tests")
    if not t:
        return []
    out = [f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped "
           f"(of {t['total']})."]
    out += [f"- FAILED `{f['test']}`: {f['message'][:200]}" for f in t["failures"]]
    return out


def _fsdp(d: dict) -> list[str]:
    out = []
    for r in d.get("rows", []):
        if r.get("stage") == "train":
            out.append(f"- trained with `{r.get('world')}`; metrics {r.get('metrics')}; checkpoints "
                       f"{r.get('checkpoints')}")
        elif r.get("stage") == "resume":
            out.append(f"- resume: {r.get('skipped') or ('to step ' + str((r.get('metrics') or {}).get('step')))}")
        elif r.get("stage") == "load+sample":
            out.append(f"- loaded: held-out NLL {_f(r.get('nll_nats_loaded'), '{:.4f}')} nats vs "
                       f"{_f(r.get('nll_nats_recorded'), '{:.4f}')} recorded; samples {r.get('sample_shape')}")
    return out


def markdown(summary: dict | None) -> str:
    lines = ["## GPU check (`bench/gpu_check.sh`)", "", HOWTO, ""]
    if summary is None:
        lines += ["**No GPU run has happened yet.** The script and its steps have only been walked on the CPU "
                  "with `--dry-run` (toy sizes, which measure nothing about a GPU). This section is rewritten with "
                  "the numbers by the first run on a GPU machine.", ""]
        return "\n".join(lines)
    steps = summary["steps"]
    m = (steps.get("environment") or {}).get("machine") or {}
    smi = ((steps.get("environment") or {}).get("nvidia_smi") or {}).get("query") or {}
    what = "Dry run on the CPU (toy sizes: these numbers say nothing about a GPU)" if summary["dry_run"] else "Run"
    lines += ["### Results", "",
              f"{what} of {summary['finished'][:16]} UTC on " + (
                  f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB, driver {smi.get('driver_version', '-')}), CUDA "
                  f"{m.get('cuda')}, " if m.get("gpu") else f"{m.get('cpu', 'an unknown machine')}, ") +
              f"torch {m.get('torch', '-')}, python {m.get('python', '-')}, {m.get('cores')} CPU cores; "
              f"{summary['wall_s']:.0f} s in all.", "",
              "| step | status | seconds (cap) | note |", "|---|---|---:|---|"]
    for name in STEPS:
        d = steps.get(name)
        if d is None:
            continue
        note = (d.get("error") or "").replace("|", "/")[:160]
        lines.append(f"| {TITLES[name]} | {d.get('status')} | {_f(d.get('wall_s'), '{:.0f}')} "
                     f"({_f(d.get('cap_s'), '{:.0f}')}) | {note} |")
    env = steps.get("environment") or {}
    if env.get("peak_tflops_measured"):
        mm = env["rows"][0]
        lines += ["", f"Measured matmul: {mm['n']}^3 {mm['dtype']}, {mm['tflops']:.1f} TFLOP/s (mean of {mm['reps']} "
                  f"products); datasheet dense bf16: {_f(env.get('peak_tflops_datasheet'))} TFLOP/s."]
    for name, fn in (("tests", _tests), ("sparse_attention", _sparse), ("train_mfu", _train),
                     ("sampling", _sampling), ("fsdp", _fsdp), ("tokenize", _tokenize)):
        body = fn(steps.get(name) or {})
        if any(body):
            lines += ["", f"#### {TITLES[name]}", "", *body]
    return "\n".join(lines) + "\n"


def summary(a: argparse.Namespace) -> int:
    res = Path(a.results)
    steps = {name: load(res / f"{name}.json") for name in STEPS if (res / f"{name}.json").is_file()}
    out = {"dry_run": a.dry_run, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "wall_s": a.seconds, "ok": bool(steps) and all(d.get("status") == "ok" for d in steps.values()),
           "statuses": {k: d.get("status") for k, d in steps.items()}, "steps": steps}
    save(Path(a.json), out)
    Path(a.md).parent.mkdir(parents=True, exist_ok=True)
    Path(a.md).write_text(markdown(out))
    print("\ngpu_check summary" + (" (dry run)" if a.dry_run else "") + ":")
    for name, d in steps.items():
        print(f"  {name:18s} {d.get('status', '?'):8s} {_f(d.get('wall_s'), '{:6.0f}')} s  {(d.get('error') or '')[:120]}")
    print(f"wrote {a.json} and {a.md}")
    return 0 if out["ok"] else 1


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}",
                                 description=__doc__.strip().splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--results", required=True)
    r.add_argument("--step", required=True, choices=STEPS)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--cap", type=float, required=True)
    r.add_argument("--log", default=None)
    r.add_argument("--junit", default=None)
    r.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("skip")
    s.add_argument("--results", required=True)
    s.add_argument("--step", required=True, choices=STEPS)
    s.add_argument("--reason", required=True)
    m = sub.add_parser("summary")
    m.add_argument("--results", required=True)
    m.add_argument("--json", required=True)
    m.add_argument("--md", required=True)
    m.add_argument("--seconds", type=float, default=0.0)
    m.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("placeholder")
    p.add_argument("--md", required=True)
    a = ap.parse_args()
    if a.cmd == "record":
        record(a)
    elif a.cmd == "skip":
        skip(a)
    elif a.cmd == "summary":
        sys.exit(summary(a))
    else:
        Path(a.md).write_text(markdown(None) + "\n")


if __name__ == "__main__":
    main()
