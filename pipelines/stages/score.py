"""The likelihood stages: ``score`` a dataset, ``compress`` files and ``decompress`` them, each with only a prior
folder (its recorded codec is used unless ``codec_dir`` overrides it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import load_data
from ..likelihood.compress import CompressionStats, compress_files, decompress_file
from ..likelihood.score import ood_auroc, score_dataset
from .common import make_spec, open_prior


def score(prior_dir: str | Path, data: dict[str, Any], out_csv: str | Path, *, codec_dir: str | Path | None = None,
          split: str = "test", batch_size: int = 128, device: str = "cpu", progress: bool = True,
          ood: str | None = None) -> dict[str, Any]:
    """Per-input NLL, bits/token, bits/dim and OOD score of a dataset's ``split`` into ``out_csv`` (see
    ``score_dataset``); the data is sized by the codec. Returns the summary.

    ``ood``: another dataset (a name like ``data["name"]``) scored the same way into ``<out_csv stem>.ood.csv``,
    its typicality measured against the in-distribution training NLL; the summary gains ``auroc_nll``,
    ``auroc_bits_per_dim`` and ``auroc_typicality`` (in [0, 1]: how well each score, higher = OOD, separates
    the OOD inputs from ``split``; 0.5 = chance, below 0.5 = the OOD data looks *more* likely) and
    ``<out_csv stem>.ood.png``, histograms of the scores of both sets."""
    folder, codec = open_prior(prior_dir, codec_dir, device)
    folder.require_codec_tokens("score")
    splits = load_data(make_spec(codec=codec, **data))
    if splits.modality != codec.modality:
        raise ValueError(f"{data.get('name')} holds {splits.modality} data but the prior's codec is for {codec.modality}")
    target = splits if split == "test" else splits.train  # Splits: typicality uses the train NLL as reference
    summary = score_dataset(folder.prior, codec, target, out_csv, batch_size=batch_size, progress=progress)
    if ood is None:
        return summary
    return summary | _ood_report(folder, codec, data, ood, Path(out_csv), summary, batch_size, progress)


def _read_scores(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("nll_nats", "bits_per_dim", "ood_score")}


def _ood_report(folder: Any, codec: Any, data: dict[str, Any], ood: str, out_csv: Path, in_summary: dict[str, Any],
                batch_size: int, progress: bool) -> dict[str, Any]:
    """Score the OOD dataset's test split (or its only split) against the in-distribution reference; AUROCs + PNG."""
    from ..outputs import histogram_image

    ood_splits = load_data(make_spec(codec=codec, **(data | {"name": ood})))
    if ood_splits.modality != codec.modality:
        raise ValueError(f"--ood {ood} holds {ood_splits.modality} data but the prior's codec is for {codec.modality}")
    ref = in_summary.get("train_mean_nll")
    ood_csv = out_csv.with_name(out_csv.stem + ".ood.csv")
    ood_set = ood_splits.test if len(ood_splits.test) else ood_splits.train
    score_dataset(folder.prior, codec, ood_set, ood_csv, batch_size=batch_size, progress=progress, train_mean_nll=ref)
    a, b = _read_scores(out_csv), _read_scores(ood_csv)
    names = {"nll_nats": "nll", "bits_per_dim": "bits_per_dim", "ood_score": "typicality" if ref is not None else "nll"}
    report: dict[str, Any] = {"ood_dataset": ood, "ood_n": int(len(b["nll_nats"])), "ood_csv": str(ood_csv)}
    for key, name in names.items():
        report[f"auroc_{name}"] = round(ood_auroc(a[key], b[key]), 4)
    png = out_csv.with_name(out_csv.stem + ".ood.png")
    short = lambda name: Path(str(name)).name or str(name)  # noqa: E731  (a folder's last part fits the legend)
    panels = [histogram_image({f"in: {short(data.get('name'))}": a[k], f"ood: {short(ood)}": b[k]},
                              f"{names[k]} (higher = OOD)")
              for k in ("nll_nats", "ood_score")]
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
