"""Scoring: negative log-likelihood, bits per token / per dimension, and out-of-distribution detection.

What the numbers mean
---------------------
* ``nll_nats``: -ln p(grid [| label]) under the prior, summed over the grid's positions.
* ``bits_per_token`` = nll / (ln 2 * L), L = number of grid positions.
* ``bits_per_dim`` = nll / (ln 2 * D), D = ``codec.dims_per_input``: the input dimensions one grid stands
  for (C*H*W of the image, or T audio samples), for raw and tokenizer codecs alike.

For raw grids, bits/dim is the usual likelihood of the (quantized) pixels and is comparable with
published PixelCNN-style numbers at the same quantization. For tokenizer tokens it is only the code
length of the *tokens* spread over the pixels: it says nothing about the pixels the tokenizer throws
away, so it is a lower bound on nothing and must not be compared with raw-pixel bits/dim. The CSV's
``bits_per_dim_kind`` column and the summary's ``bits_per_dim_kind`` say which one you have.

OOD detection
-------------
Anomaly scores are measured against the prior's own ``ScoreReference`` (``reference.py``): its scores on training
grids it was not trained on, recorded by ``train-prior``. Every score of an input comes from that input and the
reference alone, so it is the same in any dataset. The plain NLL alone fails where an input is *simpler* than the
training data (Nalisnick et al. 2019: SVHN under a CIFAR model; here shrunk or typed digits under an MNIST model):
such inputs are atypically likely. ``reference.py`` defines the scores (plain NLL, typicality |NLL - mean|,
calibrated two-sided NLL tails, the input-complexity corrections ``excess`` and ``local_excess``) and says which
is the default and why. ``ood_auroc`` compares two sets of scores with the Mann-Whitney rank statistic.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from prior import Prior
from tokenizers_vq import Codec

from ..data import Splits
from .reference import DEFAULT_METHOD, Features, ScoreReference, fit_local_model, png_nats

LN2 = math.log(2.0)
BPD_KINDS = {  # by ``Codec.kind``
    "raw": "raw_likelihood",  # -log2 p(quantized pixels or mu-law samples) per input dimension
    "tokenizer": "token_code_length",  # -log2 p(tokens) spread over the input's dimensions; NOT a pixel likelihood
}


# ---------------------------------------------------------------------------------------------- likelihood
def net_labels(prior: Prior, labels: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """Labels as the prior's net takes them: int64 [n] in [0, num_classes], or None (unconditional prior).

    A conditional prior given ``labels=None`` or a label of -1 (unknown) uses the null label
    ``num_classes``, i.e. the unconditional p(grid) that classifier-free-guidance training also fits.
    An unconditional prior ignores labels (they are only carried along). ``Prior.check_labels`` with
    ``unknown=True``.
    """
    return prior.check_labels(labels, n, device, unknown=True)


@torch.no_grad()
def score_grids(prior: Prior, tokens: Tensor, labels: Tensor | None = None, batch_size: int = 256) -> Tensor:
    """Per-example negative log-likelihood in nats: float64 [N] (>= 0).

    tokens: int [N, *prior.shape] in [0, vocab_size); labels: int64 [N] (-1 = unknown -> null label) or None.
    Runs the prior in eval mode (no dropout) on its own device, ``batch_size`` grids at a time; a last, smaller
    batch is padded to ``batch_size`` (and the padding dropped), because float kernels may round differently at
    another batch size: a grid scores the same alone as among others, to the last bit.
    """
    prior.check_tokens(tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = prior.device
    n = tokens.shape[0]
    lab = net_labels(prior, labels, n, torch.device("cpu"))
    was_training = prior.training
    prior.eval()
    out = []
    try:
        for i in range(0, n, batch_size):
            flat = tokens[i: i + batch_size].reshape(-1, prior.config.seq_len).long()
            lb = None if lab is None else lab[i: i + batch_size]
            k = len(flat)
            if k < batch_size and n > 0:  # always one batch shape: a grid's score then never depends on its company
                flat = torch.cat([flat, flat[:1].expand(batch_size - k, -1)])
                lb = None if lb is None else torch.cat([lb, lb[:1].expand(batch_size - k)])
            lp = prior.flat_log_prob(flat.to(device), None if lb is None else lb.to(device), torch.float64)
            out.append(-lp[:k].cpu())  # softmax in float64
    finally:
        prior.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def bits_per_token(nll_nats: Tensor | float, seq_len: int) -> Tensor | float:
    """NLL in nats of a whole grid -> bits per grid position: nll / (ln 2 * seq_len)."""
    return nll_nats / (LN2 * seq_len)


def bits_per_dim(nll_nats: Tensor | float, dims: int) -> Tensor | float:
    """NLL in nats of a whole grid -> bits per input dimension: nll / (ln 2 * dims).

    ``dims`` is C*H*W (image) or T (audio) of the input the grid stands for; for raw grids it equals the
    grid size. For tokenizer tokens the result is the tokens' code length per pixel, not a pixel
    likelihood (see the module docstring).
    """
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    return nll_nats / (LN2 * dims)


# ---------------------------------------------------------------------------------------------- OOD
def typicality_score(nll: Tensor | np.ndarray, train_mean_nll: float) -> np.ndarray:
    """|NLL - mean train NLL| per example (Nalisnick et al. 2019, M = 1); higher = more anomalous."""
    return np.abs(np.asarray(nll, dtype=np.float64) - float(train_mean_nll))


def ood_auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve for telling OOD inputs from in-distribution ones, higher score = OOD.

    Equals P(score_out > score_in) + 0.5 P(tie) over all (in, out) pairs: the Mann-Whitney U statistic
    divided by n_in * n_out, computed from average ranks so ties count half. 1.0 = perfect, 0.5 = chance.
    """
    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"ood_auroc needs at least one score on each side, got {a.size} in and {b.size} out")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("ood_auroc: scores contain NaN or inf")
    allv = np.concatenate([a, b])
    order = np.argsort(allv, kind="mergesort")
    sorted_v = allv[order]
    ranks = np.empty_like(allv)
    # average rank (1-based) within each run of equal values, so a tie contributes one half
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], allv.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u_out = ranks[a.size:].sum() - b.size * (b.size + 1) / 2.0
    return float(u_out / (a.size * b.size))


