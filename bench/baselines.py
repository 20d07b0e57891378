"""Generic lossless baselines for token grids: what PNG and gzip make of the same grids a prior compresses.

``vqgen compress`` reports only its own file (file, payload, ideal bits, overhead); a bench that wants the
grids' size under a standard coder beside it takes it from here. bench/compression.py runs the standard tools
themselves (JBIG, WebP, JPEG XL, xz, ...) on binarised and 8-bit digits.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from tokenizers_vq import Codec, RawCodec

log = logging.getLogger(__name__)


def grid_images(grids: Tensor, codec: Codec | None) -> list[Any]:
    """PIL images of each grid, the natural lossless image form of the same data (for the PNG baseline):
    raw image grids (``codec`` a ``RawCodec`` of images) as the images they are (1-bit, grey or RGB); any other
    grid int [N, *shape] as one 8-bit grey image per grid when its values fit, else 16-bit. A ValueError when
    the values need more than 16 bits (PNG has no lossless form for them)."""
    from PIL import Image

    if isinstance(codec, RawCodec):  # raw pixels as the images they are (the modality's; None for raw audio)
        images = codec.modality.raw_png_images(codec, grids)
        if images is not None:
            return images
    g = grids.reshape(grids.shape[0], grids.shape[1] if grids.dim() > 2 else 1, -1).numpy()
    # uint16 arrays become Pillow's "I;16" images; naming the mode explicitly is refused by current Pillow
    if g.max(initial=0) >= 2**16:
        raise ValueError("PNG holds at most 16 bits per value")  # no lossless PNG form: the baseline is None
    return [Image.fromarray(a.astype(np.uint8) if a.max(initial=0) < 256 else a.astype(np.uint16)) for a in g]


def png_size(grids: Tensor, codec: Codec | None = None) -> int:
    """Total bytes of one optimised PNG per grid of ``grids`` int [N, *shape] (how a folder of lossless images
    would store them)."""
    total = 0
    for im in grid_images(grids.cpu(), codec):
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        total += buf.tell()
    return total


def gzip_size(grids: Tensor, vocab_size: int) -> int:
    """Bytes of gzip -9 on all grids int [N, *shape] in [0, vocab_size) in one stream, at the narrowest fixed
    width (bit-packed for V = 2)."""
    a = grids.cpu().numpy().reshape(-1)
    raw = (np.packbits(a.astype(np.uint8)) if vocab_size == 2
           else a.astype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32))
    return len(gzip.compress(raw.tobytes(), compresslevel=9, mtime=0))


def _statistic(name: str, fn: Callable[[], int]) -> int | None:
    """A baseline size, or None when computing it fails: a side statistic never breaks the bench row."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of a side statistic is reported, not raised
        log.warning("could not compute the %s baseline (%s: %s)", name, type(e).__name__, e)
        return None


def baseline_sizes(grids: Tensor, vocab_size: int, codec: Codec | None = None) -> dict[str, int | float | None]:
    """gzip and PNG of ``grids`` int [N, *shape] in [0, vocab_size): ``{"gzip_bytes", "png_bytes",
    "bits_per_dim_gzip", "bits_per_dim_png"}``, bits per input dimension as ``CompressionStats`` counts them
    (``codec.dims_per_input()``, default: per grid position). A baseline that fails is None (logged)."""
    grids = grids.cpu()
    n = grids.shape[0]
    dims = codec.dims_per_input() if codec is not None else grids[0].numel()
    gz = _statistic("gzip", lambda: gzip_size(grids, vocab_size))
    png = _statistic("PNG", lambda: png_size(grids, codec))
    bpd = lambda nbytes: None if nbytes is None else 8.0 * nbytes / (n * dims)  # noqa: E731
    return {"gzip_bytes": gz, "png_bytes": png, "bits_per_dim_gzip": bpd(gz), "bits_per_dim_png": bpd(png)}
