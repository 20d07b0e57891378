"""The ``photos`` built-in: crops of real colour photographs that installed packages ship, no download.

Sources, in label order (the label is the source's index; ``SOURCES``):

0. ``skimage``: scikit-image's bundled colour photographs (files in ``skimage/data/``, never its pooch downloads).
   A dependency, so always there.
1. ``kde``: Debian's ``plasma-workspace-wallpapers``, ``/usr/share/wallpapers/NAME/contents/images/WxH.ext``, one
   file per folder: the largest of at most 3840x2160 pixels (else the smallest).
2. ``mate``: Debian's ``mate-backgrounds``, ``/usr/share/backgrounds/mate/nature/*.jpg``.
3. ``lomiri``: Debian's ``lomiri-wallpapers``, the photographers' ``/usr/share/backgrounds/NAME_by_AUTHOR.jpg``
   (``ukui-wallpapers`` shares the folder, but its own files are all artwork).

Only the photographs named in ``PHOTOS`` are used; the wallpaper packages are optional (missing files are skipped,
and with none of them there is one warning naming ``INSTALL``).

Splits are made of whole photographs: about ``TEST_FRACTION`` of each source's photographs (at least one) are held
out, chosen by ``spec.seed``, so no photograph has crops in both splits. Each crop is cut from its photograph resized
so that the shorter side is one of ``SCALES`` x ``spec.image_size``, drawn per crop (at 2x a 64x64 crop spans half
the shorter side: a face, a boat; at 8x an eighth: a stretch of sky or bark, as a crop of a full-resolution photo
looks), or the photo's own shorter side when that is smaller (a photograph is never enlarged beyond its own
resolution, except to reach ``image_size``). Item i of a split is a ``spec.image_size`` square of photograph
``i % n`` at a scale and position drawn from ``(seed, split, i)`` alone (any item on its own, in any order, in any
worker); the training split draws new crops each epoch, from ``(seed, split, i, epoch)``. Photographs are decoded on first use and kept resized, as uint8, per process and scale.

Yields ``(x float32 [spec.channels, S, S] in [0, 1], label int64 0..3)``; 5,000 train crops (capped by
``spec.limit``) and 500 test crops.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..image_io import convert_tensor
from ..spec import DATASETS, BuiltinDataset, DataSpec, Splits

SOURCES = ["skimage", "kde", "mate", "lomiri"]
SIZES = {"train": 5000, "test": 500}
SCALES = (2, 4, 8)  # a photograph's shorter side, in image sizes (at most its own shorter side), drawn per crop
TEST_FRACTION = 0.2
MAX_PIXELS = 3840 * 2160  # KDE ships several resolutions per wallpaper: the largest up to 4K is used
INSTALL = "apt-get install plasma-workspace-wallpapers mate-backgrounds lomiri-wallpapers"
SALT = 11  # keeps the crop positions apart from other generators seeded by (seed, split, index)

# Where each wallpaper source lives (module attributes so the tests can point them at a folder of their own).
WALLPAPER_DIRS = {
    "kde": Path("/usr/share/wallpapers"),
    "mate": Path("/usr/share/backgrounds/mate/nature"),
    "lomiri": Path("/usr/share/backgrounds"),
}

# The photographs of each source. Chosen by eye from contact sheets of every candidate (Debian bookworm packages,
# Dec 2025): kept are real photographs; left out are drawings, renders, low-poly and gradient art, and
# composites. skimage: motorcycle_right is left out (a stereo twin of motorcycle_left: crops of one would be in
# train and of the other in test); hubble_deep_field (telescope), retina (fundus camera) and ihc (microscope) are
# photographs with other statistics than a camera's and are kept; camera, moon and the other grey images are not
# colour. kde: Autumn (painting), Altai, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave, IceCold,
# Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell and Volna (vector or low-poly art) are left
# out. mate: all twelve nature pictures are photographs. lomiri: Fossa, Infinite-Sea, Painting-Colors and umang
# (art), analogpattern (a filtered texture) are left out; ukui-wallpapers' own files (2004default, calla, city,
# desert, firstgeneration, fluent-color, focal-ubuntukylin, goldfish, rhythm, rollpaper, string, the-mouse) are all
# artwork, and GNOME's backgrounds are artwork too.
PHOTOS = {
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg", "retina.jpg", "ihc.png"],
    "kde": ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
            "OneStandsOut", "Path", "summer_1am"],
    "mate": ["Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
             "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg"],
    "lomiri": ["Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Kleiber_by_Lukas_Baubkus.jpg",
               "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg",
               "aitzgorri_by_Aitzol_Berasategi.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
               "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
               "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
               "sunset_by_Aitzol_Berasategi.jpg"],
}


@dataclass(frozen=True)
class Photo:
    source: int  # index into SOURCES: the label
    path: str


def skimage_dir() -> Path:
    """scikit-image's ``data`` folder (found without importing the package). ``ImportError`` naming the install."""
    found = importlib.util.find_spec("skimage")
    if found is None or not found.submodule_search_locations:
        raise ImportError("the photos dataset needs scikit-image's bundled photographs: pip install scikit-image")
    return Path(list(found.submodule_search_locations)[0]) / "data"


def _kde_file(folder: Path) -> Path | None:
    """The largest ``WxH.ext`` image of a KDE wallpaper folder of at most ``MAX_PIXELS`` (else the smallest)."""
    sizes = []
    for f in (folder / "contents" / "images").glob("*"):
        m = re.fullmatch(r"(\d+)x(\d+)", f.stem)
        if m and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
            sizes.append((int(m[1]) * int(m[2]), f))
    if not sizes:
        return None
    fits = [s for s in sizes if s[0] <= MAX_PIXELS]
    return max(fits)[1] if fits else min(sizes)[1]


