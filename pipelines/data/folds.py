"""Cross-validation folds of any dataset: ``DataSpec.folds`` / ``fold`` / ``validation`` (``--folds K --fold I``).

The dataset's train and test splits are pooled and cut into K folds stratified by label (every label spread evenly
over the folds), by a fixed permutation (independent of ``--seed``, so every run sees the same folds): each example
is in exactly one test fold. ``validation`` moves the fold's test examples out altogether and holds out a stratified
10% of the remaining training examples as the test split instead, so a recipe can be chosen without ever seeing a
test fold.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from .spec import Splits

FOLD_SEED = 20261207  # fixed: the folds of a dataset never change with --seed
VALIDATION_FRACTION = 0.1


def _labels(ds: Dataset) -> np.ndarray:
    """int64 [N] labels of a dataset of (x, label) (-1 where it has none); a TensorDataset without decoding."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) > 1:
        return ds.tensors[1].numpy().astype(np.int64)
    return np.array([int(y) if y is not None else -1 for _, y in (ds[i] for i in range(len(ds)))], dtype=np.int64)


def stratified_folds(labels: np.ndarray, k: int, seed: int = FOLD_SEED) -> np.ndarray:
    """Fold index int64 [N] in [0, k) per example: each label's examples, in a seeded random order, dealt round-robin
    (continuing from where the previous label stopped), so folds differ in size by at most one."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)
    return out


def _take(pool: Dataset, idx: np.ndarray) -> Dataset:
    if isinstance(pool, TensorDataset):
        t = torch.from_numpy(np.sort(idx))
        return TensorDataset(*(x[t] for x in pool.tensors))
    return Subset(pool, np.sort(idx).tolist())


def fold_splits(splits: Splits, k: int, fold: int, validation: bool = False) -> Splits:
    """``splits`` re-cut into fold ``fold`` of ``k`` (see the module docstring); sizes and labels kept."""
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"--fold {fold} is not one of the {k} folds (0..{k - 1})")
    a, b = splits.train, splits.test
    if isinstance(a, TensorDataset) and isinstance(b, TensorDataset) and len(a.tensors) == len(b.tensors):
        pool: Dataset = TensorDataset(*(torch.cat([x, y]) for x, y in zip(a.tensors, b.tensors)))
    else:
        pool = ConcatDataset([a, b])
    labels = _labels(pool)
    if len(labels) < k:
        raise ValueError(f"--folds {k}: the dataset has only {len(labels)} examples")
    assign = stratified_folds(labels, k)
    train, test = np.flatnonzero(assign != fold), np.flatnonzero(assign == fold)
    if validation:  # the test fold is left out; 10% of the rest (stratified) stands in for it
        held = stratified_folds(labels[train], round(1 / VALIDATION_FRACTION), FOLD_SEED + 1 + fold) == 0
        train, test = train[~held], train[held]
    return dataclasses.replace(splits, train=_take(pool, train), test=_take(pool, test))
