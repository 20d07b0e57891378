"""Step 7 of bench/gpu_check.sh: ``vqgen tokenize --device cuda`` on one GPU, timed, against ``--device cpu``
(issue 23 item 5).

Data: ``bench.data_scale.build_corpus``, a ``save_to_disk`` folder of ``--images`` synthetic 64x64 RGB PNGs (default
4,000); ``vqgen tokenize`` holds out a seeded 10% of it as the test split. Codec: an image tokenizer of the family and
widths of ``recipes/photos/tokenizer.yaml`` (resnet on 2x2 patches, hidden 32, channel_mult [1, 2], two residual
blocks per resolution, FSQ 8x5x5x5: 1,000 codes on a 16x16 grid per image), built with ``torch.manual_seed(0)`` and
saved with ``save_pretrained`` **untrained**: random weights cost the same time as trained ones, but which grids the
two devices agree on may differ for a trained tokenizer.

Rows, each one ``python -m pipelines.cli tokenize --tokenizer DIR --dataset CORPUS --out OUT --device D
--batch-size B --seed 0 --quiet`` as its own process (what a user runs: interpreter start, imports, CUDA start and
model load included):

1. ``cuda``: the whole corpus;
2. ``cpu``: the same with ``--device cpu --limit L``, L a tenth of the training split: those first rows of the
   seeded split (the same images as in run 1: ``--limit`` takes a prefix) plus the whole test split, so about a fifth
   of the images;
   images/s is per image encoded, so the two runs compare although their sizes differ;
3. ``cuda`` with ``--num-workers W`` (default 8) decode processes, when the budget has the time for it: how much of
   run 1 was PNG decoding in the encoding process.

Each row: the command's wall seconds, the stage's own seconds (its log line ``tokenize: ... in S s``: reading,
decoding, encoding and writing the shards, after the model is loaded), images/s and tokens/s for both. The cpu row
also has the fraction of its token grids (and tokens) identical to run 1's on the same images (floating point on the
two devices may round near an FSQ level boundary differently, and cuDNN may use TF32: reported, not asserted); run 3
the same against run 1 (the tokens are documented to be the same for any number of workers).

Dry run: 64 images, batch 16, the cpu row at ``--limit`` a quarter, no run 3; the "cuda" runs use the CPU
(``stepkit.device_for``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gpu import stepkit

ROOT = stepkit.ROOT
# recipes/photos/tokenizer.yaml's model (its training fields left out): the image tokenizer a user would train
TOKENIZER = dict(modality="image", autoencoder="resnet", patch_size=2, hidden_channels=32, channel_mult=[1, 2],
                 num_res_blocks=2, quantizer="fsq", fsq_levels=[8, 5, 5, 5], image_size=64, channels=3)
FULL = dict(images=4000, batch=256, cpu_fraction=0.1, workers=8)
DRY = dict(images=64, batch=16, cpu_fraction=0.25, workers=0)
MIN_START_S = 8  # a row starts only with this much of the step's budget left (a cold interpreter takes ~5 s)
STAGE_LINE = re.compile(r"tokenize: \d+ shards by \d+ process(?:es)? in ([0-9.]+) s")


def make_tokenizer(folder: Path) -> dict[str, Any]:
    """Save the untrained photos-recipe tokenizer to ``folder``; what it is."""
    import torch

    from tokenizers_vq import build_tokenizer
    from tokenizers_vq.config import TokenizerConfig

    torch.manual_seed(0)
    tok = build_tokenizer(TokenizerConfig(**TOKENIZER)).eval()
    tok.save_pretrained(folder)
    return {"config": TOKENIZER, "weights": "random (untrained, torch.manual_seed(0)): timing only",
            "parameters": sum(p.numel() for p in tok.parameters()), "token_shape": list(tok.token_shape()),
            "vocab_size": tok.vocab_size}


def run_tokenize(tokenizer: Path, corpus: Path, out: Path, device: str, batch: int, timeout: float,
                 limit: int | None = None, workers: int = 0) -> dict[str, Any]:
    """One ``vqgen tokenize`` process: its wall seconds, the stage's own seconds (None when its log line is
    missing) and the grids it wrote; ``RuntimeError`` with the output's tail on a non-zero exit or past
    ``timeout``."""
    cmd = [sys.executable, "-m", "pipelines.cli", "tokenize", "--tokenizer", str(tokenizer), "--dataset", str(corpus),
           "--out", str(out), "--device", device, "--batch-size", str(batch), "--seed", "0", "--quiet"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if workers:
        cmd += ["--num-workers", str(workers)]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"vqgen tokenize did not finish in the {timeout:.0f} s left") from e
    wall = time.perf_counter() - t
    text = r.stdout + r.stderr
    print(text[-2000:], flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"exit status {r.returncode}: " + " | ".join(text.strip().splitlines()[-6:])[-600:])
    from pipelines.data.tokens import load_token_header

    counts = dict(load_token_header(out).counts)
    m = STAGE_LINE.findall(text)
    return {"wall_s": round(wall, 3), "stage_s": float(m[-1]) if m else None, "grids": counts,
            "command": " ".join(["vqgen", *cmd[3:]])}


def rates(row: dict[str, Any], grid: int) -> None:
    """images/s and tokens/s over the command's wall time and over the stage's own time, into ``row``."""
    n = sum(row["grids"].values())
    row["images"] = n
    for key, secs in (("", row["wall_s"]), ("stage_", row["stage_s"])):
        if secs:
            row[f"{key}images_per_s"] = round(n / secs, 1)
            row[f"{key}tokens_per_s"] = round(n * grid / secs, 1)


def agreement(a: Path, b: Path) -> dict[str, Any]:
    """How many of folder ``b``'s grids equal folder ``a``'s on the same images: each split of ``b`` is a prefix of
    ``a``'s (``--limit`` keeps the first rows of the seeded training split; the test split is whole in both)."""
    import torch

    from pipelines.data.tokens import load_tokens

    same = grids = same_tok = toks = 0
    for split in ("train", "test"):
        tb, lb = load_tokens(b, split)
        ta, la = load_tokens(a, split)
        ta, la = ta[:len(tb)], la[:len(tb)]
        if len(ta) != len(tb) or not torch.equal(la, lb):
            raise RuntimeError(f"the {split} splits of {a} and {b} do not hold the same images (labels differ)")
        eq = ta.long() == tb.long()
        same += int(eq.flatten(1).all(1).sum()) if len(eq) else 0
        grids += len(tb)
        same_tok += int(eq.sum())
        toks += eq.numel()
    return {"images_compared": grids, "grids_identical": round(same / max(grids, 1), 4),
            "tokens_identical": round(same_tok / max(toks, 1), 6)}