def find_photos() -> list[Photo]:
    """Every photograph of ``PHOTOS`` on this machine, by source then name. scikit-image's must be there;
    with no wallpaper package, one warning names ``INSTALL``."""
    sk = skimage_dir()
    missing = [n for n in PHOTOS["skimage"] if not (sk / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{sk}: scikit-image's photographs {missing} are missing; reinstall it "
                                "(pip install --force-reinstall scikit-image)")
    photos = [Photo(0, str(sk / n)) for n in PHOTOS["skimage"]]
    for source in SOURCES[1:]:
        root = WALLPAPER_DIRS[source]
        for name in PHOTOS[source]:
            f = _kde_file(root / name) if source == "kde" else root / name
            if f is not None and f.is_file():
                photos.append(Photo(SOURCES.index(source), str(f)))
    if len(photos) == len(PHOTOS["skimage"]):
        warnings.warn(f"photos: no wallpaper package is installed, so only scikit-image's {len(photos)} photographs "
                      f"are used; for {sum(len(v) for v in PHOTOS.values())} photographs: {INSTALL}", stacklevel=3)
    return photos


def split_photos(photos: list[Photo], seed: int) -> tuple[list[Photo], list[Photo]]:
    """(train, test) whole photographs: about ``TEST_FRACTION`` of each source's, at least one, drawn from
    ``seed``; a source with a single photograph keeps it for training."""
    rng = np.random.default_rng([seed, SALT])
    train, test = [], []
    for source in range(len(SOURCES)):
        mine = [p for p in photos if p.source == source]
        n_test = max(1, round(TEST_FRACTION * len(mine))) if len(mine) > 1 else 0
        held = set(rng.permutation(len(mine))[:n_test].tolist())
        for k, p in enumerate(mine):
            (test if k in held else train).append(p)
    return train, test


def shorter_side(w: int, h: int, size: int, scale: int) -> int:
    """The shorter side a w x h photograph is resized to for crops of ``size`` at ``scale``: ``scale * size``, or
    the photo's own shorter side when that is smaller, and never under ``size``."""
    return max(size, min(scale * size, min(w, h)))


@functools.cache
def resized_photo(path: str, size: int, scale: int = SCALES[1]) -> np.ndarray:
    """A photograph decoded (JPEGs at a reduced scale when that is still large enough) and resized (Lanczos) so its
    shorter side is ``shorter_side``: uint8 [H, W, 3]. Cached per process."""
    with Image.open(path) as img:
        w, h = img.size
        short = shorter_side(w, h, size, scale)
        target = (max(short, round(w * short / min(w, h))), max(short, round(h * short / min(w, h))))
        img.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that still covers the target
        rgb = img.convert("RGB")
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS)
        return np.asarray(rgb, dtype=np.uint8)


class PhotoCrops(Dataset):
    """``n`` crops of ``size`` from ``photos``: item i is photograph ``i % len(photos)`` at a scale and position
    drawn from ``(seed, split, i)`` alone; the training split draws afresh each epoch from ``(seed, split, i,
    epoch)`` (``set_epoch``, called by the training loop), so a long run keeps seeing new crops of its
    photographs. Epoch 0 and the test split are the fixed crops. Yields ``(x float32 [channels, size, size] in
    [0, 1], label int64)``."""

    def __init__(self, photos: list[Photo], n: int, split: str, seed: int, size: int, channels: int):
        self.photos, self.n, self.seed, self.size, self.channels = photos, n, seed, size, channels
        self.split_id = ("train", "test").index(split)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Crops of epoch ``epoch`` (training split only: the held-out crops never change)."""
        if self.split_id == 0:
            self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        photo = self.photos[i % len(self.photos)]
        key = [self.seed, self.split_id, i, SALT] + ([self.epoch] if self.epoch else [])
        rng = np.random.default_rng(key)
        img = resized_photo(photo.path, self.size, SCALES[int(rng.integers(len(SCALES)))])
        top = int(rng.integers(0, img.shape[0] - self.size + 1))
        left = int(rng.integers(0, img.shape[1] - self.size + 1))
        crop = img[top:top + self.size, left:left + self.size]
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255)[None]
        return convert_tensor(x, self.size, self.channels)[0], torch.tensor(photo.source)


def load_photos(spec: DataSpec) -> Splits:
    """5,000 train / 500 test crops (train capped by ``spec.limit``) of whole photographs split by ``spec.seed``;
    labels: the source (``SOURCES``)."""
    train, test = split_photos(find_photos(), spec.seed)
    n_train = min(spec.limit, SIZES["train"]) if spec.limit else SIZES["train"]
    make = lambda photos, n, split: PhotoCrops(photos, n, split, spec.seed, spec.image_size, spec.channels)  # noqa: E731
    return Splits(train=make(train, n_train, "train"), test=make(test, SIZES["test"], "test"), modality="image",
                  num_classes=len(SOURCES), class_names=list(SOURCES),
                  input_shape=(spec.channels, spec.image_size, spec.image_size))


@DATASETS.register("photos")
class Photos(BuiltinDataset):
    modality = "image"
    channels = 3
    description = ("crops of real colour photographs that packages ship (scikit-image's; the KDE, MATE and Lomiri "
                   "wallpaper photographs when installed), whole photographs split ~80/20 per --seed, each resized "
                   "to 2, 4 or 8x --image-size and cropped at scales and positions drawn per --seed; labels: skimage, kde, mate, lomiri")
    load = staticmethod(load_photos)
