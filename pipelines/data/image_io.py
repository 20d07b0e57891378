"""Reading images: opening, limits, validation, and conversion to ``float32 [C, H, W]`` in [0, 1] (the decoding
itself is ``tokenizers_vq.modality.image.pil_to_tensor``).

Images are kept encoded (bytes, paths, or the rows of an Arrow table read on demand) and checked where they are
decoded, in ``EncodedImageDataset.__getitem__``: unreadable files and files over ``MAX_IMAGE_PIXELS`` (read from
the header: PIL's ``Image.open`` is lazy) are recorded in the dataset's ``SkipLog`` and replaced by the next
readable image, or raise under ``spec.strict``. ``read_item`` gives None for them instead (``vqgen tokenize`` drops
them). Nothing reads the whole dataset before training.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tokenizers_vq.modality.image import pil_to_tensor, resized_size

from .spec import MAX_IMAGE_PIXELS, SkipLog, UnreadableFileError, describe_source

DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)  # what PIL raises on bad data
DOWNSCALE = "downscale it (e.g. `magick IN -resize 4096x4096 OUT`) or remove it"


class ImageReadError(UnreadableFileError):
    """An image file (or Hub row) that cannot be decoded within the limits; the message names it and the fix."""


# ---------------------------------------------------------------------------- conversion
# Decoding a PIL image into a tensor (and its resize / centre crop) is the image modality's, the one place images
# are read: ``resized_size`` and ``pil_to_tensor`` come from there.


def convert_tensor(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """float [N, C, H, W] in [0, 1] -> [N, channels, size, size]: channel conversion (ITU-R 601 luma for
    RGB -> L, replication for L -> RGB) and bilinear antialiased resizing."""
    if x.shape[1] != channels:
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous()


# ---------------------------------------------------------------------------- opening and checking
def open_image(item: Any) -> Image.Image:
    """Open (lazily: header only) a path, encoded bytes, or a ``datasets`` image cell ``{"bytes", "path"}``."""
    if isinstance(item, dict):
        item = item["bytes"] if item.get("bytes") is not None else item["path"]
    return Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def check_image_limits(name: str, w: int, h: int, size: int) -> None:
    """Raise ``ImageReadError`` naming the file, the limit and the fix when a w x h image, or its resize to
    shorter side ``size`` (an extreme aspect ratio), is over ``MAX_IMAGE_PIXELS``."""
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{name}: {w}x{h} image is {w * h:,} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit "
                             f"(MAX_IMAGE_PIXELS); {DOWNSCALE}")
    nw, nh = resized_size(w, h, size)
    if nw * nh > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{name}: {w}x{h} image would be resized to {nw}x{nh} before its centre crop to "
                             f"{size}x{size}, over the {MAX_IMAGE_PIXELS:,}-pixel limit (MAX_IMAGE_PIXELS); crop it "
                             "closer to square or remove it")


def check_image(item: Any, size: int) -> None:
    """Check one image: its header against the limits (before decoding), then a full decode. Raises
    ``ImageReadError`` naming the file and the reason."""
    load_image(item, size).close()


def load_image(item: Any, size: int) -> Image.Image:
    """One image decoded (``Image.load``) once its header passed the limits for shorter side ``size``. Raises
    ``ImageReadError`` naming the file and the reason; the caller closes the image."""
    name = describe_source(item)
    try:
        with warnings.catch_warnings():
            # Over PIL's own threshold is over ours too; our error replaces its warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_image(item)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))  # PIL refuses before we see the size; its message has it
        pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise ImageReadError(f"{name}: image is {pixels}, over the {MAX_IMAGE_PIXELS:,}-pixel limit "
                             f"(MAX_IMAGE_PIXELS); {DOWNSCALE}") from e
    except DECODE_ERRORS as e:
        raise _decode_error(name, e) from e
    try:
        check_image_limits(name, *img.size, size)
        img.load()
    except DECODE_ERRORS as e:
        img.close()
        raise _decode_error(name, e) from e
    except ImageReadError:
        img.close()
        raise
    return img


def decode_image(item: Any, size: int, channels: int) -> torch.Tensor:
    """One encoded image (path, bytes or ``datasets`` cell) -> float32 [channels, size, size] in [0, 1]: checked
    (``load_image``), resized (shorter side) and centre-cropped to ``size``. Raises ``ImageReadError`` naming it.
    The map-style datasets (``EncodedImageDataset``) and the streamed ones (``streaming.StreamedImages``) both
    decode with this, so a row gives the same tensor either way."""
    with load_image(item, size) as img:
        return pil_to_tensor(img, size, channels)


def _decode_error(name: str, e: Exception) -> ImageReadError:
    # PIL names a buffer by its address, which would make each reading of one file a different message
    reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the encoded bytes", str(e))
    return ImageReadError(f"{name}: cannot decode image ({reason}); remove or re-encode it")


# ---------------------------------------------------------------------------- training augmentation
AUGMENTS = ("crop", "flip")
CROP_ZOOM = 1.25  # "crop": the image is seen at a random scale between 1x and this many times its usual one
AUGMENT_SALT = 0xA06  # keeps the augmentation draws apart from any other generator seeded by (seed, ..., index)


def parse_augment(augment: str | None) -> frozenset[str]:
    """``"crop"``, ``"flip"``, ``"crop,flip"`` (any order; None or "" or "none": nothing) -> the set of names.
    ``ValueError`` naming the known ones for anything else."""
    names = frozenset(a.strip() for a in (augment or "").split(",") if a.strip()) - {"none"}
    unknown = sorted(names - set(AUGMENTS))
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}: --augment takes {', '.join(AUGMENTS)} or "
                         "crop,flip")
    return names


class Augmented:
    """What a training split's random crops and flips are drawn from: item ``i`` in epoch ``e`` draws from a
    generator seeded by ``(seed, e, i)`` alone, so a run is the same in any worker, with any number of workers,
    and after a resume (the training loop calls ``set_epoch`` each epoch, as for ``DistributedSampler``)."""

    augment: frozenset[str] = frozenset()
    aug_seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's crops and flips (reproducibly per epoch)."""
        self.epoch = int(epoch)

    def draws(self, i: int) -> np.ndarray:
        """Four uniforms in [0, 1) for item i this epoch: (crop scale, crop x, crop y, flip)."""
        return np.random.default_rng([self.aug_seed, self.epoch, int(i), AUGMENT_SALT]).random(4)

    def crop_scale(self, u: float, size: int) -> int:
        """The side ``size`` is seen at for uniform ``u``: size .. round(CROP_ZOOM * size)."""
        return size + int(u * (round(CROP_ZOOM * size) - size + 1))


