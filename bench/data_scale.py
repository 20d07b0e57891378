"""Does memory, or the wait for the first training step, grow with the corpus? (issue 23, "data that outgrows memory")

Two synthetic corpora of 64x64 RGB PNGs, N and 10N images (``--sizes``), each a ``datasets`` ``save_to_disk`` folder
(an Arrow table of encoded PNGs with a ``ClassLabel``; image i drawn from ``(seed, i)``: a colour gradient with a
rectangle and some noise), go through the CLI as separate processes:

1. ``vqgen tokenize --raw --levels 256 --image-size 64 --channels 3`` (the 8-bit pixels as the grid: 64 x 64 x 3
   tokens per image, one byte each on disk) of the whole corpus (10% held out as the test split);
2. ``vqgen train-prior`` on that token folder for its first ``--steps`` steps (a small WaveNet: ``PRIOR`` flags,
   ``--log-every 1``, no score reference), stopped once step ``--steps`` is logged: the final evaluation and save are not measured.

For each process the script polls (every ``POLL_S``) the resident memory of the process and its children (psutil):
peak RSS, and peak RSS less the file-backed pages (``rss - shared``: the Arrow table and the token shards are
memory-mapped, and the pages of a mapped file that were read count in RSS although the kernel can drop them at any
time). Time to the first training step: from starting the command to ``train_log.csv`` appearing (written on step
1). Bytes per token: the token folder's shard bytes over its tokens. The acceptance of the issue: the 10N corpus
within 1.2x the N corpus's peak memory and 1.5x its time to the first step.

Run: ``python -m bench.data_scale`` (writes bench/results/data_scale.json and docs/benchmarks/data_scale.md);
``--quick`` (200 and 2,000 images, 5 steps, one run of each) prints only. ``--repeats`` (default 3): runs of each
stage per size, the sizes alternating; the median is reported with the range.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, cpu_model, write_results

POLL_S = 0.02  # memory and the training log are polled this often
SIZE = 64  # image side
LABELS = ["warm", "cool", "grey"]
# a WaveNet small enough for a step of 12,288-token grids to take about a second on one CPU thread: what is measured
# is what happens before and around the steps, not the model
PRIOR = ["--arch", "wavenet", "--residual-channels", "16", "--skip-channels", "16", "--dilation-cycle", "6"]


def _image(seed: int, i: int) -> tuple[bytes, int]:
    """PNG bytes of image i (64x64 RGB: a gradient and a rectangle, drawn from (seed, i)) and its label."""
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    label = int(rng.integers(len(LABELS)))
    base = rng.uniform(0, 255, 3) * (np.array([1.0, 0.6, 0.3]), np.array([0.3, 0.6, 1.0]), np.ones(3))[label]
    ramp = np.linspace(0, 1, SIZE)[None, :, None] * rng.uniform(-80, 80, 3)
    img = np.broadcast_to(base + ramp, (SIZE, SIZE, 3)).copy()
    x0, y0 = rng.integers(0, SIZE - 8, 2)
    w, h = rng.integers(4, SIZE - max(x0, y0), 2)
    img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)  # sensor-like noise: PNGs of a few KB, as small photos are
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), label


def build_corpus(folder: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """A ``save_to_disk`` folder of n synthetic PNGs (written by ``Dataset.from_generator``, in Arrow batches:
    never all in memory). Returns its size on disk and the seconds taken."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    def rows():
        for i in range(n):
            png, label = _image(seed, i)
            yield {"image": {"bytes": png, "path": f"img{i:07d}.png"}, "label": label}

    t = time.perf_counter()
    cache = folder.parent / f".{folder.name}-cache"
    ds = Dataset.from_generator(rows, features=Features({"image": HFImage(), "label": ClassLabel(names=LABELS)}),
                                cache_dir=str(cache))
    ds.save_to_disk(str(folder))
    del ds
    shutil.rmtree(cache, ignore_errors=True)
    return {"images": n, "bytes": _bytes(folder), "build_s": round(time.perf_counter() - t, 2)}


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _tree_memory(proc: Any) -> tuple[int, int]:
    """(rss, rss less file-backed pages) in bytes, summed over a psutil process and its descendants."""
    import psutil

    rss = anon = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            m = p.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += m.rss
        anon += m.rss - m.shared
    return rss, anon


