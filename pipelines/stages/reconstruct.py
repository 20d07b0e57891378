"""`vqgen reconstruct`: originals next to their reconstructions, plus the tokenizer's test metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tokenizers_vq import Tokenizer, load_codec
from tokenizers_vq import metrics as M

from ..data import Splits, load_data, report_skips
from ..training.tasks import evaluate_tokenizer


@torch.no_grad()
def split_reconstructions(tokenizer: Tokenizer, dataset: Dataset, batch_size: int = 16
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstructions, originals) of a whole split, each float32 [N, *input] on the CPU: ``dataset`` yields
    ``(x, label)`` in the tokenizer's layout; reconstructions are cut to the input's length."""
    device = next(tokenizer.parameters()).device
    est, ref = [], []
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        x = x.to(device).float()
        est.append(tokenizer.decode(tokenizer.encode(x))[..., : x.shape[-1]].cpu())
        ref.append(x.cpu())
    return torch.cat(est), torch.cat(ref)


def split_stoi(tokenizer: Tokenizer, dataset: Dataset, batch_size: int = 16) -> float | None:
    """STOI (``tokenizers_vq.metrics.stoi``) of the tokenizer's reconstructions of a whole audio split.

    dataset yields ``(x float32 [T] in [-1, 1], label)`` at the tokenizer's sample rate. Returns a float in
    about [0, 1] (the split's clips joined end to end, so single short digits count), or None without pystoi.
    """
    return M.stoi(*split_reconstructions(tokenizer, dataset, batch_size), tokenizer.config.sample_rate)


@torch.no_grad()
def reconstruct(tokenizer: Tokenizer, splits: Splits, out: str | Path, n: int = 16, seed: int = 0,
                progress: bool = True, num_workers: int = 0) -> dict[str, Any]:
    """Write reconstructions of ``n`` test examples and return the test-split metrics.

    Images: ``out`` is a PNG file (originals above reconstructions) or a folder (``reconstructions.png``).
    Audio: ``out`` is a folder with ``NN_original.wav`` / ``NN_reconstruction.wav`` pairs and
    ``spectrograms.png`` (each pair side by side, one pair per row). ``metrics.json`` goes beside them;
    for audio it includes ``stoi`` (``split_stoi``) when pystoi is installed. (The modality's
    ``write_reconstructions`` and ``split_metrics``.) ``num_workers``: DataLoader worker processes that read the
    test split for the metrics (the same metrics for any number).
    """
    tokenizer.eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(splits.test), generator=g)[:n].tolist()
    x = torch.stack([splits.test[i][0] for i in idx]).float()
    recon = tokenizer.decode(tokenizer.encode(x))
    metrics = evaluate_tokenizer(tokenizer, splits.test, progress=progress, num_workers=num_workers)
    kind, rate = tokenizer.modality, tokenizer.sample_rate
    # Whole-split metrics (audio: STOI); the split is reconstructed only for a modality that has some.
    metrics |= kind.split_metrics(lambda: split_reconstructions(tokenizer, splits.test), rate)
    if kind.timed:  # a causal codec streams: its algorithmic latency; None: needs whole clips
        latency = tokenizer.latency_ms
        metrics |= {"streaming": math.isfinite(latency), "latency_ms": latency if math.isfinite(latency) else None}
    written = kind.write_reconstructions(x, recon, out, rate)
    (written if written.is_dir() else written.parent).joinpath("metrics.json").write_text(json.dumps(metrics, indent=2))
    metrics["written"] = str(written)
    return metrics


def reconstruct_dataset(codec_dir: str | Path, data: dict[str, Any], out: str | Path, n: int = 16, seed: int = 0,
                        device: str = "cpu", progress: bool = True, num_workers: int = 0) -> dict[str, Any]:
    """The stage: load the tokenizer in ``codec_dir`` and the dataset ``data`` (sized by it), then ``reconstruct``."""
    from .common import make_spec

    tok = load_codec(codec_dir, map_location=device)
    if not isinstance(tok, Tokenizer):
        raise ValueError(f"{codec_dir} is a raw codec: it reconstructs its inputs exactly (at its quantization); "
                         "pass a trained tokenizer folder")
    splits = load_data(make_spec(codec=tok, **data))
    metrics = reconstruct(tok, splits, out, n=n, seed=seed, progress=progress, num_workers=num_workers)
    report_skips(splits)  # unreadable images met (and replaced by the next readable one) while reading
    return metrics

