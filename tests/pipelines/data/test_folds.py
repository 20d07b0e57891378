"""Cross-validation folds of any dataset (``--folds K --fold I [--validation]``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pipelines.data import DataSpec, Splits, load_data
from pipelines.data.folds import fold_splits, stratified_folds


def _splits(n_train: int = 80, n_test: int = 20) -> Splits:
    x = torch.arange(n_train + n_test, dtype=torch.float32)[:, None]  # each example's identity
    y = torch.arange(n_train + n_test) % 4
    return Splits(train=TensorDataset(x[:n_train], y[:n_train]), test=TensorDataset(x[n_train:], y[n_train:]),
                  modality="image", num_classes=4)


def _ids(ds) -> set[int]:
    return {int(v) for v in ds.tensors[0][:, 0]}


def test_each_example_in_exactly_one_test_fold():
    base = _splits()
    tests = [fold_splits(base, 5, k) for k in range(5)]
    seen = [_ids(s.test) for s in tests]
    assert sorted(i for t in seen for i in t) == list(range(100))  # every example once
    for s, t in zip(tests, seen):
        assert len(t) == 20 and not (_ids(s.train) & t) and len(_ids(s.train)) == 80
        assert np.bincount(s.test.tensors[1].numpy()).tolist() == [5, 5, 5, 5]  # stratified by label
    again = fold_splits(base, 5, 2)
    assert _ids(again.test) == seen[2]  # fixed folds


def test_validation_never_sees_the_test_fold():
    base = _splits()
    fold = fold_splits(base, 5, 1)
    val = fold_splits(base, 5, 1, validation=True)
    assert not (_ids(val.train) | _ids(val.test)) & _ids(fold.test)
    assert _ids(val.train) | _ids(val.test) == _ids(fold.train) and len(_ids(val.test)) == 8


def test_stratified_folds_balance_sizes():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 11)
    f = stratified_folds(labels, 4)
    assert np.bincount(f).max() - np.bincount(f).min() <= 1
    for c in range(3):
        counts = np.bincount(f[labels == c], minlength=4)
        assert counts.max() - counts.min() <= 1


def test_fold_errors():
    with pytest.raises(ValueError, match="--folds must be at least 2"):
        fold_splits(_splits(), 1, 0)
    with pytest.raises(ValueError, match="--fold 5 is not one of the 5 folds"):
        fold_splits(_splits(), 5, 5)
    with pytest.raises(ValueError, match="give --folds K too"):
        load_data(DataSpec("mnist5k", fold=2))


def test_mnist5k_folds_through_the_data_layer():
    s = load_data(DataSpec("mnist5k", folds=5, fold=3))
    assert len(s.train) == 4000 and len(s.test) == 1000
    assert np.bincount(s.test.tensors[1].numpy()).tolist() == [100] * 10
