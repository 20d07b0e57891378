"""OOD detection with a likelihood model (issues 13 and 25): a PixelCNN on 8-bit mnist5k digits; the test digits and
each OOD set are scored on their own with ``vqgen score --prior P --dataset SET --fpr 0.05``.

The prior: a gated PixelCNN over raw 8-bit pixels (the classic setting of Nalisnick et al. 2019, "Do deep
generative models know what they don't know?"), trained through the CLI's stage functions (``vqgen tokenize
--raw --levels 256``, ``vqgen train-prior``) on the mnist5k training digits with the recipe
recipes/ood/pixelcnn5_8bit.yaml (its steps, and its ``max_seconds`` as a wall-clock cap; the file ``vqgen
train-prior --config`` reads), recorded in the results; ``--prior-args key=value`` overrides fields of it,
``--prior DIR`` scores an already-trained 8-bit mnist5k prior instead. ``train-prior`` holds 10% of the training
digits out (``--reference-fraction``) and records the prior's score reference on them
(``pipelines/likelihood/reference.py``): every score is computed from one input and that reference.

In-distribution: the 500 mnist5k test digits. OOD sets, n grey 32x32 images each:

* ``shapes``: the built-in procedural shapes (circles, squares, triangles on a dark background), converted to
  grey by the codec (``--dataset shapes``);
* ``noise``: uniform 8-bit noise, every pixel drawn from 0..255;
* ``flat``: flat images, each one grey level drawn from 0..255;
* ``inverted``: the mnist5k test digits inverted (255 - x): white background, dark strokes;
* ``photos``: random 32x32 crops of scikit-image's bundled photographs (camera, astronaut, coffee, ...), in grey;
* ``small``: the test digits shrunk to 16x16 and centred on black: less ink, so *simpler* than a digit (the
  Nalisnick et al. case: an OOD input that is easier to code than the training data);
* ``typed``: digits typed in the TrueType fonts on the machine (matplotlib's DejaVu, STIX and Computer Modern,
  and ``/usr/share/fonts``) at 16-29 px, centred: thinner strokes and less ink than handwriting;
* ``typed20``: the same glyphs scaled into MNIST's 20x20 box and centred by mass, as MNIST laid out its digits.

All but shapes are written as PNG folders (``<work>/ood_sets/<name>/test/<name>/*.png``, a local folder dataset).
The report gives, per set, the AUROC of the default ``ood_score`` and of every other score the reference defines
(plain NLL, typicality, two-sided NLL tails, the complexity-corrected ``excess`` and ``local_excess``), and the
share the ``--fpr 0.05`` verdict flags. 1.0 = every OOD input scores above every test digit, 0.5 = chance.

Run: ``OMP_NUM_THREADS=1 python -m bench.ood`` (writes bench/results/ood.json, docs/benchmarks/ood.md and
docs/benchmarks/ood.png); ``--quick`` (the recipe file with ``QUICK_OVERRIDES`` on top: a tiny prior; 40
images per set, print only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
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
SETS = ("shapes", "noise", "flat", "inverted", "photos", "small", "typed", "typed20")
DESCRIBE = {"shapes": "procedural circles / squares / triangles (`--ood shapes`, grey)",
            "noise": "uniform 8-bit noise",
            "flat": "flat images, one uniform random grey level each",
            "inverted": "mnist5k test digits, 255 - x",
            "photos": "random 32x32 crops of scikit-image's photos, grey",
            "small": "mnist5k test digits shrunk to 16x16 (area mean), centred on black",
            "typed": "digits typed in TrueType fonts at 16-29 px, centred",
            "typed20": "digits typed in TrueType fonts, scaled into MNIST's 20x20 box and centred by mass"}


# ---------------------------------------------------------------------------------------------- OOD sets
DIGIT_GLYPHS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_fonts() -> list[str]:
    """TrueType fonts on this machine that draw all ten digits as distinct glyphs: matplotlib's bundled ones (DejaVu,
    STIX, Computer Modern) and the system's (``/usr/share/fonts``); fonts whose '0'..'9' are not the glyphs named
    zero..nine (symbol fonts, old-style figures) are left out."""
    import glob

    import matplotlib
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    paths = sorted(glob.glob(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "*.ttf")))
    paths += sorted(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True))
    seen, out = set(), []
    for path in paths:
        name = os.path.basename(path)
        if name in seen:
            continue
        seen.add(name)
        try:
            ft = FT2Font(path)
            cmap = ft.get_charmap()
            names = [ft.get_glyph_name(cmap[ord(d)]) if ord(d) in cmap else "" for d in "0123456789"]
            ImageFont.truetype(path, 40)
        except Exception:  # noqa: BLE001 - a font that cannot be read is simply not used
            continue
        if names == DIGIT_GLYPHS:  # symbol fonts (cmex10, cmsy10) map '0'..'9' to other glyphs
            out.append(path)
    return out


def _glyph(font: Any, text: str) -> Any:
    """The digit drawn white on black, cropped to its ink (a PIL L image)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(img).text((20, 10), text, fill=255, font=font)
    box = img.getbbox()
    return img.crop(box) if box else Image.new("L", (1, 1), 0)


