"""The ``photos`` built-in (crops of real photographs, whole photographs split by seed) and ``--augment`` (random
crops and flips of an image training split, drawn per seed, epoch and item)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipelines.cli import main
from pipelines.data import DATASETS, DataSpec, EncodedImageDataset, infer_modality, load_data
from pipelines.data.builtins import photos
from pipelines.data.image_io import AugmentedImages, augment_train, parse_augment


@pytest.fixture
def no_wallpapers(monkeypatch, tmp_path):
    """As on a machine without the wallpaper packages (CI): every wallpaper folder is empty."""
    monkeypatch.setattr(photos, "WALLPAPER_DIRS", {k: tmp_path / "none" for k in photos.WALLPAPER_DIRS})


def _spec(**kw) -> DataSpec:
    return DataSpec("photos", **{"image_size": 32, "channels": 3, "limit": 40, "seed": 0, **kw})


def test_registered_as_an_rgb_image_builtin() -> None:
    assert "photos" in DATASETS and DATASETS.get("photos").channels == 3
    assert infer_modality(DataSpec("photos")) == "image"


@pytest.mark.parametrize("size", [32, 128])
def test_skimage_photos_alone(no_wallpapers, size) -> None:
    with pytest.warns(UserWarning, match="apt-get install plasma-workspace-wallpapers"):
        data = load_data(_spec(image_size=size, limit=16))
        grey = load_data(_spec(image_size=size, channels=1, limit=2)).train[1][0]
    assert len(data.train) == 16 and len(data.test) == 500
    assert data.class_names == photos.SOURCES and data.input_shape == (3, size, size)
    assert len(data.train.photos) == 6 and len(data.test.photos) == 2  # 8 photographs, 20% (two) held out
    for ds in (data.train, data.test):
        for i in (0, 5, 11):
            x, y = ds[i]
            assert x.shape == (3, size, size) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
            assert y.dtype == torch.int64 and int(y) == 0
            assert x.std() > 0.005  # a patch of a photograph, not one flat colour
    assert grey.shape == (1, size, size)


def test_deterministic_per_seed_and_split_by_whole_photographs(no_wallpapers) -> None:
    with pytest.warns(UserWarning):
        a, b, c = (load_data(_spec(seed=s)) for s in (1, 1, 2))
        full, over = load_data(_spec(limit=None)), load_data(_spec(limit=9000))
    assert all(torch.equal(a.train[i][0], b.train[i][0]) for i in range(10))
    assert torch.equal(a.test[7][0], b.test[7][0])
    assert not any(torch.equal(a.train[i][0], c.train[i][0]) for i in range(10))
    for d in (a, c):
        assert not {p.path for p in d.train.photos} & {p.path for p in d.test.photos}
    assert len(full.train) == len(over.train) == 5000


def test_training_crops_are_drawn_afresh_each_epoch(no_wallpapers) -> None:
    """set_epoch(e) draws new crops of the same photographs for the training split (reproducibly: back to an
    epoch gives its crops again; epoch 0 is the fixed crops); the held-out crops never change."""
    with pytest.warns(UserWarning):
        data = load_data(_spec(limit=12))
    train, test = data.train, data.test
    first = [train[i] for i in range(12)]
    held = [test[i][0] for i in range(5)]
    train.set_epoch(3)
    test.set_epoch(3)
    third = [train[i] for i in range(12)]
    assert sum(torch.equal(a[0], b[0]) for a, b in zip(first, third)) <= 1  # new crops...
    assert all(int(a[1]) == int(b[1]) for a, b in zip(first, third))  # ...of the same photographs
    assert all(torch.equal(h, test[i][0]) for i, h in enumerate(held))
    train.set_epoch(0)
    assert all(torch.equal(a[0], train[i][0]) for i, a in enumerate(first))
    train.set_epoch(3)
    assert all(torch.equal(a[0], train[i][0]) for i, a in enumerate(third))
    flipped = augment_train(train, "flip", 0)  # the augmentation wrapper passes the epoch on
    flipped.set_epoch(5)
    assert train.epoch == 5


def test_wallpaper_packages_join_when_installed(monkeypatch, tmp_path) -> None:
    """A tmp folder of generated JPEGs under the curated names stands in for the packages; files not in the curated
    list are ignored, and the KDE folder gives its largest picture of at most 4K."""
    rng = np.random.default_rng(0)

    def jpeg(path, w=120, h=80):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)

    dirs = {"kde": tmp_path / "wallpapers", "mate": tmp_path / "mate", "lomiri": tmp_path / "backgrounds"}
    for name in photos.PHOTOS["kde"][:3]:
        for res in ("640x480", "3840x2160", "5120x2880"):  # the names alone say the size
            jpeg(dirs["kde"] / name / "contents" / "images" / f"{res}.jpg")
    jpeg(dirs["kde"] / "Volna" / "contents" / "images" / "5120x2880.jpg")  # artwork: not in the list
    for name in photos.PHOTOS["mate"][:2]:
        jpeg(dirs["mate"] / name)
    for name in photos.PHOTOS["lomiri"][:4] + ["Fossa_by_Jasper_Roks.jpg"]:
        jpeg(dirs["lomiri"] / name, 80, 120)
    monkeypatch.setattr(photos, "WALLPAPER_DIRS", dirs)
    found = photos.find_photos()
    assert [sum(p.source == s for p in found) for s in range(4)] == [8, 3, 2, 4]
    assert all(p.path.endswith("3840x2160.jpg") for p in found if p.source == 1)
    assert not any("Volna" in p.path or "Fossa" in p.path for p in found)
    data = load_data(_spec(limit=None))
    train, test = data.train.photos, data.test.photos
    assert {p.source for p in test} == {0, 1, 2, 3}  # at least one photograph of every source held out
    assert not {p.path for p in train} & {p.path for p in test}
    labels = {int(data.train[i][1]) for i in range(len(train))}
    assert labels == {0, 1, 2, 3}
    assert data.train[len(train) - 1][0].shape == (3, 32, 32)


def test_a_missing_skimage_names_the_install(monkeypatch) -> None:
    monkeypatch.setattr(photos.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        load_data(_spec())


# ---------------------------------------------------------------------------------------------- --augment
def _pair(name: str, augment: str, **kw):
    plain = load_data(DataSpec(name, image_size=32, channels=3, limit=24, seed=3, **kw))
    aug = load_data(DataSpec(name, image_size=32, channels=3, limit=24, seed=3, augment=augment, **kw))
    return plain, aug


def test_flip_mirrors_half_the_training_items_and_no_test_item() -> None:
    plain, aug = _pair("shapes", "flip")
    flipped = 0
    for i in range(24):
        x, a = plain.train[i][0], aug.train[i][0]
        assert torch.equal(a, x) or torch.equal(a, x.flip(-1))
        flipped += not torch.equal(a, x)
    assert 4 <= flipped <= 20
    assert all(torch.equal(plain.test[i][0], aug.test[i][0]) for i in range(8))
    assert torch.equal(plain.train[0][1], aug.train[0][1])


def test_crop_changes_training_items_only(no_wallpapers) -> None:
    with pytest.warns(UserWarning):
        plain, aug = _pair("photos", "crop,flip")
    assert sum(not torch.equal(plain.train[i][0], aug.train[i][0]) for i in range(12)) >= 9
    assert all(torch.equal(plain.test[i][0], aug.test[i][0]) for i in range(4))
    x = aug.train[3][0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_encoded_images_crop_before_the_resize_and_flip_exactly() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(buf, "PNG")
    base = EncodedImageDataset([buf.getvalue()] * 16, [0] * 16, 32, 3)
    flip = augment_train(base, "flip", seed=0)
    crop = augment_train(base, "crop", seed=0)
    assert isinstance(flip, EncodedImageDataset) and flip.augment == {"flip"}
    x = base[0][0]
    outs = [flip[i][0] for i in range(16)]
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(-1)) for o in outs)
    assert any(torch.equal(o, x) for o in outs) and any(torch.equal(o, x.flip(-1)) for o in outs)
    crops = [crop[i][0] for i in range(16)]
    assert all(c.shape == (3, 32, 32) for c in crops) and sum(not torch.equal(c, x) for c in crops) >= 8


def test_same_seed_same_batches_with_workers() -> None:
    """What the training loop does: a seeded shuffle, ``set_epoch`` each epoch, any number of workers."""
    train = load_data(DataSpec("shapes", image_size=32, channels=3, limit=32, seed=5, augment="crop,flip")).train
    assert isinstance(train, AugmentedImages)

    def batches(workers: int, epoch: int) -> list[torch.Tensor]:
        train.set_epoch(epoch)
        loader = DataLoader(train, batch_size=8, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(5))
        return [x for x, _ in loader]

    first, again, in_workers = batches(0, 0), batches(0, 0), batches(2, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(a, b) for a, b in zip(first, in_workers))
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(0, 1)))  # new draws each epoch


def test_augment_values_and_modality_are_checked() -> None:
    assert parse_augment("flip, crop") == {"crop", "flip"} and parse_augment(None) == set()
    with pytest.raises(ValueError, match="unknown augmentation"):
        load_data(DataSpec("shapes", augment="rotate"))
    with pytest.raises(ValueError, match="holds audio"):
        load_data(DataSpec("tones", augment="flip"))


def test_train_tokenizer_has_the_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train-tokenizer", "--help"])
    assert "--augment" in capsys.readouterr().out
