"""The likelihood stages: ``score`` a dataset, ``compress`` files and ``decompress`` them, each with only a prior
folder (its recorded codec is used unless ``codec_dir`` overrides it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from ..data import load_data, report_skips
from ..likelihood.compress import CompressionStats, compress_files, decompress_file
from ..likelihood.reference import DEFAULT_METHOD, METHODS, MIN_REFERENCE, ScoreReference
from ..likelihood.score import (
    GridScores,
    encode_batch,
    input_batches,
    ood_auroc,
    reference_from_grids,
    score_dataset,
)
from .common import make_spec, open_prior

REFERENCE_LIMIT = 1000  # --reference: examples of the given data's training split the reference is computed on
LOCAL_FIT_EXAMPLES = 5000  # --reference: other examples of it the local model is counted on


def score(prior_dir: str | Path, data: dict[str, Any], out_csv: str | Path, *, codec_dir: str | Path | None = None,
          split: str = "test", batch_size: int = 128, device: str = "cpu", progress: bool = True,
          ood: str | None = None, fpr: float | None = None, reference: str | None = None,
          num_workers: int = 0) -> dict[str, Any]:
    """Per-input NLL, bits/token, bits/dim and anomaly scores of a dataset's ``split`` into ``out_csv`` (see
    ``score_dataset``); the data is sized by the codec. Returns the summary.

    The anomaly scores come from the prior folder's own ``ScoreReference`` (recorded by ``train-prior``), never from
    the data scored. ``reference``: a dataset (a name like ``data["name"]``) whose training split the reference is
    computed on and saved into the prior folder first, for folders saved before priors carried one; without either,
    ``ood_score`` is the plain NLL (the summary's ``warning`` says so). ``fpr``: add a ``verdict`` column.

    ``ood``: another dataset scored the same way into ``<out_csv stem>.ood.csv``; the summary gains
    ``auroc_nll``, ``auroc_bits_per_dim``, ``auroc_typicality``, ``auroc_ood_score`` and ``auroc`` (every method
    of ``METHODS``), each in [0, 1]: how well the score, higher = OOD, separates the OOD inputs from ``split``
    (0.5 = chance, below 0.5 = the OOD data looks *more* likely), and ``<out_csv stem>.ood.png``, histograms.
    ``num_workers``: DataLoader worker processes that read and decode the inputs (same scores for any number)."""
    folder, codec = open_prior(prior_dir, codec_dir, device)
    folder.require_codec_tokens("score")
    ref = _reference(folder, codec, data, reference, batch_size, progress)
    splits = _load_for(codec, data, "--dataset")
    target = splits.test if split == "test" else splits.train
    summary, scores = score_dataset(folder.prior, codec, target, out_csv, batch_size=batch_size, progress=progress,
                                    reference=ref, fpr=fpr, return_scores=True, num_workers=num_workers)
    report_skips(splits)  # the files left out because they could not be read
    if ref is None:
        summary["warning"] = (f"{folder.path} records no score reference (saved before priors carried one, or trained "
                              "with --reference-fraction 0): ood_score is the plain NLL. Pass --reference DATA (the "
                              "data the prior was trained on) once to compute and save one")
    if ood is None:
        return summary
    return summary | _ood_report(folder, codec, data, ood, Path(out_csv), scores, ref, batch_size, progress, fpr,
                                 num_workers)


def _load_for(codec: Any, data: dict[str, Any], flag: str) -> Any:
    splits = load_data(make_spec(codec=codec, **data))
    if splits.modality != codec.modality:
        raise ValueError(f"{flag} {data.get('name')} holds {splits.modality} data but the prior's codec is for "
                         f"{codec.modality}")
    return splits


def _reference(folder: Any, codec: Any, data: dict[str, Any], reference: str | None, batch_size: int,
               progress: bool) -> ScoreReference | None:
    """The folder's reference, or (``reference`` given) one computed on up to ``REFERENCE_LIMIT`` examples of that
    dataset's training split and saved into the folder (a warning, not an error, when the folder is read-only)."""
    if reference is None:
        return ScoreReference.load(folder.path)
    train = _load_for(codec, data | {"name": reference}, "--reference").train
    n = len(train)
    if n < MIN_REFERENCE:
        raise ValueError(f"--reference {reference}: its training split has {n} examples, a reference needs at "
                         f"least {MIN_REFERENCE}")
    perm = np.random.default_rng(0x5C0E).permutation(n)
    held, fit = np.sort(perm[:REFERENCE_LIMIT]), np.sort(perm[REFERENCE_LIMIT:][:LOCAL_FIT_EXAMPLES])
    if len(fit) < MIN_REFERENCE:  # a small dataset: the local model is counted on the reference examples too
        fit = held
    grids = {k: torch.cat([encode_batch(codec, x) for x, _ in input_batches(Subset(train, idx.tolist()), batch_size)])
             for k, idx in (("held", held), ("fit", fit))}
    source = (f"{len(held)} examples of the training split of {reference} (given by --reference; the prior may have "
              f"been trained on them), local model counted on {len(fit)} others")
    ref = reference_from_grids(folder.prior, grids["held"], grids["fit"], source, in_sample=True,
                               batch_size=batch_size)
    try:
        path = ref.save(folder.path)
        if progress:
            print(f"computed the score reference on {source}; saved to {path}")
    except OSError as e:
        print(f"warning: could not save the score reference into {folder.path} ({e}); it is used for this run only")
    return ref


def _read_scores(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("nll_nats", "bits_per_dim", "complexity_nats",
                                                                "ood_score")}


def _ood_report(folder: Any, codec: Any, data: dict[str, Any], ood: str, out_csv: Path, in_scores: GridScores,
                ref: ScoreReference | None, batch_size: int, progress: bool, fpr: float | None,
                num_workers: int = 0) -> dict[str, Any]:
    """Score the OOD dataset's test split (or its only split) with the same reference; AUROCs + PNG."""
    from ..outputs import histogram_image

    ood_splits = _load_for(codec, data | {"name": ood}, "--ood")
    ood_csv = out_csv.with_name(out_csv.stem + ".ood.csv")
    ood_set = ood_splits.test if len(ood_splits.test) else ood_splits.train
    ood_summary, ood_scores = score_dataset(folder.prior, codec, ood_set, ood_csv, batch_size=batch_size,
                                            progress=progress, reference=ref, fpr=fpr, return_scores=True,
                                            num_workers=num_workers)
    a, b = _read_scores(out_csv), _read_scores(ood_csv)
    report: dict[str, Any] = {"ood_dataset": ood, "ood_n": int(len(b["nll_nats"])), "ood_csv": str(ood_csv)}
    if "flagged" in ood_summary:
        report["ood_flagged"] = ood_summary["flagged"]  # the fraction of OOD inputs the verdict calls "ood"
    report["auroc_nll"] = round(ood_auroc(a["nll_nats"], b["nll_nats"]), 4)
    report["auroc_bits_per_dim"] = round(ood_auroc(a["bits_per_dim"], b["bits_per_dim"]), 4)
    report["auroc_ood_score"] = round(ood_auroc(a["ood_score"], b["ood_score"]), 4)
    if ref is not None:  # every score the reference defines, from the same per-input numbers
        report["auroc"] = {m: round(ood_auroc(ref.scores(in_scores.features, m), ref.scores(ood_scores.features, m)), 4)
                           for m in METHODS}
        report["auroc_typicality"] = report["auroc"]["typicality"]
    png = out_csv.with_name(out_csv.stem + ".ood.png")
    short = lambda name: Path(str(name)).name or str(name)  # noqa: E731  (a folder's last part fits the legend)
    method = "nll" if ref is None else DEFAULT_METHOD
    panels = [histogram_image({f"in: {short(data.get('name'))}": a[k], f"ood: {short(ood)}": b[k]}, title)
              for k, title in (("nll_nats", "nll (higher = OOD)"), ("ood_score", f"ood_score: {method}"))]
    canvas = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), "white")
    for i, p in enumerate(panels):
        canvas.paste(p, (0, i * panels[0].height))
    canvas.save(png)
    report["ood_png"] = str(png)
    return report


def compress(prior_dir: str | Path, inputs: list[str], out_file: str | Path, *, codec_dir: str | Path | None = None,
             device: str = "cpu", progress: bool = True) -> CompressionStats:
    """Compress image or audio files into ``out_file`` with the prior and its codec (``compress_files``)."""
    folder, codec = open_prior(prior_dir, codec_dir, device)
    folder.require_codec_tokens("compress")
    return compress_files(folder.prior, codec, inputs, out_file, progress=progress)


def decompress(prior_dir: str | Path, in_file: str | Path, out_dir: str | Path, *, codec_dir: str | Path | None = None,
               device: str = "cpu", progress: bool = True) -> list[Path]:
    """Decode a ``compress`` output into PNG / WAV files under ``out_dir`` (``decompress_file``)."""
    folder, codec = open_prior(prior_dir, codec_dir, device)
    folder.require_codec_tokens("decompress")
    return decompress_file(folder.prior, codec, in_file, out_dir, progress=progress)