def run_measured(args: list[str], log_file: Path, first_step: Path | None = None, stop_at_step: int | None = None,
                 timeout: float = 3600) -> dict[str, Any]:
    """Run ``vqgen ARGS`` (``python -m pipelines.cli``) and poll it: wall seconds, peak RSS and peak anonymous RSS
    (MiB) of its process tree, and with ``first_step`` (the run's ``train_log.csv``) the seconds until that file
    appeared. ``stop_at_step``: terminate the run once the log has a row of that step (SIGTERM: the loop saves a
    checkpoint and exits)."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with log_file.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT)
        proc = psutil.Process(child.pid)
        peak = peak_anon = 0
        first = None
        stopped = False
        while child.poll() is None:
            with_rss = _tree_memory(proc)
            peak, peak_anon = max(peak, with_rss[0]), max(peak_anon, with_rss[1])
            if first_step is not None and first is None and first_step.is_file():
                first = time.perf_counter() - t0
            if stop_at_step is not None and first is not None and not stopped and _logged(first_step, stop_at_step):
                child.terminate()
                stopped = True
            if time.perf_counter() - t0 > timeout:
                child.kill()
                raise RuntimeError(f"vqgen {args[0]} ran past {timeout} s; its log: {log_file}")
            time.sleep(POLL_S)
    wall = time.perf_counter() - t0
    if child.returncode != 0 and not stopped:
        raise RuntimeError(f"vqgen {' '.join(args)} failed ({child.returncode}):\n{log_file.read_text()[-3000:]}")
    res = {"wall_s": round(wall, 2), "peak_rss_mib": round(peak / 2**20, 1),
           "peak_anon_rss_mib": round(peak_anon / 2**20, 1)}
    if first_step is not None:
        if first is None:
            raise RuntimeError(f"{first_step} never appeared; the run's log: {log_file}")
        res["first_step_s"] = round(first, 2)
    return res


def _logged(csv_path: Path | None, step: int) -> bool:
    """Whether the training log has a row for ``step``."""
    try:
        lines = csv_path.read_text().splitlines()[1:] if csv_path else []
    except OSError:
        return False
    return any(line.split(",", 1)[0] == str(step) for line in lines)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One stage's runs -> the median of each measurement, with ``runs`` (every run) and ``range`` (min, max) kept."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    med = {k: float(np.median([r[k] for r in runs])) for k in keys}
    return med | {"runs": runs, "range": {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in keys}}


def build(work: Path, n: int, seed: int) -> dict[str, Any]:
    """The corpus of n images in ``work``."""
    corpus = work / f"corpus_{n}"
    row: dict[str, Any] = {"images": n, "corpus": build_corpus(corpus, n, seed)}
    print(f"{n} images: corpus {row['corpus']['bytes'] / 2**20:.1f} MiB in {row['corpus']['build_s']} s", flush=True)
    return row


def tokenize_run(work: Path, row: dict[str, Any], seed: int, rep: int) -> dict[str, Any]:
    """Tokenize the corpus of ``row`` (run ``rep``, into a fresh folder) and measure it; the token folder's sizes go
    into ``row["tokens"]``."""
    n = row["images"]
    tokens = work / f"tokens_{n}"
    shutil.rmtree(tokens, ignore_errors=True)
    tok_args = ["tokenize", "--raw", "--levels", "256", "--dataset", str(work / f"corpus_{n}"), "--image-size",
                str(SIZE), "--channels", "3", "--seed", str(seed), "--out", str(tokens), "--quiet"]
    res = run_measured(tok_args, work / f"tokenize_{n}_{rep}.log")
    head = json.loads((tokens / "tokens.json").read_text())
    n_tokens = sum(head["counts"].values()) * int(np.prod(head["token_shape"]))
    shard_bytes = sum((tokens / f["file"]).stat().st_size for s in head["shards"].values() for f in s["files"])
    row["tokens"] = {"grids": head["counts"], "token_shape": head["token_shape"], "tokens": n_tokens,
                     "shard_bytes": shard_bytes, "bytes_per_token": round(shard_bytes / n_tokens, 4)}
    print(f"{n} images, run {rep}: tokenize {res}, {row['tokens']['bytes_per_token']} bytes/token", flush=True)
    return res


def train_run(work: Path, row: dict[str, Any], steps: int, batch_size: int, seed: int, rep: int) -> dict[str, Any]:
    """``train-prior`` on the token folder of ``row`` for ``steps`` steps (run ``rep``), measured."""
    n = row["images"]
    run = work / f"prior_{n}"
    shutil.rmtree(run, ignore_errors=True)
    prior_args = ["train-prior", "--tokens", str(work / f"tokens_{n}"), *PRIOR, "--out", str(run), "--steps",
                  str(max(steps, 1) + 1000), "--batch-size", str(batch_size), "--log-every", "1", "--eval-every",
                  "100000", "--save-every", "100000", "--reference-fraction", "0", "--seed", str(seed), "--quiet",
                  "--device", "cpu"]
    res = run_measured(prior_args, work / f"train_prior_{n}_{rep}.log", first_step=run / "train_log.csv",
                       stop_at_step=steps)
    print(f"{n} images, run {rep}: train-prior {res}", flush=True)
    return res


def measure(work: Path, sizes: list[int], steps: int, batch_size: int, seed: int, repeats: int) -> list[dict[str, Any]]:
    """Build both corpora, then ``repeats`` rounds of tokenize (both sizes), then ``repeats`` rounds of train-prior
    (both sizes), the two sizes alternating so that a change in the machine's load falls on both. Each stage's row
    holds the median of its runs (``runs``, ``range``: all of them)."""
    rows = [build(work, n, seed) for n in sizes]
    tok: list[list[dict[str, Any]]] = [[] for _ in rows]
    tr: list[list[dict[str, Any]]] = [[] for _ in rows]
    for rep in range(repeats):
        for i, row in enumerate(rows):
            tok[i].append(tokenize_run(work, row, seed, rep))
    for rep in range(repeats):
        for i, row in enumerate(rows):
            tr[i].append(train_run(work, row, steps, batch_size, seed, rep))
    for i, row in enumerate(rows):
        row["tokenize"], row["train_prior"] = _median_run(tok[i]), _median_run(tr[i])
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[20_000, 200_000], metavar=("N", "M"),
                    help="the two corpus sizes, in images (the issue compares N and 10N)")
    ap.add_argument("--steps", type=int, default=50, help="training steps measured")
    ap.add_argument("--batch-size", type=int, default=4, help="train-prior batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed at the end)")
    ap.add_argument("--note", default="", help="a paragraph for the page: what the numbers say (kept in the results)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each stage per size (the median is reported)")
    ap.add_argument("--quick", action="store_true", help="200 and 2,000 images, 5 steps, 1 run; print only")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.steps, a.repeats = [200, 2000], 5, 1
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = measure(work, a.sizes, a.steps, a.batch_size, a.seed, max(1, a.repeats))
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    small, big = rows
    ratio = lambda stage, key: round(big[stage][key] / max(small[stage][key], 1e-9), 3)  # noqa: E731
    results = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sizes": a.sizes, "steps": a.steps, "batch_size": a.batch_size, "seed": a.seed, "repeats": a.repeats,
        "note": a.note,
        "command": "python -m bench.data_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
        "ratios": {"tokenize_peak_rss": ratio("tokenize", "peak_rss_mib"),
                   "tokenize_peak_anon_rss": ratio("tokenize", "peak_anon_rss_mib"),
                   "tokenize_wall": ratio("tokenize", "wall_s"),
                   "train_peak_rss": ratio("train_prior", "peak_rss_mib"),
                   "train_peak_anon_rss": ratio("train_prior", "peak_anon_rss_mib"),
                   "train_first_step": ratio("train_prior", "first_step_s")},
    }
    r = results["ratios"]
    results["targets"] = {"peak_rss_within_1.2x": max(r["tokenize_peak_rss"], r["train_peak_rss"]) <= 1.2,
                          "first_step_within_1.5x": r["train_first_step"] <= 1.5}
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
    if a.quick:
        return results
    write_results("data_scale", results, markdown(results))
    return results


def markdown(res: dict[str, Any]) -> str:
    """docs/benchmarks/data_scale.md from the results."""
    n, m = res["sizes"]
    rows = {r["images"]: r for r in res["rows"]}
    r = res["ratios"]
    md = ["# Data at scale: memory and start-up against corpus size", "",
          f"`{res['command']}` (OMP_NUM_THREADS={res['omp_num_threads']}) on {res['cores']} cores ({res['cpu']}): "
          f"synthetic 64x64 RGB PNG corpora of {n:,} and {m:,} images as `save_to_disk` Arrow folders; "
          "`vqgen tokenize --raw --levels 256 --image-size 64 --channels 3`, then `vqgen train-prior "
          f"{' '.join(PRIOR)} --batch-size {res['batch_size']}` stopped after step {res['steps']}. Memory is polled every "
          f"{int(POLL_S * 1000)} ms over the process tree: peak RSS, and peak RSS less file-backed pages (the Arrow "
          "table and the token shards are memory-mapped; their pages count in RSS once read, but the kernel can drop "
          "them; the readers drop them as they go, docs/DATA.md). First step: command start to `train_log.csv` "
          f"appearing (step 1). Each stage ran {res.get('repeats', 1)} time(s) per size, the sizes alternating; the "
          "table gives the median and, in brackets, the lowest and highest run; ratios are of the medians.", "",
          "| | " + " | ".join(f"{k:,} images" for k in (n, m)) + " | ratio |", "|---|---|---|---|"]

    def cell(row: dict[str, Any], get: Any, fmt: str) -> str:
        v = format(get(row), fmt)
        stage, key = getattr(get, "stage", None), getattr(get, "key", None)
        spread = row.get(stage, {}).get("range", {}).get(key) if stage else None
        return v if not spread or len(row[stage].get("runs", [])) < 2 else \
            f"{v} [{format(spread[0], fmt)}-{format(spread[1], fmt)}]"

    def line(name: str, get: Any, fmt: str, ratio: float | None) -> str:
        return (f"| {name} | {cell(rows[n], get, fmt)} | {cell(rows[m], get, fmt)} | "
                f"{'' if ratio is None else f'{ratio:.2f}x'} |")

    def of(stage: str, key: str) -> Any:
        f = lambda x: x[stage][key]  # noqa: E731
        f.stage, f.key = stage, key
        return f

    md += [line("corpus on disk (MiB)", lambda x: x["corpus"]["bytes"] / 2**20, ".1f", None),
           line("tokenize: wall (s)", of("tokenize", "wall_s"), ".1f", r["tokenize_wall"]),
           line("tokenize: peak RSS (MiB)", of("tokenize", "peak_rss_mib"), ".0f", r["tokenize_peak_rss"]),
           line("tokenize: peak RSS less file pages (MiB)", of("tokenize", "peak_anon_rss_mib"), ".0f",
                r["tokenize_peak_anon_rss"]),
           line("token shards (MiB)", lambda x: x["tokens"]["shard_bytes"] / 2**20, ".1f", None),
           line("bytes per token", lambda x: x["tokens"]["bytes_per_token"], ".3f", None),
           line("train-prior: time to first step (s)", of("train_prior", "first_step_s"), ".2f",
                r["train_first_step"]),
           line("train-prior: peak RSS (MiB)", of("train_prior", "peak_rss_mib"), ".0f", r["train_peak_rss"]),
           line("train-prior: peak RSS less file pages (MiB)", of("train_prior", "peak_anon_rss_mib"), ".0f",
                r["train_peak_anon_rss"])]
    t = res["targets"]
    md += ["", f"Targets of the issue: peak RSS within 1.2x: {'met' if t['peak_rss_within_1.2x'] else 'missed'}; "
               f"time to first step within 1.5x: {'met' if t['first_step_within_1.5x'] else 'missed'}."]
    if res.get("note"):
        md += ["", res["note"]]
    return "\n".join(md)


if __name__ == "__main__":
    main()
