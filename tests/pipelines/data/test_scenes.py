"""The ``scenes`` built-in: registered by its file alone; deterministic per seed, any index on its own; colour images
in [0, 1] at any size; the label (time of day) is visible in the picture; it runs through the CLI."""

import torch

from pipelines.cli import main
from pipelines.data import DATASETS, DataSpec, infer_modality, load_data


def test_registered_as_an_image_builtin() -> None:
    assert "scenes" in DATASETS and DATASETS.get("scenes").channels == 3
    assert infer_modality(DataSpec("scenes")) == "image"


def test_deterministic_per_seed_and_index() -> None:
    a = load_data(DataSpec("scenes", image_size=32, channels=3, limit=8, seed=1))
    b = load_data(DataSpec("scenes", image_size=32, channels=3, limit=8, seed=1))
    c = load_data(DataSpec("scenes", image_size=32, channels=3, limit=8, seed=2))
    assert torch.equal(a.train[5][0], b.train[5][0]) and not torch.equal(a.train[5][0], c.train[5][0])
    assert len(a.train) == 8 and len(a.test) == 500 and a.class_names == ["day", "sunset", "night"]
    x, y = a.test[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and 0 <= y < 3
    grey = load_data(DataSpec("scenes", image_size=16, channels=1, limit=2)).train[0][0]
    assert grey.shape == (1, 16, 16)


def test_the_time_of_day_is_in_the_picture() -> None:
    """Night is darkest; day is the bluest at the top of the sky."""
    data = load_data(DataSpec("scenes", image_size=32, channels=3, limit=90))
    by_label: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
    for i in range(90):
        x, y = data.train[i]
        by_label[int(y)].append(x)
    assert all(len(v) >= 10 for v in by_label.values())
    mean = {k: torch.stack(v).mean(0) for k, v in by_label.items()}
    assert mean[2].mean() < mean[1].mean() and mean[2].mean() < mean[0].mean()
    sky_blue = {k: (m[2, :6] - m[0, :6]).mean() for k, m in mean.items()}  # blue minus red, top rows
    assert sky_blue[0] > sky_blue[1] and sky_blue[0] > 0.2


def test_tokenizes_through_the_cli(tmp_path) -> None:
    assert main(["tokenize", "--raw", "--levels", "256", "--dataset", "scenes", "--limit", "4", "--image-size", "16",
                 "--out", str(tmp_path / "t"), "--quiet"]) == 0
    from pipelines.data.tokens import load_token_header

    h = load_token_header(tmp_path / "t")
    assert h.counts["train"] == 4 and tuple(h.token_shape) == (16, 48) and h.class_names == ["day", "sunset", "night"]
