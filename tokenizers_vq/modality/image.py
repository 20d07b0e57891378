"""Images: float32 [C, H, W] in [0, 1] (C = 1 grey or 3 RGB), batches [B, C, H, W]; token grids (h, w).

The one place images are decoded (``pil_to_tensor``: the data layer's datasets and ``IMAGE.read`` both go
through it) and written (``save_image``, ``image_grid``).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..config import DEFAULT_CHANNELS, DEFAULT_IMAGE_SIZE
from ..metrics import psnr, ssim
from ..mulaw import check_range
from .base import Modality

IMAGE_LEVELS = (2, 256)  # raw pixels: binarised (x >= 0.5) or 8-bit (round(255 x))


# ---------------------------------------------------------------------------- reading
def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) of a w x h image whose shorter side is scaled to ``size`` (before the centre crop)."""
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def pil_to_tensor(img: Image.Image, size: int | None, channels: int) -> Tensor:
    """PIL image (any mode) -> float32 [channels, size, size] in [0, 1]: converted to L or RGB, the
    shorter side resized to ``size`` (Lanczos, antialiased), then centre-cropped. ``size`` None keeps the
    image's own size: float32 [channels, H, W]."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if size is not None and (w, h) != (size, size):
        nw, nh = resized_size(w, h, size)
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _name(source: Any) -> str:
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def read_image(source: str | os.PathLike | bytes | bytearray, channels: int, size: tuple[int, int]) -> Tensor:
    """An image file (path or encoded bytes) of exactly ``size`` = (H, W) -> float32 [channels, H, W] in [0, 1]
    (converted to grey or RGB). Another size is a ``ValueError`` raised from the header, before decoding: a file
    read for a codec is not resized (that would lose what the codec should reproduce)."""
    name = _name(source)
    h, w = size
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            if im.size != (w, h):  # checked before decoding: a huge file costs nothing
                raise ValueError(f"{name} is {im.size[0]}x{im.size[1]} (WxH) but the codec expects {w}x{h}; "
                                 "resize it first (vqgen reads it as it is, so it does not resize for you)")
            return pil_to_tensor(im, None, channels)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name} is not a readable image ({e}); pass PNG/JPEG/... image files") from None


# ---------------------------------------------------------------------------- writing
def to_uint8_image(x: Tensor) -> np.ndarray:
    """float [C, H, W] in [0, 1] -> uint8 [H, W] (C=1) or [H, W, 3]."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def save_image(x: Tensor, path: str | Path) -> None:
    """One image float [C, H, W] in [0, 1] to a PNG."""
    Image.fromarray(to_uint8_image(x)).save(path)


