"""OOD detection with a likelihood model (issue 13 item 5): a PixelCNN on 8-bit mnist5k digits, scored with
``vqgen score --ood`` against shapes, uniform noise, inverted digits and natural photo crops.

The prior: a gated PixelCNN over raw 8-bit pixels (the classic setting of Nalisnick et al. 2019, "Do deep
generative models know what they don't know?"), trained through the CLI's stage functions (``vqgen tokenize
--raw --levels 256``, ``vqgen train-prior``) on the 4,500 training digits with the recipe
recipes/ood/pixelcnn5_8bit.yaml (its steps, and its ``max_seconds`` as a wall-clock cap; the file ``vqgen
train-prior --config`` reads), recorded in the results; ``--prior-args key=value`` overrides fields of it,
``--prior DIR`` scores an already-trained 8-bit mnist5k prior instead.

In-distribution: the 500 mnist5k test digits. OOD sets, 500 grey 32x32 images each:

* ``shapes``: the built-in procedural shapes (circles, squares, triangles on a dark background), converted to
  grey by the codec, as ``--ood shapes``;
* ``noise``: uniform 8-bit noise, every pixel drawn from 0..255;
* ``inverted``: the mnist5k test digits inverted (255 - x): white background, dark strokes;
* ``photos``: random 32x32 crops of scikit-image's bundled photographs (camera, astronaut, coffee, ...), in grey;
* ``small``: the test digits shrunk to 16x16 and centred on black: less ink, so *simpler* than a digit (the
  Nalisnick et al. case: an OOD input that is easier to code than the training data).

The last three are written as PNG folders (``<work>/ood_sets/<name>/test/<name>/*.png``, a local folder dataset)
and passed to ``pipelines.stages.score.score(..., ood=folder)``, the function behind ``vqgen score --ood``; it
prints the AUROC of the plain NLL, of bits/dim (the same ranking for raw pixels of one size) and of the
typicality score |NLL - mean train NLL| (Nalisnick et al. 2019, "Detecting out-of-distribution inputs to deep
generative models using typicality"). 1.0 = every OOD input scores above every test digit, 0.5 = chance,
below 0.5 = the OOD data looks *more* likely than the digits.

Run: ``OMP_NUM_THREADS=1 python -m bench.ood`` (writes bench/results/ood.json, docs/benchmarks/ood.md and
docs/benchmarks/ood.png); ``--quick`` (the recipe file with ``QUICK_OVERRIDES`` on top: a tiny prior; 40
images per set, print only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    ROOT,
    cpu_model,
    parse_overrides,
    read_recipe,
    recipe_keys,
    tokenize_mnist,
    train_row,
    write_results,
)

RECIPE = "ood/pixelcnn5_8bit"  # recipes/ood/pixelcnn5_8bit.yaml: the prior's PriorConfig + TrainConfig fields
QUICK_OVERRIDES = {"pixelcnn_layers": 1, "pixelcnn_channels": 4, "steps": 2, "batch_size": 4}  # --quick
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "clock", "brick", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "retina", "page", "text")  # photographs bundled with skimage
SETS = ("shapes", "noise", "inverted", "photos", "small")
DESCRIBE = {"shapes": "procedural circles / squares / triangles (`--ood shapes`, grey)",
            "noise": "uniform 8-bit noise",
            "inverted": "mnist5k test digits, 255 - x",
            "photos": "random 32x32 crops of scikit-image's photos, grey",
            "small": "mnist5k test digits shrunk to 16x16 (area mean), centred on black"}


# ---------------------------------------------------------------------------------------------- OOD sets
def photo_crops(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """n random 32x32 grey crops uint8 [n, 32, 32], spread evenly over the bundled photos that load (those that
    need a download are skipped): crop i comes from photo ``names[i % len(names)]``; returns the crops and names."""
    import skimage.data
    from skimage.color import rgb2gray

    images, used = [], []
    for name in PHOTOS:
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo that needs a download (pooch) is simply not used
            continue
        if a.ndim == 3:
            a = np.round(rgb2gray(a[..., :3]) * 255).astype(np.uint8)
        images.append(a.astype(np.uint8))
        used.append(name)
    if not images:
        raise RuntimeError("no scikit-image photo could be loaded: pip install scikit-image (its data ships inside)")
    crops = []
    for i in range(n):
        a = images[i % len(images)]
        y, x = rng.integers(0, a.shape[0] - 31), rng.integers(0, a.shape[1] - 31)
        crops.append(a[y: y + 32, x: x + 32])
    return np.stack(crops), used


def build_sets(work: Path, n: int, seed: int) -> dict[str, Any]:
    """Write the in-memory OOD sets as local image folders (``<set>/test/<set>/00000.png``, plus two images in
    ``train/`` so the folder has both splits); returns {set: the ``--ood`` value, plus notes}."""
    from PIL import Image

    from pipelines.data import DataSpec, load_data

    rng = np.random.default_rng(seed)
    digits = load_data(DataSpec("mnist5k")).test.tensors[0][:n]  # float32 [n, 1, 32, 32] in [0, 1]
    eight_bit = np.round(digits[:, 0].numpy() * 255).astype(np.uint8)
    photos, used = photo_crops(n, rng)
    small = torch.nn.functional.interpolate(digits, size=(16, 16), mode="area")  # [n, 1, 16, 16]
    small = torch.nn.functional.pad(small, (8, 8, 8, 8))  # centred on black, as mnist5k pads its digits
    arrays = {"noise": rng.integers(0, 256, size=(n, 32, 32), dtype=np.uint8),
              "inverted": 255 - eight_bit,
              "photos": photos,
              "small": np.round(small[:, 0].numpy() * 255).astype(np.uint8)}
    out: dict[str, Any] = {"shapes": "shapes", "photo_names": used}
    for name, arr in arrays.items():
        root = work / "ood_sets" / name
        if root.exists():
            shutil.rmtree(root)
        for split, imgs in (("test", arr), ("train", arr[:2])):
            d = root / split / name
            d.mkdir(parents=True)
            for i, a in enumerate(imgs):
                Image.fromarray(a).save(d / f"{i:05d}.png")
        out[name] = str(root)
    return out


# ---------------------------------------------------------------------------------------------- scoring
def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("nll_nats", "bits_per_dim", "ood_score")}


def verdict(r: dict[str, Any]) -> str:
    """One sentence: does plain likelihood separate the set, and does typicality fix it where it does not."""
    nll, typ = r["auroc_nll"], r["auroc_typicality"]
    bpd = f"{r['ood_bits_per_dim']:.2f} bits/dim against the digits' {r['in_bits_per_dim']:.2f}"
    k = round(r["ood_more_likely_than_median_digit"] * r["n_ood"])
    share = f"{k} of {r['n_ood']} {'is' if k == 1 else 'are'} more likely than the median test digit"
    if nll >= 0.95:
        s = f"Plain likelihood separates it ({bpd})"
        if k:
            where = f"{r['likely_sources']}, " if r.get("likely_sources") else ""
            s += f", but {share} ({where}down to {r['ood_min_bits_per_dim']:.3f} bits/dim)"
        if typ >= nll:
            return s + ("; typicality catches those too" if k else "; typicality does too") + f" (AUROC {typ:.3f})."
        return s + f"; typicality does about as well (AUROC {typ:.3f}; it also flags test digits far from the mean)."
    if nll <= 0.5:
        s = f"Plain likelihood fails: the model finds these inputs more likely than its own digits ({bpd}; {share})"
    else:
        s = f"Plain likelihood only partly separates it ({bpd}; {share})"
    if typ >= 0.9:
        return s + f"; typicality fixes it (AUROC {typ:.3f}): the inputs are atypically likely."
    if typ > nll + 0.05:
        return s + f"; typicality helps (AUROC {typ:.3f}) but does not fix it."
    return s + f"; typicality does not fix it (AUROC {typ:.3f})."


def score_sets(prior_dir: Path, sets: dict[str, Any], work: Path, names: list[str]) -> list[dict[str, Any]]:
    """``vqgen score --prior P --dataset mnist5k --ood SET`` (the stage function) for each set."""
    from pipelines.stages.score import score

    rows = []
    for name in names:
        t0 = time.perf_counter()
        out_csv = work / "scores" / f"{name}.csv"
        s = score(prior_dir, {"name": "mnist5k"}, out_csv, ood=sets[name], batch_size=100, device="cpu",
                  progress=False)
        a, b = read_csv(out_csv), read_csv(s["ood_csv"])
        train_bpd = s["train_mean_nll"] / np.log(2) / s["dims_per_input"]
        rows.append({"ood": name, "description": DESCRIBE[name], "n_in": int(len(a["nll_nats"])), "n_ood": s["ood_n"],
                     "auroc_nll": s["auroc_nll"], "auroc_bits_per_dim": s["auroc_bits_per_dim"],
                     "auroc_typicality": s["auroc_typicality"], "in_bits_per_dim": float(a["bits_per_dim"].mean()),
                     "ood_bits_per_dim": float(b["bits_per_dim"].mean()), "train_bits_per_dim": float(train_bpd),
                     "ood_more_likely_than_median_digit": float((b["nll_nats"] < np.median(a["nll_nats"])).mean()),
                     "stage_png": s["ood_png"], "csv_in": str(out_csv), "csv_ood": s["ood_csv"],
                     "seconds": time.perf_counter() - t0})
        likely = b["nll_nats"] < np.median(a["nll_nats"])
        rows[-1]["ood_min_bits_per_dim"] = float(b["bits_per_dim"].min())
        if name == "photos" and likely.any():  # which photos give crops the model finds likelier than a digit
            photo = sets["photo_names"]
            found = sorted({photo[i % len(photo)] for i in np.flatnonzero(likely)})
            rows[-1]["likely_sources"] = "crops of " + ", ".join(found)
        rows[-1]["verdict"] = verdict(rows[-1])
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Histograms of bits/dim per OOD set beside the test digits, the train mean (the typical set's centre) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        a, b = read_csv(r["csv_in"])["bits_per_dim"], read_csv(r["csv_ood"])["bits_per_dim"]
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        bins = np.linspace(lo, hi, 50)
        ax.hist(a, bins=bins, alpha=0.6, color="tab:blue", label="mnist5k test")
        ax.hist(b, bins=bins, alpha=0.6, color="tab:red", label=r["ood"])
        ax.axvline(r["train_bits_per_dim"], color="k", lw=1, ls="--", label="train mean")
        ax.set_title(f"{r['ood']}: AUROC nll {r['auroc_nll']:.2f}, typ. {r['auroc_typicality']:.2f}", fontsize=8)
        ax.set_xlabel("bits / dim", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(res: dict[str, Any]) -> str:
    m, p = res["machine"], res["prior"]
    t = p.get("training")
    # eval_every / save_every left out: one evaluation and one save, at the end
    shown = ", ".join(f"{k}={v}" for k, v in (t["recipe"] if t else {}).items()
                      if k not in ("eval_every", "save_every"))
    how = (f"trained here for {t['steps_done']} steps ({t['stopped_by']}; {t['train_wall_s']:.0f} s wall, "
           f"{t['train_cpu_s']:.0f} s CPU), recipe "
           + (f"`{t['recipe_file']}` ({shown})" if t.get("recipe_file") else shown)
           if t else f"the given folder `{p['dir']}`")
    lines = ["# OOD detection with likelihood: AUROC per set and score", "",
             f"`{res['command']}`. A gated PixelCNN over raw 8-bit mnist5k pixels (32x32), {how}; "
             f"held-out {p['test_bits_per_dim']:.3f} bits/dim on the {res['rows'][0]['n_in']} test digits. Each OOD set "
             "(n images, grey 32x32) is scored by `pipelines.stages.score.score(..., ood=SET)`, "
             "what `vqgen score --prior P --dataset mnist5k --ood SET` runs: AUROC (1 = every OOD input scores above "
             "every test digit, 0.5 = chance, < 0.5 = the OOD set looks more likely) of the plain NLL, of bits/dim "
             "(the same ranking here: every input has 1,024 pixels) and of the typicality score |NLL - mean train "
             "NLL| (Nalisnick et al. 2019, one input at a time).", "",
             "| OOD set | what | n | AUROC nll | AUROC bits/dim | AUROC typicality | OOD bits/dim | test bits/dim | "
             "OOD more likely than the median digit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['ood']} | {r['description']} | {r['n_ood']} | {r['auroc_nll']:.3f} | {r['auroc_bits_per_dim']:.3f} | "
                     f"{r['auroc_typicality']:.3f} | {r['ood_bits_per_dim']:.3f} | {r['in_bits_per_dim']:.3f} | "
                     f"{100 * r['ood_more_likely_than_median_digit']:.0f}% |")
    lines += ["", "Where plain likelihood fails and whether typicality fixes it:", ""]
    lines += [f"- **{r['ood']}**: {r['verdict']}" for r in res["rows"]]
    lines += ["", "![bits/dim of the test digits and each OOD set](ood.png)", "",
              f"Histograms of bits/dim (the dashed line: the mean over {res['reference_n']:,} training digits, the "
              "centre the typicality score measures from). Photos: "
              + ", ".join(res["photo_names"]) + " (scikit-image's bundled images), "
              "crops spread evenly over them. The typicality reference is the mean training NLL "
              f"({res['rows'][0]['train_bits_per_dim']:.3f} bits/dim against the test digits' "
              f"{res['rows'][0]['in_bits_per_dim']:.3f}): a generalisation gap moves the test digits off the centre "
              "and costs typicality some AUROC that plain NLL does not pay.", "",
              f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (1-min load average "
              f"{m['load_before']:.1f} at the start, {m['load_after']:.1f} at the end), torch {m['torch']}, "
              f"{m['torch_threads']} thread(s). Total {res['total_seconds'] / 60:.1f} minutes.", ""]
    return "\n".join(lines)


def prior_recipe(quick: bool = False, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """(the recipe the prior is trained with, the file it was read from): ``RECIPE``'s file, with
    ``QUICK_OVERRIDES`` when ``quick``, then ``--prior-args`` ``overrides`` (``key=value``) on top."""
    recipe, file = read_recipe(RECIPE, "train-prior")
    extra = parse_overrides(overrides, flag="--prior-args", known=recipe_keys())
    return recipe | (QUICK_OVERRIDES if quick else {}) | extra, file


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench; returns the results dict (also written unless --quick)."""
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny prior, 40 images per set, 200 training digits; print only")
    ap.add_argument("--n", type=int, default=None, help="images per OOD set (default 500; --quick 40)")
    ap.add_argument("--prior", default=None, help="an already-trained prior folder over raw 8-bit mnist5k pixels")
    ap.add_argument("--prior-args", nargs="+", metavar="KEY=VALUE", default=None,
                    help=f"override fields of the recipe (recipes/{RECIPE}.yaml: PriorConfig / TrainConfig "
                         "fields, YAML values), e.g. steps=600 max_seconds=400 lr=2e-3")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-ood", help="token folder, prior, OOD image folders and CSVs go here")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only rewrite docs/benchmarks/ood.md and ood.png from a results file and its CSVs (no run)")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        for r in res["rows"]:
            r["verdict"] = verdict(r)
        plot(res["rows"], ROOT / "docs" / "benchmarks" / "ood.png")
        write_results("ood", res, markdown(res))
        return res
    n = args.n or (40 if args.quick else 500)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work) if Path(args.work).is_absolute() else (ROOT / args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all, load_before = time.perf_counter(), os.getloadavg()[0]

    training = None
    if args.prior:
        prior_dir = Path(args.prior)
    else:
        tokens = tokenize_mnist(work, 256, 200 if args.quick else None)
        recipe, file = prior_recipe(args.quick, args.prior_args)
        prior_dir = work / "prior"
        print(f"training the prior ({file}): {recipe}", flush=True)
        training = train_row(tokens, prior_dir, recipe, args.seed, file)
    from pipelines.stages.common import open_prior
    from tokenizers_vq import RawCodec

    folder, codec = open_prior(prior_dir)
    if not isinstance(codec, RawCodec) or codec.levels != 256 or tuple(folder.prior.shape) != (32, 32):
        raise ValueError(f"--prior {prior_dir}: not a prior over raw 8-bit 32x32 pixels; train one on `vqgen tokenize "
                         "--raw --levels 256 --dataset mnist5k` tokens")
    sets = build_sets(work, n, args.seed)
    rows = score_sets(prior_dir, sets, work, args.sets)
    res = {"command": " ".join(["OMP_NUM_THREADS=1 python -m bench.ood", *(argv if argv is not None else sys.argv[1:])]),
           "prior": {"dir": str(prior_dir), "config": folder.prior.config.to_dict(), "training": training,
                     "test_bits_per_dim": rows[0]["in_bits_per_dim"]},
           "rows": rows, "photo_names": sets["photo_names"], "reference_n": 2000,  # score_dataset's reference_limit
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "torch": torch.__version__, "load_before": load_before, "load_after": os.getloadavg()[0]},
           "total_seconds": time.perf_counter() - t_all}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if args.quick:
        plot(rows, work / "ood.png")
        print(markdown(res))
    else:
        plot(rows, ROOT / "docs" / "benchmarks" / "ood.png")
        write_results("ood", res, markdown(res))
    return res


if __name__ == "__main__":
    main()
