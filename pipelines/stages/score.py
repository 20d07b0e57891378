"""The likelihood stages: ``score`` a dataset, ``compress`` files and ``decompress`` them, each with only a prior
folder (its recorded codec is used unless ``codec_dir`` overrides it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import load_data
from ..likelihood.compress import CompressionStats, compress_files, decompress_file
from ..likelihood.score import score_dataset
from .common import make_spec, open_prior


def score(prior_dir: str | Path, data: dict[str, Any], out_csv: str | Path, *, codec_dir: str | Path | None = None,
          split: str = "test", batch_size: int = 128, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Per-input NLL, bits/token, bits/dim and OOD score of a dataset's ``split`` into ``out_csv`` (see
    ``score_dataset``); the data is sized by the codec. Returns the summary."""
    folder, codec = open_prior(prior_dir, codec_dir, device)
    folder.require_codec_tokens("score")
    splits = load_data(make_spec(codec=codec, **data))
    if splits.modality != codec.modality:
        raise ValueError(f"{data.get('name')} holds {splits.modality} data but the prior's codec is for {codec.modality}")
    target = splits if split == "test" else splits.train  # Splits: typicality uses the train NLL as reference
    return score_dataset(folder.prior, codec, target, out_csv, batch_size=batch_size, progress=progress)


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
