"""A small CNN digit classifier, used to check automatically that generated digits look like the digit asked
for (the demo's "recognisable" check, also bench/demo_sampling.py's). Trained on the mnist5k training split in
well under a minute."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqgen_io import atomic_write_text, load_safetensors, save_safetensors


class DigitClassifier(nn.Module):
    """float32 [B, 1, 32, 32] in [0, 1] -> logits [B, num_classes]."""

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def train_classifier(train_set: Dataset, test_set: Dataset, num_classes: int = 10, epochs: int = 6, seed: int = 0,
                     progress: bool = True) -> tuple[DigitClassifier, float]:
    """Train with light augmentation (random shifts of up to 2 px); returns (model, test accuracy in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x0 = train_set[0][0]
    model = DigitClassifier(num_classes, x0.shape[0])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(train_set, batch_size=128, shuffle=True, generator=g)
    for _ in tqdm(range(epochs), desc="train digit classifier", disable=not progress, leave=False):
        model.train()
        for x, y in loader:
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, accuracy(model, test_set)


@torch.no_grad()
def predict(model: DigitClassifier, x: torch.Tensor) -> torch.Tensor:
    """float32 [B, C, H, W] in [0, 1] -> predicted labels int64 [B]."""
    model.eval()
    return model(x).argmax(-1)


@torch.no_grad()
def accuracy(model: DigitClassifier, dataset: Dataset) -> float:
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=256):
        correct += (predict(model, x) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def save_classifier(model: DigitClassifier, out: str | Path) -> None:
    """``model.safetensors`` + ``config.json`` (classes, channels) in ``out``, so later checks use the same reader."""
    n_cls, ch = model.net[-1].out_features, model.net[0].in_channels
    save_safetensors(model.state_dict(), Path(out) / "model.safetensors")
    atomic_write_text(Path(out) / "config.json", json.dumps({"num_classes": n_cls, "channels": ch}))


def load_classifier(path: str | Path) -> DigitClassifier:
    """The classifier ``save_classifier`` wrote into ``path``, in eval mode."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    model = DigitClassifier(cfg["num_classes"], cfg["channels"])
    model.load_state_dict(load_safetensors(Path(path) / "model.safetensors", "re-run `vqgen demo` to write it again"))
    return model.eval()

