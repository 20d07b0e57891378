"""Lossless compression of binarised mnist5k digits over five cross-validation folds (issue 25): a headline that
cannot be tuned to one split.

mnist5k's 5,000 digits are pooled and cut into 5 folds stratified by digit (``vqgen tokenize --folds 5 --fold K``,
``pipelines/data/folds.py``: a fixed permutation, each digit in exactly one test fold, 1,000 test and 4,000 training
digits per fold). On each fold: JBIG (pbmtojbg, the best standard tool of bench/compression.py, its best tiling and
options) on the fold's test digits, and each vqgen prior of ``--rows`` trained through the CLI's stage functions on
the fold's training digits with its recipe file (recipes/compression/*.yaml, as bench/compression.py reads them)
and coded with the container of ``vqgen compress``. The report: per fold and as mean, standard deviation, min and
max, the bytes, the nats per digit and how many times smaller than JBIG each prior is.

``--validation`` trains on the fold's training digits less a stratified 10% and codes that 10% instead (the test
fold is never read): the mode for choosing a recipe.

Run: ``OMP_NUM_THREADS=2 python -m bench.compression_folds --rows ngram pixelcnn`` (writes
bench/results/compression_folds.json and docs/benchmarks/compression_folds.md; ``python -m bench.compression
--folds 5`` runs the same); ``--quick``: 2 folds, 20 test digits, tiny budgets, print only. Long runs go a fold at
a time: ``--only K --json foldK.json`` per fold, then ``--merge fold*.json`` writes the report from the per-fold
files (each must hold one set of folds, with the same rows and recipes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, cpu_model, parse_overrides, recipe_keys, train_row, write_results

LEVELS = 2  # binarised digits: the README's headline
QUICK = {"ngram": {"ngram_order": 4}, "pixelcnn": {"pixelcnn_layers": 1, "pixelcnn_channels": 4, "steps": 2,
                                                   "batch_size": 4, "compile": False, "mixed_precision": "no"},
         "histogram": {}, "made": {"made_hidden": [8], "steps": 2}, "transformer": {"n_layer": 1, "d_model": 16,
                                                                                  "steps": 2}}


def fold_tokens(work: Path, folds: int, fold: int, validation: bool) -> Path:
    """``vqgen tokenize --raw --levels 2 --dataset mnist5k --folds F --fold K [--validation]``."""
    from pipelines.stages.tokenize import tokenize

    out = work / f"tokens_fold{fold}{'_val' if validation else ''}"
    tokenize({"name": "mnist5k", "folds": folds, "fold": fold, "validation": validation}, out, raw_levels=LEVELS,
             progress=False, device="cpu")
    return out


def run_fold(fold: int, args: argparse.Namespace, work: Path, recipes: dict[str, tuple[dict[str, Any], str]]
             ) -> dict[str, Any]:
    """JBIG and every prior of ``recipes`` on one fold; returns {fold, n, n_train, rows}."""
    from bench.compression import jbig_row, prior_row
    from pipelines.data.tokens import load_tokens

    tokens = fold_tokens(work, args.folds, fold, args.validation)
    grids = load_tokens(tokens, "test")[0][: args.n].long()
    n_train = int(load_tokens(tokens, "train")[0].shape[0])
    with tempfile.TemporaryDirectory() as tmp:
        jbig = jbig_row(grids.numpy().astype(np.uint8), Path(tmp), args.repeats, args.quick)
    rows = [jbig]
    print(json.dumps({"fold": fold, **jbig}), flush=True)
    for name, (recipe, file) in recipes.items():
        out = work / f"prior_fold{fold}_{name}"
        training = train_row(tokens, out, recipe, args.seed, file)
        row = prior_row(name, out, LEVELS, grids, None, training)
        if jbig.get("file_bytes"):
            row["x_smaller_than_jbig"] = jbig["file_bytes"] / row["file_bytes"]
        rows.append(row)
        print(json.dumps({"fold": fold, **{k: v for k, v in row.items() if k != "training"}}), flush=True)
    return {"fold": fold, "n": int(len(grids)), "n_train": n_train, "rows": rows}


def spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "min": float(a.min()),
            "max": float(a.max())}


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: the spread over folds of nats/digit (the code length, and the whole file's, header included, which
    the ratio to JBIG compares), file bytes and (priors) x smaller than JBIG."""
    out: dict[str, Any] = {}
    for method in [r["method"] for r in folds[0]["rows"] if not r.get("skipped")]:
        rows = [next(r for r in f["rows"] if r["method"] == method) for f in folds]
        out[method] = {"nats_per_digit": spread([r["nats_per_digit"] for r in rows]),
                       "file_nats_per_digit": spread([8 * r["file_bytes"] * np.log(2) / f["n"]
                                                      for r, f in zip(rows, folds)]),
                       "file_bytes": spread([r["file_bytes"] for r in rows])}
        if all("x_smaller_than_jbig" in r for r in rows):
            out[method]["x_smaller_than_jbig"] = spread([r["x_smaller_than_jbig"] for r in rows])
    return out