def mnist_layout(glyph: Any) -> np.ndarray:
    """A cropped glyph laid out as MNIST was: scaled to fit 20x20 (aspect kept), centred by its centre of mass in
    28x28, padded to 32x32 as mnist5k pads its digits; uint8 [32, 32]."""
    from PIL import Image

    w, h = glyph.size
    s = 20 / max(w, h)
    g = np.asarray(glyph.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS), np.float64)
    canvas = np.zeros((28, 28))
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    cy, cx = (ys * g).sum() / g.sum(), (xs * g).sum() / g.sum()
    top = int(np.clip(round(14 - cy), 0, 28 - g.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - g.shape[1]))
    canvas[top: top + g.shape[0], left: left + g.shape[1]] = g
    return np.pad(np.clip(np.round(canvas), 0, 255).astype(np.uint8), 2)


def typed_glyph(font: Any, text: str) -> np.ndarray:
    """The digit typed white on black at the font's own size, centred on its ink box in 32x32: uint8 [32, 32]."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (32, 32), 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((32 - (right - left)) / 2 - left, (32 - (bottom - top)) / 2 - top), text, fill=255, font=font)
    return np.asarray(img)


def typed_digits(n: int, rng: np.random.Generator, layout: str = "typed") -> tuple[np.ndarray, list[str]]:
    """n digits typed in the fonts of ``digit_fonts`` (digit i % 10, a random font each): uint8 [n, 32, 32] and the
    font file names used. ``layout``: "typed" draws each at a random size of 16-29 px, centred (as a user types
    them: thinner and often smaller than MNIST's); "mnist" scales each into MNIST's 20x20 box (``mnist_layout``)."""
    from PIL import ImageFont

    fonts = digit_fonts()
    if not fonts:
        raise RuntimeError("no TrueType font with digits found (matplotlib ships DejaVu; apt install fonts-dejavu-core)")
    out = []
    for i in range(n):
        path = fonts[rng.integers(len(fonts))]
        if layout == "typed":
            out.append(typed_glyph(ImageFont.truetype(path, int(rng.integers(16, 30))), str(i % 10)))
        else:
            out.append(mnist_layout(_glyph(ImageFont.truetype(path, int(rng.integers(28, 64))), str(i % 10))))
    return np.stack(out), [os.path.basename(f) for f in fonts]


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
    typed, fonts = typed_digits(n, rng, "typed")
    typed20, _ = typed_digits(n, rng, "mnist")
    small = torch.nn.functional.interpolate(digits, size=(16, 16), mode="area")  # [n, 1, 16, 16]
    small = torch.nn.functional.pad(small, (8, 8, 8, 8))  # centred on black, as mnist5k pads its digits
    arrays = {"noise": rng.integers(0, 256, size=(n, 32, 32), dtype=np.uint8),
              "inverted": 255 - eight_bit,
              "photos": photos,
              "small": np.round(small[:, 0].numpy() * 255).astype(np.uint8),
              "typed": typed, "typed20": typed20,
              "flat": np.repeat(rng.integers(0, 256, size=(n, 1, 1), dtype=np.uint8), 32, 1).repeat(32, 2)}
    out: dict[str, Any] = {"shapes": "shapes", "photo_names": used, "font_names": fonts}
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
FPR = 0.05  # the verdict's calibrated false-positive rate (`vqgen score --fpr 0.05`)


def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cols = ("nll_nats", "bits_per_dim", "complexity_nats", "local_nats", "ood_score")
    out = {k: np.array([float(r[k]) for r in rows]) for k in cols}
    out["ood"] = np.array([r.get("verdict") == "ood" for r in rows])
    return out


def features(c: dict[str, np.ndarray]) -> Any:
    """A scored CSV's per-input features (``pipelines.likelihood.reference.Features``); the prior is unconditional,
    so its NLL column is the marginal NLL the scores use."""
    from pipelines.likelihood.reference import Features

    return Features(c["nll_nats"], c["complexity_nats"], c["local_nats"])


def score_alone(prior_dir: Path, name: str, source: str, work: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``vqgen score --prior P --dataset SOURCE --fpr 0.05`` (the stage function): the set scored on its own."""
    from pipelines.stages.score import score

    out_csv = work / "scores" / f"{name}.csv"
    s = score(prior_dir, {"name": source}, out_csv, batch_size=100, device="cpu", progress=False, fpr=FPR)
    return s, read_csv(out_csv)


def score_sets(prior_dir: Path, sets: dict[str, Any], work: Path, names: list[str]) -> dict[str, Any]:
    """Score the test digits and then each OOD set on its own; AUROC of the default ``ood_score`` and of every
    score the reference defines, the verdict's detection rate, and bits/dim of each set."""
    from pipelines.likelihood.reference import METHODS, ScoreReference
    from pipelines.likelihood.score import ood_auroc

    ref = ScoreReference.load(prior_dir)
    if ref is None:
        raise ValueError(f"{prior_dir} has no score reference: train it with a --reference-fraction above 0")
    t0 = time.perf_counter()
    in_summary, a = score_alone(prior_dir, "mnist5k", "mnist5k", work)
    fa = features(a)
    assert np.allclose(ref.scores(fa), a["ood_score"], atol=1e-5), "the CSV's ood_score is not the default score"
    digits = {"n": int(len(a["nll_nats"])), "bits_per_dim": float(a["bits_per_dim"].mean()),
              "flagged": float(a["ood"].mean()), "threshold": in_summary["threshold"], "csv": str(work / "scores"),
              "reference": in_summary["reference"], "method": in_summary["ood_method"],
              "seconds": time.perf_counter() - t0}
    print(json.dumps(digits), flush=True)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        _, b = score_alone(prior_dir, name, sets[name], work)
        fb = features(b)
        auroc = {m: ood_auroc(ref.scores(fa, m), ref.scores(fb, m)) for m in METHODS}
        row = {"ood": name, "description": DESCRIBE[name], "n_ood": int(len(b["nll_nats"])),
               "auroc_ood_score": ood_auroc(a["ood_score"], b["ood_score"]), "auroc": auroc,
               "detected": float(b["ood"].mean()), "ood_bits_per_dim": float(b["bits_per_dim"].mean()),
               "ood_more_likely_than_median_digit": float((b["nll_nats"] < np.median(a["nll_nats"])).mean()),
               "csv_ood": str(work / "scores" / f"{name}.csv"), "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"digits": digits, "rows": rows, "reference_n": ref.n, "reference_source": ref.source}


def plot(res: dict[str, Any], path: Path) -> None:
    """Histograms of the default ood_score per OOD set beside the test digits, the verdict's threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, d = res["rows"], res["digits"]
    a = read_csv(Path(d["csv"]) / "mnist5k.csv")["ood_score"]
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        b = read_csv(r["csv_ood"])["ood_score"]
        lo, hi = np.percentile(np.r_[a, b], [0, 99])  # the far tail of noise would squeeze every other bin
        bins = np.linspace(lo, max(hi, d["threshold"] * 1.1), 50)
        ax.hist(np.clip(a, lo, bins[-1]), bins=bins, alpha=0.6, color="tab:blue", label="mnist5k test")
        ax.hist(np.clip(b, lo, bins[-1]), bins=bins, alpha=0.6, color="tab:red", label=r["ood"])
        ax.axvline(d["threshold"], color="k", lw=1, ls="--", label=f"threshold (fpr {FPR})")
        ax.set_title(f"{r['ood']}: AUROC {r['auroc_ood_score']:.3f}", fontsize=8)
        ax.set_xlabel(f"ood_score ({d['method']}; clipped at the 99th pct)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(res: dict[str, Any]) -> str:
    from pipelines.likelihood.reference import METHODS

    m, p, d = res["machine"], res["prior"], res["digits"]
    t = p.get("training")
    shown = ", ".join(f"{k}={v}" for k, v in (t["recipe"] if t else {}).items() if k not in ("eval_every", "save_every"))
    how = (f"trained here for {t['steps_done']} steps ({t['stopped_by']}; {t['train_wall_s']:.0f} s wall, "
           f"{t['train_cpu_s']:.0f} s CPU), recipe " + (f"`{t['recipe_file']}` ({shown})" if t.get("recipe_file") else shown)
           if t else f"the given folder `{p['dir']}`")
    lines = ["# OOD detection with likelihood: every set scored on its own", "",
             f"`{res['command']}`. A gated PixelCNN over raw 8-bit mnist5k pixels (32x32), {how}; held-out "
             f"{d['bits_per_dim']:.3f} bits/dim on the {d['n']} test digits. The prior carries its own score reference "
             f"({res['reference_source']}; a local order-2 n-gram counted on the other training digits). The test digits "
             "and then each OOD set are scored **on their own**, as a user scoring a folder of incoming images would: "
             f"`vqgen score --prior P --dataset SET --fpr {FPR}` (the stage function), so no score can lean on the data "
             f"it is given. AUROC: 1 = every OOD input scores above every test digit, 0.5 = chance, < 0.5 = the set "
             f"looks more in-distribution than the digits. `ood_score` is the default, `{d['method']}`; the other columns "
             "are the other scores the reference defines (`pipelines/likelihood/reference.py`), computed from the same "
             "CSV columns.", "",
             f"The verdict at `--fpr {FPR}` flags {100 * d['flagged']:.1f}% of the {d['n']} test digits (threshold "
             f"{d['threshold']:.3f}, calibrated on the held-out training digits).", "",
             "| OOD set | what | n | **AUROC ood_score** | " + " | ".join(f"AUROC {k}" for k in METHODS)
             + f" | flagged at fpr {FPR} | OOD bits/dim | more likely than the median digit |",
             "|---|---|---:|---:|" + "---:|" * len(METHODS) + "---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['ood']} | {r['description']} | {r['n_ood']} | **{r['auroc_ood_score']:.3f}** | "
                     + " | ".join(f"{r['auroc'][k]:.3f}" for k in METHODS)
                     + f" | {100 * r['detected']:.1f}% | {r['ood_bits_per_dim']:.3f} | "
                       f"{100 * r['ood_more_likely_than_median_digit']:.0f}% |")
    worst = min(res["rows"], key=lambda r: r["auroc_ood_score"])
    lines += spread_lines(res)
    lines += ["", f"Lowest AUROC of the default score: {worst['ood']} ({worst['auroc_ood_score']:.3f}). Plain NLL fails "
              "where an input is simpler than a digit (shrunk digits, typed digits at their own size): the model codes "
              "them in fewer bits than its own test digits. `excess` (Serra et al. 2020: NLL minus the PNG length) "
              "corrects for simplicity with the prior, `local_excess` with the local n-gram: a count-based model of "
              "the training digits' neighbourhoods that, unlike the PixelCNN, does not generalise to stroke widths "
              "and edges it never saw, so typed glyphs cost it more than PNG.", "",
              "![ood_score of the test digits and each OOD set](ood.png)", "",
              "Photos: " + ", ".join(res["photo_names"]) + " (scikit-image's bundled images), crops spread evenly "
              "over them. Fonts: " + ", ".join(res["font_names"]) + " (matplotlib's and the system's).", "",
              f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (1-min load average "
              f"{m['load_before']:.1f} at the start, {m['load_after']:.1f} at the end), torch {m['torch']}, "
              f"{m['torch_threads']} thread(s). Total {res['total_seconds'] / 60:.1f} minutes.", ""]
    return "\n".join(lines)


def other_runs(paths: list[str] | None) -> list[dict[str, Any]]:
    """What the report needs of other seeds' results files: seed, test digits flagged, per-set AUROCs."""
    out = []
    for path in paths or []:
        r = json.loads(Path(path).read_text())
        seed = r.get("seed")
        if seed is None:  # results written before the seed was recorded: read it from the command
            m = re.search(r"--seed[ =](\d+)", r["command"])
            seed = int(m.group(1)) if m else 0
        out.append({"file": str(path), "seed": seed, "flagged": r["digits"]["flagged"],
                    "auroc": {row["ood"]: {"ood_score": row["auroc_ood_score"], "nll": row["auroc"]["nll"]}
                              for row in r["rows"]}})
    return out


def spread_lines(res: dict[str, Any]) -> list[str]:
    """A table of the default score's AUROC per set at this run's seed and every other run's, with the minimum."""
    others = res.get("other_runs") or []
    if not others:
        return []
    runs = [(res.get("seed", 0), {r["ood"]: {"ood_score": r["auroc_ood_score"], "nll": r["auroc"]["nll"]}
                                  for r in res["rows"]}, res["digits"]["flagged"])]
    runs += [(o["seed"], o["auroc"], o["flagged"]) for o in others]
    lines = ["", "Across seeds (each seed trains its own prior, draws its own held-out reference and OOD sets): AUROC "
             "of the default `ood_score` (plain NLL in brackets) and the share of test digits the verdict flags.", "",
             "| OOD set | " + " | ".join(f"seed {s}" for s, _, _ in runs) + " | min |",
             "|---|" + "---:|" * (len(runs) + 1)]
    for r in res["rows"]:
        vals = [a[r["ood"]] for _, a, _ in runs if r["ood"] in a]
        lines.append(f"| {r['ood']} | " + " | ".join(f"{v['ood_score']:.3f} ({v['nll']:.2f})" for v in vals)
                     + f" | {min(v['ood_score'] for v in vals):.3f} |")
    lines.append(f"| test digits flagged at fpr {FPR} | " + " | ".join(f"{100 * f:.1f}%" for _, _, f in runs) + " | |")
    return lines


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
    ap.add_argument("--also", nargs="+", default=None, metavar="JSON",
                    help="results of the same bench at other seeds (--json files): their AUROCs are reported beside "
                         "this run's, with the spread")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only rewrite docs/benchmarks/ood.md and ood.png from a results file and its CSVs (no run)")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        if args.also:
            res["other_runs"] = other_runs(args.also)
        plot(res, ROOT / "docs" / "benchmarks" / "ood.png")
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
    scored = score_sets(prior_dir, sets, work, args.sets)
    res = {"command": " ".join(["OMP_NUM_THREADS=1 python -m bench.ood", *(argv if argv is not None else sys.argv[1:])]),
           "prior": {"dir": str(prior_dir), "config": folder.prior.config.to_dict(), "training": training},
           **scored, "photo_names": sets["photo_names"], "font_names": sets["font_names"], "seed": args.seed,
           "other_runs": other_runs(args.also),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "torch": torch.__version__, "load_before": load_before, "load_after": os.getloadavg()[0]},
           "total_seconds": time.perf_counter() - t_all}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if args.quick:
        plot(res, work / "ood.png")
        print(markdown(res))
    else:
        plot(res, ROOT / "docs" / "benchmarks" / "ood.png")
        write_results("ood", res, markdown(res))
    return res


if __name__ == "__main__":
    main()