# ---------------------------------------------------------------------------------------------- datasets
class ReadableRows(Dataset):
    """Rows ``rows`` of ``dataset``, read with its ``read_item`` (None for an unreadable file, dropped by
    ``collate_readable``) where it has one, else by indexing."""

    def __init__(self, dataset: Dataset, rows: range):
        self.dataset, self.rows = dataset, rows
        self.get = getattr(dataset, "read_item", dataset.__getitem__)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return self.get(self.rows[i])


def collate_readable(items: list[Any]) -> Any:
    """``default_collate`` of the readable items of a batch (None: a skipped file); None when there are none. An
    ``(x, label)`` item with label None gets -1, as ``input_batches`` reading in its own process gives."""
    items = [(it[0], -1 if it[1] is None else it[1]) if isinstance(it, tuple) and len(it) == 2 else it
             for it in items if it is not None]
    return default_collate(items) if items else None


def input_batches(dataset: Dataset, batch_size: int, limit: int | None = None,
                  num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """(x float32 [b, *input_shape], labels int64 [b], -1 where unknown) batches of a dataset of (x, label). An
    input whose file turns out unreadable (the dataset's ``read_item`` gives None) is left out, as at loading.
    ``num_workers``: DataLoader worker processes that read and decode the inputs (the batches are the same)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if num_workers:
        loader = DataLoader(ReadableRows(dataset, range(n)), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate_readable)
        for batch in loader:
            if batch is not None:
                x, y = batch
                yield torch.as_tensor(x), torch.as_tensor(y).long()
        return
    get = getattr(dataset, "read_item", dataset.__getitem__)
    for i in range(0, n, batch_size):
        items = [it for it in (get(j) for j in range(i, min(i + batch_size, n))) if it is not None]
        if not items:
            continue
        xs = torch.stack([torch.as_tensor(x) for x, _ in items])
        ys = torch.tensor([int(y) if y is not None else -1 for _, y in items], dtype=torch.long)
        yield xs, ys


def encode_batch(codec: Codec, x: Tensor) -> Tensor:
    """A batch of inputs float32 [B, *input_shape] -> int64 grids [B, *token_shape] on the CPU, encoded on the
    codec's device (a tokenizer may live on a GPU; a raw codec has no parameters)."""
    return codec.encode(x.to(codec.device)).cpu()


def grid_features(prior: Prior, local_model: Prior, grids: Tensor, batch_size: int = 256) -> Features:
    """The score features of grids (int [N, *prior.shape]): the prior's marginal NLL (null label for a conditional
    prior), the PNG length and the local model's NLL, nats (``reference.Features``)."""
    return Features(score_grids(prior, grids, None, batch_size).numpy(), png_nats(grids, prior.config.vocab_size),
                    score_grids(local_model, grids, None, batch_size).numpy())


def reference_from_grids(prior: Prior, held: Tensor, fit: Tensor, source: str, *, in_sample: bool = False,
                         batch_size: int = 256) -> ScoreReference:
    """A score reference: the local model counted on ``fit`` (training grids, int [m, *prior.shape]) and the
    features of ``held`` (grids like the training data that neither model was fitted on, int [n, *prior.shape])."""
    c = prior.config
    local = fit_local_model(fit, c.vocab_size, prior.shape, c.num_codebooks)
    return ScoreReference(grid_features(prior, local, held, batch_size), source, in_sample, local)


@dataclass
class GridScores:
    """Per-input numbers of one scored set: ``nll`` float64 [N] as the CSV reports it (label-conditional where
    labels are used), the score ``features`` (``Features``; ``local`` is NaN without a reference), ``labels`` int64
    [N] and one input's shape."""

    nll: Tensor
    features: Features
    labels: Tensor
    input_shape: tuple[int, ...]


def _score_inputs(prior: Prior, codec: Codec, dataset: Dataset, batch_size: int, use_labels: bool,
                  reference: ScoreReference | None, progress: bool, num_workers: int = 0) -> GridScores:
    nlls, feats, labs, shape = [], [], [], ()
    conditional = bool(use_labels and prior.config.num_classes)
    bar = tqdm(total=len(dataset), desc="scoring", disable=not progress, leave=False)  # type: ignore[arg-type]
    for x, y in input_batches(dataset, batch_size, num_workers=num_workers):
        shape = tuple(x.shape[1:])
        grids = encode_batch(codec, x)
        if tuple(grids.shape[1:]) != prior.shape:
            raise ValueError(
                f"inputs of shape {shape} give grids of shape {tuple(grids.shape[1:])} but the prior models "
                f"{prior.shape}; score with the codec and input size the prior was trained on"
            )
        if reference is not None:
            f = grid_features(prior, reference.local_model, grids, batch_size)
        else:
            f = Features(score_grids(prior, grids, None, batch_size).numpy(), png_nats(grids, prior.config.vocab_size),
                         np.full(len(grids), np.nan))
        plain = torch.from_numpy(f.nll)  # the marginal p(grid): what the reference holds
        nlls.append(score_grids(prior, grids, y, batch_size) if conditional and (y >= 0).any() else plain)
        feats.append(f)
        labs.append(y)
        bar.update(len(y))
    bar.close()
    cat = Features(*(np.concatenate([getattr(f, k) for f in feats]) for k in ("nll", "complexity", "local")))
    return GridScores(torch.cat(nlls), cat, torch.cat(labs), shape)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{float(v):.6f}"


@torch.no_grad()
def score_dataset(prior: Prior, codec: Codec, data: Splits | Dataset, out_csv: str | Path,
                  batch_size: int = 64, progress: bool = True, *, reference: ScoreReference | None = None,
                  method: str = DEFAULT_METHOD, fpr: float | None = None, use_labels: bool = True,
                  return_scores: bool = False, num_workers: int = 0) -> Any:
    """Score every input of a dataset, write one CSV row per input, return a summary dict.

    data: a ``Dataset`` of (x, label), or ``Splits`` (its test split is scored). Inputs become grids through
    ``codec.encode`` (a tokenizer, or a ``RawCodec`` for raw pixels / samples). ``use_labels``: a conditional prior
    scores p(grid | label) in ``nll_nats``; otherwise (or for label -1) p(grid) via the null label. Anomaly scores
    always use the marginal p(grid), as the reference does.

    ``reference``: the prior's ``ScoreReference`` (``reference.py``). Every anomaly score is computed from one
    input and the reference, never from the other inputs: the same input scores the same in any dataset. Without
    one, ``ood_score`` is the plain NLL and ``typicality`` is left empty. ``method``: which score ``ood_score`` is
    (``METHODS``). ``fpr`` in (0, 1) adds a ``verdict`` column ("ood" / "in") at the threshold that flags that
    fraction of held-out in-distribution inputs (needs a reference).

    CSV columns: index, label, nll_nats, bits_per_token, bits_per_dim, bits_per_dim_kind, complexity_nats (PNG of the
    grid), local_nats (NLL under the reference's local model), typicality, ood_score (higher = more anomalous),
    ood_method[, verdict].
    Summary: n, mean nll / bits_per_token / bits_per_dim, bits_per_dim_kind, reference (its source) and
    reference_mean_nll, ood_method, csv[, fpr, threshold, flagged (the fraction called "ood")].
    ``return_scores``: return ``(summary, GridScores)`` (the per-input numbers, for reports). ``num_workers``:
    DataLoader worker processes that read and decode the inputs (the scores are the same for any number).
    """
    if not isinstance(codec, Codec):
        raise ValueError(f"score_dataset: pass a codec (a Tokenizer, or a RawCodec for raw pixels / mu-law samples), "
                         f"got {type(codec).__name__}")
    dataset = data.test if isinstance(data, Splits) else data
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("score_dataset: the dataset to score is empty")
    if fpr is not None and reference is None:
        raise ValueError("--fpr calibrates a threshold on the prior's score reference, and this prior has none: "
                         "pass --reference DATA (the data it was trained on) once to compute it")
    s = _score_inputs(prior, codec, dataset, batch_size, use_labels, reference, progress, num_workers)
    feats = s.features
    if reference is not None:
        ood, used = reference.scores(feats, method), method
        typ: list[float | None] = list(reference.scores(feats, "typicality"))
        local: list[float | None] = list(feats.local)
    else:
        ood, used, typ, local = feats.nll, "nll", [None] * len(feats.nll), [None] * len(feats.nll)
    threshold = reference.threshold(fpr, method) if (fpr is not None and reference is not None) else None
    dims = codec.dims_per_input(s.input_shape)
    kind = BPD_KINDS[codec.kind]
    bpt, bpd = bits_per_token(s.nll, prior.config.seq_len), bits_per_dim(s.nll, dims)

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "nll_nats", "bits_per_token", "bits_per_dim", "bits_per_dim_kind",
                    "complexity_nats", "local_nats", "typicality", "ood_score", "ood_method"] + (["verdict"] if threshold is not None
                                                                                   else []))
        for i in range(len(s.nll)):
            row = [i, int(s.labels[i]), _fmt(s.nll[i]), _fmt(bpt[i]), _fmt(bpd[i]), kind, _fmt(feats.complexity[i]),
                   _fmt(local[i]), _fmt(typ[i]), _fmt(ood[i]), used]
            w.writerow(row + (["ood" if ood[i] > threshold else "in"] if threshold is not None else []))
    tmp.replace(out_csv)
    summary = {
        "n": int(len(s.nll)), "nll_nats": float(s.nll.mean()), "bits_per_token": float(bpt.mean()),
        "bits_per_dim": float(bpd.mean()), "bits_per_dim_kind": kind, "dims_per_input": int(dims),
        "reference": reference.source if reference is not None else None,
        "reference_mean_nll": reference.mean_nll if reference is not None else None,
        "ood_method": used, "csv": str(out_csv),
    }
    if threshold is not None:
        summary |= {"fpr": fpr, "threshold": threshold, "flagged": float((ood > threshold).mean())}
    return (summary, s) if return_scores else summary