def zoom_crop(x: torch.Tensor, s: int, ux: float, uy: float) -> torch.Tensor:
    """x [C, S, S] -> [C, S, S]: resized to s x s (s >= S, bilinear) and cut at the offsets ``(ux, uy)`` of the
    room left, each a uniform in [0, 1)."""
    size = x.shape[-1]
    if s <= size:
        return x
    big = torch.nn.functional.interpolate(x[None], size=(s, s), mode="bilinear", align_corners=False)[0]
    left, top = int(ux * (s - size + 1)), int(uy * (s - size + 1))
    return big[:, top:top + size, left:left + size].clamp(0, 1).contiguous()


class AugmentedImages(Augmented, Dataset):
    """A training split of ``(x [C, S, S], label)`` with random crops (``zoom_crop``: seen at a random scale up
    to ``CROP_ZOOM`` and cut at a random place) and horizontal flips, drawn per (seed, epoch, item)."""

    def __init__(self, base: Dataset, augment: frozenset[str], seed: int):
        self.base, self.augment, self.aug_seed = base, augment, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        u = self.draws(i)
        if "crop" in self.augment:
            x = zoom_crop(x, self.crop_scale(u[0], x.shape[-1]), u[1], u[2])
        if "flip" in self.augment and u[3] < 0.5:
            x = x.flip(-1)
        return x, y


def augment_train(train: Dataset, augment: str | None, seed: int) -> Dataset:
    """The training split with ``augment`` (see ``parse_augment``) drawn from ``seed``: an ``EncodedImageDataset``
    crops before its resize (a random part of the whole image, not of its centre crop); any other image dataset of
    ``(x [C, S, S], label)`` is wrapped in ``AugmentedImages``. Unchanged when ``augment`` names nothing."""
    names = parse_augment(augment)
    if not names:
        return train
    if isinstance(train, EncodedImageDataset):
        return EncodedImageDataset(train.items, train.labels, train.size, train.channels, augment=names, seed=seed,
                                   skips=train.skips)
    return AugmentedImages(train, names, seed)