def main() -> None:
    args = stepkit.parse_args(__doc__, lambda ap: (
        ap.add_argument("--images", type=int, default=None, help="corpus size (default 4,000; dry run 64)"),
        ap.add_argument("--batch-size", type=int, default=None, help="--batch-size of vqgen tokenize (256; dry 16)"),
        ap.add_argument("--workers", type=int, default=None, help="run 3's --num-workers (8; dry run 0: no run 3)")))
    with stepkit.Record("tokenize", args) as rec:
        device = stepkit.device_for(args)
        s = dict(DRY if args.dry_run else FULL)
        s |= {k: v for k, v in (("images", args.images), ("batch", args.batch_size), ("workers", args.workers))
              if v is not None}
        rec.data |= {"machine": stepkit.machine(device), "sizes": s}
        import datasets

        from bench.data_scale import build_corpus

        datasets.disable_progress_bars()  # the corpus's writing bars; the step's log has its own lines
        with tempfile.TemporaryDirectory(prefix="gpu_check_tokenize_") as tmp:
            work = Path(tmp)
            corpus = work / "corpus"
            rec.data["corpus"] = build_corpus(corpus, s["images"], seed=0) | {
                "what": "bench.data_scale.build_corpus: synthetic 64x64 RGB PNGs, save_to_disk"}
            rec.data["tokenizer"] = info = make_tokenizer(work / "tokenizer")
            grid = info["token_shape"][0] * info["token_shape"][1]
            print(f"corpus: {s['images']} images in {rec.data['corpus']['build_s']} s; tokenizer: "
                  f"{info['parameters']:,} parameters, {info['token_shape']} grid, untrained", flush=True)
            limit = max(1, int(s["images"] * (1 - 0.1) * s["cpu_fraction"]))  # ~cpu_fraction of the training split
            plan = [("cuda", device, None, 0), ("cpu", "cpu", limit, 0)]
            if s["workers"]:
                plan.append((f"cuda, {s['workers']} workers", device, None, s["workers"]))
            first: Path | None = None
            walls: dict[str, float] = {}  # each measured run's command seconds
            for i, (name, dev, lim, workers) in enumerate(plan):
                need = MIN_START_S
                if workers and "cuda" in walls:  # the optional run: only with run 1's time (and some) left
                    need = max(need, 1.2 * walls["cuda"])
                if rec.time_left() < need:
                    if not workers:  # the optional run is left out silently; the others are the step
                        rec.row({"run": name, "device": dev, "skipped": f"budget: {rec.time_left():.0f} s left"})
                    continue
                out = work / f"tokens_{i}"
                row: dict[str, Any] = {"run": name, "device": dev, "batch_size": s["batch"], "num_workers": workers,
                                       "limit": lim}
                try:
                    row |= run_tokenize(work / "tokenizer", corpus, out, dev, s["batch"], rec.time_left() - 2,
                                        limit=lim, workers=workers)
                    rates(row, grid)
                    walls[name] = row["wall_s"]
                    if first is None:
                        first = out
                    else:
                        row["vs_run_1"] = agreement(first, out)
                except Exception as e:  # noqa: BLE001 - keep the other runs
                    row["error"] = stepkit.first_line(e)
                rec.row(row)
                if "error" in row:
                    print(f"{name}: {row['error']}", flush=True)
                    continue
                agree = row.get("vs_run_1")
                print(f"{name:18s} on {dev}: {row['images']:6d} images, command {row['wall_s']:6.2f} s "
                      f"({row['images_per_s']:8,.1f} images/s), stage {row['stage_s'] or float('nan'):6.2f} s "
                      f"({row.get('stage_images_per_s', float('nan')):8,.1f} images/s, "
                      f"{row.get('stage_tokens_per_s', float('nan')):10,.0f} tokens/s)"
                      + (f"; grids identical to run 1: {agree['grids_identical']:.2%} of {agree['images_compared']}"
                         if agree else ""), flush=True)
            ok = {r["run"]: r for r in rec.data["rows"] if "error" not in r and "skipped" not in r}
            if "cuda" in ok and "cpu" in ok:
                key = "stage_images_per_s" if ok["cuda"].get("stage_s") and ok["cpu"].get("stage_s") else \
                    "images_per_s"
                rec.data["cuda_over_cpu"] = {"per": key, "ratio": round(ok["cuda"][key] / ok["cpu"][key], 2)}
                print(f"cuda / cpu ({key}): {rec.data['cuda_over_cpu']['ratio']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