def image_grid(images: Tensor, nrow: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """images float [N, C, H, W] in [0, 1] -> one PIL image with ``nrow`` images per row, ``pad`` px gaps."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i].cpu()
    img = Image.fromarray(to_uint8_image(canvas))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


# ---------------------------------------------------------------------------- the modality
class ImageModality(Modality):
    """Images: float32 [C, H, W] in [0, 1], C = 1 or 3; tokens (h, w) = (H/d, W/d) (plus a codebook axis)."""

    name = "image"
    timed = False
    input_ndim = 3
    grid_ndim = 2
    value_range = (0.0, 1.0)
    range_hint = "scale 8-bit images by 1/255"
    batch_layout = "[B, C, H, W]"
    noun = "an image"
    file_suffix = ".png"
    # The 2017 layout for every image: on photo crops, given the same 23 CPU-minutes, it matched the resnet family
    # (27.30 dB / SSIM 0.812 against 26.99 / 0.813; docs/benchmarks/photo_codec*.md), at half the cost per step.
    default_autoencoder = "vqvae"
    size_fields = ("channels", "image_size")
    default_sizes = {"channels": DEFAULT_CHANNELS, "image_size": DEFAULT_IMAGE_SIZE}
    raw_levels = IMAGE_LEVELS
    eval_batch_size = 128
    downsample_axes = "per axis"

    # ------------------------------------------------------------------ shapes

    def check_config(self, config: Any) -> None:
        if config.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 for images, got {config.channels}")
    def input_shape(self, sizes: Any = None) -> tuple[int, ...]:
        s = self._size(sizes, "image_size")
        return (self._size(sizes, "channels"), s, s)

    def sizes(self, input_shape: Sequence[int], sample_rate: int | None = None) -> dict[str, int]:
        return {"channels": int(input_shape[0]), "image_size": int(input_shape[-1])}

    # ------------------------------------------------------------------ checks
    def _check_layout(self, x: Tensor, input_shape: Sequence[int], who: str, downsample: int | None) -> None:
        if x.dim() != 4:
            raise ValueError(f"{self.name} {who} expects {self.batch_layout}, got shape {tuple(x.shape)}")
        c = input_shape[0]
        if x.shape[1] != c:
            raise ValueError(
                f"this {who} was built for {c}-channel images but got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); convert the images (e.g. --channels {c} in the data "
                f"layer) or use a {who} trained on {x.shape[1]}-channel data"
            )
        d = downsample
        if d and (x.shape[2] % d or x.shape[3] % d):
            raise ValueError(f"image height and width must be divisible by downsample={d}, "
                             f"got {tuple(x.shape[2:])}")

    # ------------------------------------------------------------------ raw pixels
    def check_raw(self, levels: int, input_shape: tuple[int, ...], sample_rate: int | None) -> int | None:
        if levels not in IMAGE_LEVELS:
            raise ValueError(f"raw images use levels 2 (binarised) or 256 (8-bit), got {levels}")
        if len(input_shape) != 3 or input_shape[0] not in (1, 3):
            raise ValueError(f"raw images need input_shape (C, H, W) with C = 1 or 3, got {input_shape}")
        return None

    def raw_token_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(C, H, W) -> (H, W*C)."""
        c, h, w = tuple(input_shape)[-3:]
        return (h, w * c)

    def quantize_raw(self, x: Tensor, levels: int) -> Tensor:
        """x float [C, H, W] or [B, C, H, W] in [0, 1] -> int64 [H, W*C] or [B, H, W*C]. ``levels=2``
        binarises (1 where x >= 0.5); ``levels=256`` is round(x * 255) (round half to even). Channels are
        interleaved per pixel (R, G, B of one pixel are consecutive), so raster order over the grid is the
        PixelCNN order: pixel by pixel, channel by channel within a pixel (van den Oord et al. 2016, §2)."""
        if levels not in IMAGE_LEVELS:
            raise ValueError(f"raw images use levels 2 (binarised) or 256 (8-bit), got {levels}")
        if x.dim() not in (3, 4):
            raise ValueError(f"raw images must be [C, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
        check_range(x, 0.0, 1.0, "raw images", self.range_hint)
        q = (x >= 0.5).long() if levels == 2 else torch.round(x * 255).long()
        q = q.movedim(-3, -1)  # [..., H, W, C]: channels of a pixel adjacent in raster order
        return q.reshape(*q.shape[:-2], q.shape[-2] * q.shape[-1])

    def dequantize_raw(self, grid: Tensor, levels: int, input_shape: tuple[int, ...]) -> Tensor:
        """int [B, H, W*C] -> float32 [B, C, H, W] in [0, 1] (levels 2: {0, 1}; 256: q / 255), exactly inverting
        ``quantize_raw``."""
        c, h, w = input_shape
        x = grid.reshape(grid.shape[0], h, -1, c).movedim(-1, 1).float()
        return x if levels == 2 else x / 255.0

    def raw_input_shape(self, tokens: Tensor, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, _ = input_shape
        if tokens.dim() != 3 or tokens.shape[1] != h or tokens.shape[2] % c:
            raise ValueError(f"raw image tokens must be [B, {h}, W*{c}], got {tuple(tokens.shape)}")
        return (c, h, tokens.shape[2] // c)

    def raw_description(self, levels: int, input_shape: tuple[int, ...], sample_rate: int | None) -> str:
        return f"{'binarised' if levels == 2 else '8-bit'} pixels of {input_shape} images"

    def raw_png_images(self, codec: Any, grids: Tensor) -> list[Any] | None:
        """1-bit PNGs for binarised grey images, else grey or RGB 8-bit ones."""
        x = codec.decode(grids)  # [N, C, H, W] in [0, 1]
        arr = np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        if codec.levels == 2 and codec.input_shape[0] == 1:
            return [Image.fromarray(a[..., 0] > 127) for a in arr]  # 1-bit PNG
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]

    # ------------------------------------------------------------------ metrics
    def recon_metrics(self, recon: Tensor, x: Tensor, sample_rate: int | None = None) -> dict[str, float]:
        """PSNR (dB) and SSIM of the reconstructions clamped to [0, 1]."""
        recon = recon.clamp(0, 1)
        return {"psnr": psnr(recon, x).item(), "ssim": ssim(recon, x).item()}

    def rate(self, codec: Any, n_quantizers: int) -> tuple[str, float]:
        """``bits_per_image``: bits of a fixed-length code for one training-size image."""
        return "bits_per_image", codec.bits_per_input(n_quantizers=n_quantizers)

    # ------------------------------------------------------------------ files and previews
    def read(self, source: Any, input_shape: Sequence[int], sample_rate: int | None = None) -> Tensor:
        """An image file of exactly the codec's H x W -> float32 [C, H, W] in [0, 1] (``read_image``)."""
        c, h, w = input_shape
        return read_image(source, c, (h, w))

    def write(self, x: Tensor, path: str | Path, sample_rate: int | None = None) -> None:
        """float [C, H, W] in [0, 1] -> an 8-bit grey or RGB PNG."""
        save_image(x, path)

    def pack(self, items: Sequence[Tensor], input_shape: tuple[int, ...], sample_rate: int | None = None
             ) -> tuple[Tensor, dict[str, Any]]:
        """One input per file: float32 [N, C, H, W] and an empty record."""
        return torch.stack(list(items)), {}

    def unpack(self, x: Tensor, record: Mapping[str, Any]) -> list[Tensor]:
        return list(x)

    def preview_path(self, folder: str | Path, stem: str) -> Path:
        return Path(folder) / f"{stem}.png"

    def write_reconstructions(self, x: Tensor, recon: Tensor, out: str | Path, sample_rate: int | None = None
                              ) -> Path:
        """One PNG: rows of up to 8 originals, each followed by their reconstructions (4x nearest-neighbour).
        ``out``: the PNG file, or a folder to hold ``reconstructions.png``."""
        out = Path(out)
        png = out if out.suffix.lower() == ".png" else out / "reconstructions.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        n = len(x)
        nrow = min(8, n)
        rows = []
        for start in range(0, n, nrow):  # originals row, then their reconstructions row
            rows += [x[start:start + nrow], recon[start:start + nrow]]
        image_grid(torch.cat(rows), nrow=nrow, scale=4).save(png)
        return png

    def write_preview(self, x: Tensor, folder: str | Path, sample_rate: int | None = None,
                      labels: Sequence[str] | None = None) -> Path:
        """``grid.png``: 10 images per row (3x nearest-neighbour); ``labels`` are not drawn."""
        path = Path(folder) / "grid.png"
        n = len(x)
        image_grid(x, nrow=10 if n >= 10 else n, scale=3).save(path)
        return path

    # ------------------------------------------------------------------ model card
    def card_io(self, config: Any, token_shape: tuple[int, ...], input_shape: tuple[int, ...],
                vocab_size: int) -> dict[str, str]:
        d = config.downsample
        q = "".join(f", {n}" for n in token_shape[self.grid_ndim:])  # trailing codebook axes
        c, h, w = input_shape
        return {
            "x": f"float32 [B, {c}, {h}, {w}] in [0, 1] (B any; H and W fixed at {h} x {w} in the ONNX files)",
            "x_torch": f"float32 [B, {c}, H, W] in [0, 1], H and W multiples of {d}",
            "tokens": f"int64 [B, {h // d}, {w // d}{q}] in [0, {vocab_size})",
            "recon": f"float32 [B, {c}, {h}, {w}] in [0, 1]",
        }

    def card_example(self, config: Any, input_shape: tuple[int, ...], numpy: bool) -> list[str]:
        dims = ", ".join(str(s) for s in (2, *input_shape))
        if numpy:
            return [f"x = np.random.default_rng(0).random(({dims}), dtype=np.float32)  # stand-in for real images"]
        return [f"x = torch.rand({dims})  # stand-in for real images"]

    # ------------------------------------------------------------------ ONNX export
    def example_input(self, input_shape: tuple[int, ...], downsample: int, generator: torch.Generator) -> Tensor:
        """float32 [2, C, H, W] uniform in [0, 1] at the training size."""
        return torch.rand((2, *input_shape), generator=generator)

    def dynamic_axes(self, tokens: Tensor, downsample: int, spatial: bool = True
                     ) -> tuple[dict[int, Any], dict[int, Any]]:
        """The batch and (``spatial``) the token grid's height and width (H = d * h, W = d * w, so only multiples
        of the downsampling trace); without ``spatial`` H and W stay at the traced size."""
        batch = torch.export.Dim("batch")
        if not spatial:
            return {0: batch}, {0: batch}
        h, w = torch.export.Dim("h"), torch.export.Dim("w")
        return {0: batch, 2: downsample * h, 3: downsample * w}, {0: batch, 1: h, 2: w}


IMAGE = ImageModality()  # registered by the package, images first

__all__ = ["IMAGE", "IMAGE_LEVELS", "ImageModality", "image_grid", "pil_to_tensor", "read_image",
           "resized_size", "save_image", "to_uint8_image"]