class EncodedImageDataset(Augmented, Dataset):
    """Images kept encoded, decoded and converted on access: ``(x float32 [channels, size, size] in [0, 1], label
    int64)``. ``items``: any sequence of encoded bytes, paths or ``datasets`` image cells (a list, or
    ``hub.ArrowColumn``: rows of a memory-mapped Arrow table read one by one); ``labels``: int [N] (-1: none).

    Each image is checked as it is read (``load_image``: header limits, then the decode). An unreadable one is
    recorded in ``skips`` (a ``SkipLog``, shared with the DataLoader workers; under ``--strict`` it raises) and
    replaced by the next readable item, so that batches keep their size and any order of reads gives the same
    items; ``read_item(i)`` returns None for it instead. Without ``skips`` a bad image raises ``ImageReadError``.

    ``augment`` (training only): "crop" resizes the shorter side to a random scale in [size, CROP_ZOOM * size] and
    cuts a random square of ``size`` instead of the centre one; "flip" mirrors half the images left to right (see
    ``Augmented``)."""

    def __init__(self, items: Any, labels: Any, size: int, channels: int,
                 augment: frozenset[str] = frozenset(), seed: int = 0, skips: SkipLog | None = None):
        self.items, self.labels, self.size, self.channels = items, labels, size, channels
        self.augment, self.aug_seed, self.skips = frozenset(augment), seed, skips

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        for k in range(n):  # an unreadable image stands aside for the next readable one
            item = self.read_item((i + k) % n)
            if item is not None:
                return item
        where = self.skips.where if self.skips is not None else "images"
        raise ValueError(f"{where}: no readable image files found ({n} rejected; first: "
                         f"{(self.skips.skipped() if self.skips else ['none listed'])[0]})")

    def read_item(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Item ``i``, or None when its image cannot be read (recorded in ``skips``)."""
        try:
            x = self._decode(i)
        except UnreadableFileError as e:
            if self.skips is None:
                raise
            self.skips.record(e)
            return None
        return x, torch.tensor(int(self.labels[i]))

    def _decode(self, i: int) -> torch.Tensor:
        if not self.augment:
            return decode_image(self.items[i], self.size, self.channels)
        with load_image(self.items[i], self.size) as img:
            u = self.draws(i)
            if "crop" in self.augment:
                img = img.convert("L" if self.channels == 1 else "RGB")
                nw, nh = resized_size(*img.size, self.crop_scale(u[0], self.size))
                img = img.resize((nw, nh), Image.Resampling.LANCZOS)
                left, top = int(u[1] * (nw - self.size + 1)), int(u[2] * (nh - self.size + 1))
                img = img.crop((left, top, left + self.size, top + self.size))
            x = pil_to_tensor(img, self.size, self.channels)
        if "flip" in self.augment and u[3] < 0.5:
            x = x.flip(-1).contiguous()
        return x


class RenderedImages(Dataset):
    """Procedural images made on demand, item i of a split from a generator seeded by (seed, split, i, *salt) alone
    (any item on its own, in any order, in any worker). ``render(rng) -> (float32 [H, W, 3] in [0, 1], label)``.
    Yields ``(x float32 [channels, size, size] in [0, 1], label int64)``."""

    def __init__(self, render: Callable[[np.random.Generator], tuple[np.ndarray, int]], n: int, split: str,
                 seed: int, size: int, channels: int, salt: tuple[int, ...] = ()):
        self.render, self.n, self.seed, self.size, self.channels, self.salt = render, n, seed, size, channels, salt
        self.split_id = ("train", "test").index(split)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        img, label = self.render(np.random.default_rng([self.seed, self.split_id, i, *self.salt]))
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]
        return convert_tensor(x, self.size, self.channels)[0], torch.tensor(label)


def rendered_splits(spec: Any, render: Callable[[np.random.Generator], tuple[np.ndarray, int]],
                    sizes: dict[str, int], class_names: list[str], salt: tuple[int, ...] = ()) -> Any:
    """Train and test ``RenderedImages`` of ``sizes`` (train capped by ``spec.limit``) as ``spec`` asks them."""
    from .spec import Splits

    n_train = min(spec.limit, sizes["train"]) if spec.limit else sizes["train"]
    make = lambda n, split: RenderedImages(render, n, split, spec.seed, spec.image_size, spec.channels, salt)  # noqa: E731
    return Splits(train=make(n_train, "train"), test=make(sizes["test"], "test"), modality="image",
                  num_classes=len(class_names), class_names=list(class_names),
                  input_shape=(spec.channels, spec.image_size, spec.image_size))
