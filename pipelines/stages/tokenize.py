"""`vqgen tokenize`: a dataset through a codec (a tokenizer, or the raw pixels / mu-law samples) into a token
folder whose header records the codec."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from tokenizers_vq import Codec, RawCodec, load_codec

from ..data import DataSpec, Splits, load_data
from ..data.tokens import TokenHeader, save_tokens
from ..likelihood.score import encode_batch

log = logging.getLogger("vqgen.tokenize")


@torch.no_grad()
def encode_dataset(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int = 256,
                   desc: str = "tokenize", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encode(x [B, ...]) -> int64 [B, *grid]`` over a dataset: (tokens [N, *grid], labels [N])."""
    toks, labs = [], []
    for x, y in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc=desc, disable=not progress):
        toks.append(encode(x.float()).cpu())
        labs.append(torch.as_tensor(y).long())
    return torch.cat(toks), torch.cat(labs)


def _covering(dataset: Dataset) -> Dataset:
    """The dataset as windows covering every file when it has that view (audio files), else itself."""
    return dataset.covering() if hasattr(dataset, "covering") else dataset  # type: ignore[attr-defined]


def with_placements(splits: Splits, placements: int) -> Splits:
    """``splits`` with the training split as ``placements`` covering views of epochs 0..placements-1: an audio
    file shorter than a clip sits at an offset drawn per (seed, epoch, item), so each view holds the same words at
    other offsets (a shift by part of a token's hop gives other tokens), more distinct token sequences for a prior
    to learn from than one tokenization. Datasets without that view (images, ``tones``), or ``placements`` <= 1,
    are returned unchanged. The test split is untouched (clips centred)."""
    if placements <= 1 or not hasattr(splits.train, "covering"):
        return splits
    views = []
    for epoch in range(placements):
        view = splits.train.covering()  # type: ignore[attr-defined]
        view.set_epoch(epoch)
        views.append(view)
    return dataclasses.replace(splits, train=ConcatDataset(views))


def tokenize_splits(splits: Splits, out: str | Path, dataset_name: str, codec: Codec,
                    codec_path: str | Path | None = None, batch_size: int = 256, progress: bool = True) -> TokenHeader:
    """Write both splits as token grids ``codec.encode(x)`` with a ``tokens.json`` header that records the codec
    (``codec.record(codec_path)``: a raw codec needs no path, its config rebuilds it). Audio files longer than
    a clip give one grid per window of the consecutive windows covering the file (the last one ends at the
    file's end), labelled with the file's label."""
    if splits.modality != codec.modality:
        raise ValueError(f"the dataset is {splits.modality} but the codec is for {codec.modality}")
    codec.eval()
    # Timed inputs (audio) are windows of longer files, cut to the codec's clip; others must match it.
    if tuple(splits.input_shape) != tuple(codec.input_shape) and not codec.modality.timed:
        raise ValueError(f"the dataset's inputs are {tuple(splits.input_shape)} but the codec expects "
                         f"{tuple(codec.input_shape)}")
    # Token folders hold fixed grids, so long audio files are tokenized as consecutive windows covering each file
    # (``AudioClipDataset.covering``) rather than the training split's random windows; clip datasets are unchanged.
    result = {name: encode_dataset(lambda x: encode_batch(codec, x), _covering(ds), batch_size,
                                   desc=f"tokenize {name}", progress=progress)
              for name, ds in (("train", splits.train), ("test", splits.test))}
    header = TokenHeader(
        vocab_size=codec.vocab_size, token_shape=tuple(codec.token_shape(splits.input_shape)),
        modality=str(codec.modality),
        dataset=dataset_name, codec=codec.record(codec_path), num_classes=splits.num_classes,
        class_names=list(splits.class_names), counts={k: int(v[0].shape[0]) for k, v in result.items()},
    )
    save_tokens(out, header, result)
    return header


def tokenize(data: dict, out: str | Path, codec_dir: str | Path | None = None, raw_levels: int | None = None,
             batch_size: int = 256, progress: bool = True, device: str = "cpu") -> TokenHeader:
    """The stage: load the dataset described by ``data`` (``make_spec`` arguments) and tokenize it with the codec
    in ``codec_dir`` (on ``device``), or with a ``RawCodec`` of ``raw_levels`` (2 or 256; audio is always 256-level
    mu-law)."""
    from .common import make_spec

    if (codec_dir is None) == (raw_levels is None):
        raise ValueError("pass exactly one of --tokenizer DIR or --raw")
    codec = load_codec(codec_dir, map_location=device) if codec_dir is not None else None
    spec: DataSpec = make_spec(codec=codec, **data)
    splits = load_data(spec)
    if codec is None:  # the modality refuses levels it has no raw codec for (audio: 256-level mu-law only)
        codec = RawCodec(splits.modality, raw_levels, splits.input_shape, splits.sample_rate)
    return tokenize_splits(splits, out, spec.name, codec, codec_dir, batch_size, progress)