def markdown(res: dict[str, Any]) -> str:
    folds, summ, m = res["folds"], res["summary"], res["machine"]
    split = ("the fold's validation digits (a stratified 10% of its training digits; the test folds never read)"
             if res["validation"] else "the fold's test digits")
    lines = ["# Lossless compression over five folds of mnist5k", "",
             f"`{res['command']}`. mnist5k's 5,000 digits pooled and cut into {res['n_folds']} folds stratified by digit "
             "(`vqgen tokenize --raw --levels 2 --dataset mnist5k --folds 5 --fold K`: each digit in exactly one test "
             f"fold), binarised at 128, 32x32. Each row codes {split} ({folds[0]['n']} per fold, "
             f"{folds[0]['n_train']} training digits); vqgen priors trained on the fold's training digits through the "
             "CLI's stage functions with their recipe files, files in the container of `vqgen compress` (header "
             "included), decoded and checked. JBIG: pbmtojbg, its best tiling and options per fold.", "",
             "| method | nats / digit of the file, mean ± sd | min - max | x smaller than JBIG, mean ± sd | min - max |",
             "|---|---:|---:|---:|---:|"]
    for method, s in summ.items():
        x = s.get("x_smaller_than_jbig")
        nats = s.get("file_nats_per_digit", s["nats_per_digit"])  # results written before it: the code length
        lines.append(f"| {method} | {nats['mean']:.1f} ± {nats['std']:.1f} | {nats['min']:.1f} - {nats['max']:.1f} | "
                     + (f"{x['mean']:.3f} ± {x['std']:.3f} | {x['min']:.3f} - {x['max']:.3f} |" if x else "- | - |"))
    lines += ["", "Per fold (file bytes; nats / digit of the file):", "",
              "| fold | " + " | ".join(summ) + " |", "|---:|" + "---:|" * len(summ)]
    for f in folds:
        cells = []
        for method in summ:
            r = next(r for r in f["rows"] if r["method"] == method)
            x = f" ({r['x_smaller_than_jbig']:.3f}x)" if "x_smaller_than_jbig" in r else ""
            cells.append(f"{r['file_bytes']:,}; {8 * r['file_bytes'] * np.log(2) / f['n']:.1f}{x}")
        lines.append(f"| {f['fold']} | " + " | ".join(cells) + " |")
    trained = {r["method"]: r["training"] for r in folds[0]["rows"] if r.get("training")}
    if trained:
        lines += ["", "Recipes (fold 0's training; every fold trains the same recipe):", ""]
        for method, t in trained.items():
            shown = ", ".join(f"{k}={v}" for k, v in t["recipe"].items() if k not in ("eval_every", "save_every"))
            lines.append(f"- {method}: `{t['recipe_file']}` ({shown}); {t['steps_done']} steps, {t['stopped_by']}, "
                         f"{t['train_wall_s']:.0f} s wall")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores (1-min load average {m['load_before']:.1f} at the start, "
              f"{m['load_after']:.1f} at the end), torch {m['torch']}, {m['torch_threads']} thread(s). Total "
              f"{res['total_seconds'] / 60:.1f} minutes.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from bench.compression import RECIPE_FILES

    ap = argparse.ArgumentParser(prog="python -m bench.compression_folds", description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", type=int, nargs="+", default=None, help="run these folds only (default: all)")
    ap.add_argument("--rows", nargs="+", default=["ngram", "pixelcnn"], choices=sorted(RECIPE_FILES[LEVELS]))
    ap.add_argument("--args", nargs="+", metavar="ROW.KEY=VALUE", default=None,
                    help="override a row's recipe field, e.g. pixelcnn.dropout=0.1 pixelcnn.shift=2")
    ap.add_argument("--validation", action="store_true", help="code a validation 10%% of each fold's training digits")
    ap.add_argument("--n", type=int, default=None, help="test digits coded per fold (default all)")
    ap.add_argument("--repeats", type=int, default=1, help="timing repeats of JBIG")
    ap.add_argument("--quick", action="store_true", help="2 folds, 20 digits, tiny budgets; print only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-compression-folds")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="write the report from these per-fold --json files instead of running")
    return ap


def merge(files: list[str]) -> dict[str, Any]:
    """One result from per-fold runs (``--only K --json F``): their folds in fold order, the summary recomputed,
    every run's command and machine kept. Raises ValueError on a fold given twice, different fold counts or
    splits, or rows trained with different recipes."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    folds = sorted((f for r in runs for f in r["folds"]), key=lambda f: f["fold"])
    ids = [f["fold"] for f in folds]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--merge: fold(s) {sorted({i for i in ids if ids.count(i) > 1})} appear in more than one file")
    for key in ("n_folds", "validation"):
        if len({r[key] for r in runs}) > 1:
            raise ValueError(f"--merge: the files differ in {key}: {[r[key] for r in runs]}")
    def recipes(fold: dict[str, Any]) -> dict[str, Any]:
        return {r["method"]: r["training"]["recipe"] for r in fold["rows"] if r.get("training")}
    for f in folds[1:]:
        if recipes(f) != recipes(folds[0]):
            raise ValueError(f"--merge: fold {f['fold']} was trained with other recipes than fold {folds[0]['fold']}")
    first = runs[0]
    return {"command": " && ".join(r["command"] for r in runs), "n_folds": first["n_folds"],
            "validation": first["validation"], "folds": folds, "summary": summarise(folds),
            "machine": {**first["machine"], "load_before": min(r["machine"]["load_before"] for r in runs),
                        "load_after": max(r["machine"]["load_after"] for r in runs)},
            "total_seconds": sum(r["total_seconds"] for r in runs), "merged_from": [Path(f).name for f in files]}


def fold_recipes(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any], str]]:
    """{row: (recipe, file)}: each row's recipe file, ``QUICK`` with --quick, then ``--args`` on top."""
    from bench.compression import level_recipes

    base = level_recipes(LEVELS)
    extra: dict[str, list[str]] = {}
    for item in args.args or []:
        row, _, kv = item.partition(".")
        if row not in args.rows or not kv:
            raise ValueError(f"--args {item}: give ROW.KEY=VALUE with ROW one of {args.rows}")
        extra.setdefault(row, []).append(kv)
    out = {}
    for row in args.rows:
        recipe, file = base[row]
        over = parse_overrides(extra.get(row), flag="--args", known=recipe_keys())
        out[row] = (recipe | (QUICK[row] if args.quick else {}) | over, file)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.merge:
        res = merge(args.merge)
        write_results("compression_folds", res, markdown(res))
        return res
    if args.quick:
        args.n, args.only = args.n or 20, args.only or [0, 1]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = (ROOT / args.work) if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recipes = fold_recipes(args)
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    folds = [run_fold(k, args, work, recipes) for k in (args.only or range(args.folds))]
    res = {"command": " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python -m "
                                "bench.compression_folds", *(argv if argv is not None else sys.argv[1:])]),
           "n_folds": args.folds, "validation": args.validation, "folds": folds, "summary": summarise(folds),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "torch": torch.__version__, "load_before": load_before, "load_after": os.getloadavg()[0]},
           "total_seconds": time.perf_counter() - t0}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if args.quick or args.only:
        print(markdown(res))
    else:
        write_results("compression_folds", res, markdown(res))
    return res


if __name__ == "__main__":
    main()
