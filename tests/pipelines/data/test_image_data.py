"""Image data sources: built-ins, local folders (with corrupt files), the Hub code path on local parquet."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data import DataSpec, load_data, report_skips


def test_mnist5k_split_is_fixed_and_stratified():
    s = load_data(DataSpec("mnist5k"))
    assert len(s.train) == 4500 and len(s.test) == 500 and s.num_classes == 10
    test_labels = torch.stack([s.test[i][1] for i in range(len(s.test))])
    assert torch.equal(torch.bincount(test_labels), torch.full((10,), 50))
    x, _ = s.train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert x[:, :2].abs().sum() == 0  # padded from 28x28: the border is empty
    other_seed = load_data(DataSpec("mnist5k", seed=5))
    assert torch.equal(s.test[17][0], other_seed.test[17][0])  # the held-out digits do not move with the seed


def test_mnist5k_converts_size_and_channels():
    s = load_data(DataSpec("mnist5k", image_size=16, channels=3, limit=10))
    x, _ = s.train[0]
    assert x.shape == (3, 16, 16) and len(s.train) == 10
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_shapes_deterministic_per_seed_and_labelled():
    a, b, c = (load_data(DataSpec("shapes", channels=3, seed=s)) for s in (1, 1, 2))
    assert torch.equal(a.train[5][0], b.train[5][0]) and not torch.equal(a.train[5][0], c.train[5][0])
    assert a.class_names == ["circle", "square", "triangle"]
    labels = {int(a.train[i][1]) for i in range(60)}
    assert labels == {0, 1, 2}
    x, _ = a.train[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_unknown_dataset_lists_builtins():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'") as e:
        load_data(DataSpec("nope"))
    assert all(name in str(e.value) for name in ("mnist5k", "shapes", "tones", "spoken-digits"))


def test_a_builtin_of_another_modality_is_a_clear_error():
    with pytest.raises(ValueError, match="mnist5k holds image data, not audio"):
        load_data(DataSpec("mnist5k", modality="audio"))


def _png(color: int, size=(20, 24), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color=(color, color, color) if mode == "RGB" else color)


def test_image_folder_labels_resize_and_corrupt_files(tmp_path, caplog):
    for label, color in (("cats", 30), ("dogs", 200)):
        (tmp_path / label).mkdir()
        for i in range(6):
            _png(color, mode="RGB" if i % 2 else "L").save(tmp_path / label / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    spec = DataSpec(str(tmp_path), channels=3, image_size=16, test_fraction=0.25)
    with caplog.at_level(logging.WARNING, logger="vqgen.data"):
        s = load_data(spec)
        assert caplog.text == ""  # nothing is read when the dataset is loaded: the files are listed, not opened
        assert len(s.train) + len(s.test) == 13 and s.class_names == ["cats", "dogs"]
        for ds in (s.train, s.test):
            for i in range(len(ds)):
                x, y = ds[i]  # the broken file stands aside for the next readable image
                assert x.shape == (3, 16, 16)
                expected = 30 / 255 if y == 0 else 200 / 255  # subfolder name -> label, grayscale converted to RGB
                assert x.mean().item() == pytest.approx(expected, abs=0.01)
        assert report_skips(s) == 1 and report_skips(s) == 0  # one end-of-run warning, not repeated
    assert caplog.text.count("skipped 1 unreadable image file(s)") == 1
    assert "broken.png: cannot decode image" in caplog.text
    strict = load_data(DataSpec(str(tmp_path), channels=3, image_size=16, strict=True))
    with pytest.raises(ValueError, match=r"broken.png: cannot decode image.*--strict"):
        for ds in (strict.train, strict.test):
            for i in range(len(ds)):
                ds[i]


def test_hub_code_path_on_local_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    def encoded(v: int) -> dict:
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32), v, dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = {"picture": [encoded(10 * i) for i in range(10)], "digit": list(range(10))}
    ds = Dataset.from_dict(rows, features=Features({"picture": HFImage(), "digit": Value("int64")}))
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    ds.select(range(3)).to_parquet(str(tmp_path / "data" / "test-00000.parquet"))
    spec = DataSpec(str(tmp_path), modality="image", image_column="picture", label_column="digit", channels=1)
    s = load_data(spec)
    assert len(s.train) == 10 and len(s.test) == 3
    x, y = s.train[4]
    assert x.shape == (1, 32, 32) and int(y) == 4 and x.mean().item() == pytest.approx(40 / 255, abs=1e-3)
    with pytest.raises(ValueError, match="no column 'image'.*--image-column"):
        load_data(DataSpec(str(tmp_path), modality="image"))
