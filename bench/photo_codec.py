"""A learned image codec measured against JPEG, WebP and JPEG XL at matched bits per pixel (issue 22, item 5).

What is measured. Held-out images of ``--dataset`` (default the ``photos`` built-in; any built-in or image
folder) at ``--image-size`` (64), quantised to 8 bits first: that uint8 image is the original every codec
gets and is judged against. vqgen codes an image as its tokenizer's tokens (encode and decode in batches, CPU,
``torch.no_grad()``); its reconstruction is the tokenizer's decode of them. Two vqgen rates, one
reconstruction:

* the fixed rate: tokens x log2(vocabulary) (x codebooks, for rvq / rfsq) / pixels, the same for every image
  (the count of bits a fixed-length code needs; no header);
* with ``--prior DIR`` (a prior trained on this tokenizer's tokens), the entropy-coded rate: each image's
  tokens coded on their own by the range coder of ``vqgen compress`` (``compression_stats`` of
  ``pipelines.likelihood.compress`` on one grid: the exact payload, 32-bit words); the container's header per
  file (magic, prior fingerprint, shape, CRCs, metadata) is reported separately, beside the ideal code length
  (sum of -log2 p). The first ``--check-decode`` images are also decompressed and checked token for token.

Peers, each at matched bits per pixel: JPEG (Pillow, ``optimize=True``, 4:2:0), WebP (Pillow's encoder when
``PIL.features.check('webp')``, else ``cwebp``/``dwebp``; ``method=6``), JPEG XL (``cjxl``/``djxl``, effort 7,
distance). For every image and every vqgen rate (fixed, and entropy-coded when a prior is given) a binary
search over the peer's settings (JPEG quality 1..100, WebP quality 0..100, JPEG XL distance 25 .. 0.05 on a
geometric grid of 64) finds the setting whose payload (``--match payload``, the default: the file less the headers
the bench parses, as vqgen's rates count token bits only) or whole file (``--match file``) is the largest not over
the target bits (the next setting up is over it). When even the peer's smallest file is over the target, the
image is kept at that smallest file and counted ("over target" in the table): never dropped. The header-free
size (JPEG: the entropy-coded scan data; WebP: the VP8 bitstream without the RIFF / chunk / frame headers;
JPEG XL: not split, its headers are a few bytes) is recorded beside it. Peers' files are decoded and read
back with PIL; everything is compared in float [0, 1] RGB.

Metrics per image, then mean, std and 10th / 90th percentiles per codec: bits per pixel, PSNR (dB; an
identical image is capped at 100 dB by ``metrics.psnr``), SSIM, MS-SSIM (``tokenizers_vq.metrics``),
sharpness (mean gradient magnitude of the reconstruction over the original's: 1.0 = as sharp, < 1 blurred,
> 1 ringing or noise) and colour error (mean absolute difference of the per-channel means, in [0, 1]: a
colour cast). Also the codebook usage and perplexity of the held-out tokens. ``--whole DIR``: a folder of
larger images, each resized (shorter side) and centre-cropped to 256x256 and judged whole the same way
(entropy-coded only when the prior models that grid). A picture, ``docs/benchmarks/<out>.png``: the same
crops as rows, original | vqgen | JPEG | WebP | JPEG XL at the matched rate (the entropy-coded one when a
prior is given), 3x nearest-neighbour, each labelled with bpp and PSNR.

Run: ``OMP_NUM_THREADS=2 python -m bench.photo_codec --tokenizer runs/photo_tok --prior runs/photo_prior``
(writes bench/results/photo_codec.json, docs/benchmarks/photo_codec.md and .png); ``--quick``: 8 images,
print only (``--json PATH`` keeps the results and the picture beside it).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bench.common as common
from bench.common import cpu_model, write_results

WHOLE_SIZE = 256
JXL_DISTANCES = tuple(float(f"{d:.3g}") for d in np.geomspace(25.0, 0.05, 64))  # lowest rate first
PSNR_CAP_DB = 100.0  # metrics.psnr clamps the MSE at 1e-10: 100 dB for an identical image
METRICS = ("bpp", "psnr", "ssim", "ms_ssim", "sharpness", "colour_error")


# ---------------------------------------------------------------------------------------------- tools
class MissingTool(RuntimeError):
    """A peer's command-line tool is not installed; the message names the apt package."""


def run_tool(cmd: list[str]) -> None:
    """Run a command; a failure is a RuntimeError with its stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True)
    except FileNotFoundError:
        raise MissingTool(f"{cmd[0]} not found") from None
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.decode(errors='replace')[:300]}")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [3, H, W] in [0, 1] -> uint8 [H, W, 3] (rounded)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def to_float(a: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


def read_back(data: bytes) -> np.ndarray:
    """A decoded file (PNG, PPM, JPEG, WebP) read with PIL -> uint8 [H, W, 3]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_header_bytes(data: bytes) -> int | None:
    """Bytes of a baseline JPEG that are not entropy-coded scan data: every marker segment up to the end of
    the SOS header, plus the EOI marker. None if the file does not parse so (one scan expected)."""
    pos = 2
    if data[:2] != b"\xff\xd8":
        return None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        pos += 2 + length
        if marker == 0xDA:  # start of scan: what follows is scan data up to EOI
            end = data.rfind(b"\xff\xd9")
            return None if end < pos else pos + (len(data) - end)
    return None


def webp_header_bytes(data: bytes) -> int | None:
    """Bytes of a simple lossy WebP that are not VP8 bitstream: RIFF header (12), chunk header (8) and the
    VP8 key-frame header (10). None for other layouts (VP8X, lossless)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or data[12:16] != b"VP8 ":
        return None
    chunk = int.from_bytes(data[16:20], "little")
    return len(data) - (chunk - 10)


@dataclass
class Peer:
    """A standard codec: its settings from the lowest rate to the highest, and how to code an image at one."""

    name: str
    setting_name: str
    settings: Sequence[Any]
    encode: Callable[[np.ndarray, Any, Path], bytes]  # (uint8 [H, W, 3], setting, temp folder) -> the file
    decode: Callable[[bytes, Path], np.ndarray]  # (the file, temp folder) -> uint8 [H, W, 3]
    header_bytes: Callable[[bytes], int | None]
    how: str  # what encodes it, for the table
    missing: str | None = None  # why it is skipped: the install command


def _pillow_encoder(fmt: str, **opts: Any) -> Callable[[np.ndarray, Any, Path], bytes]:
    def encode(img: np.ndarray, quality: Any, tmp: Path) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, quality=int(quality), **opts)
        return buf.getvalue()

    return encode


def _pillow_decode(data: bytes, tmp: Path) -> np.ndarray:
    return read_back(data)


def _cli_encoder(cmd: Callable[[Path, Path, Any], list[str]], suffix: str) -> Callable[[np.ndarray, Any, Path], bytes]:
    def encode(img: np.ndarray, setting: Any, tmp: Path) -> bytes:
        from PIL import Image

        src, out = tmp / "in.png", tmp / f"out{suffix}"
        Image.fromarray(img).save(src)
        run_tool(cmd(src, out, setting))
        return out.read_bytes()

    return encode


def _cli_decoder(cmd: Callable[[Path, Path], list[str]], suffix: str, back_suffix: str
                 ) -> Callable[[bytes, Path], np.ndarray]:
    def decode(data: bytes, tmp: Path) -> np.ndarray:
        src, out = tmp / f"dec{suffix}", tmp / f"back{back_suffix}"
        src.write_bytes(data)
        run_tool(cmd(src, out))
        return read_back(out.read_bytes())

    return decode


def missing(tools: Sequence[str], package: str) -> str | None:
    """None when every tool is on PATH, else '<tools> not installed: apt-get install <package>'."""
    gone = [t for t in tools if shutil.which(t) is None]
    return f"{', '.join(gone)} not installed: apt-get install {package}" if gone else None


def make_peers() -> list[Peer]:
    """JPEG, WebP and JPEG XL; a peer whose tools are missing carries ``missing`` (skipped, with the fix)."""
    from PIL import features

    peers = [Peer("JPEG", "quality", range(1, 101), _pillow_encoder("JPEG", optimize=True, subsampling=2),
                  _pillow_decode, jpeg_header_bytes, "Pillow (libjpeg), optimize=True, 4:2:0")]
    if features.check("webp"):
        peers.append(Peer("WebP", "quality", range(0, 101), _pillow_encoder("WEBP", method=6), _pillow_decode,
                          webp_header_bytes, "Pillow (libwebp), method=6"))
    else:
        peers.append(Peer(
            "WebP", "quality", range(0, 101),
            _cli_encoder(lambda s, o, q: ["cwebp", "-quiet", "-m", "6", "-q", str(q), str(s), "-o", str(o)], ".webp"),
            _cli_decoder(lambda s, o: ["dwebp", "-quiet", str(s), "-ppm", "-o", str(o)], ".webp", ".ppm"),
            webp_header_bytes, "cwebp -m 6 -q Q", missing(("cwebp", "dwebp"), "webp")))
    peers.append(Peer(
        "JPEG XL", "distance", JXL_DISTANCES,
        _cli_encoder(lambda s, o, d: ["cjxl", str(s), str(o), "-d", str(d), "-e", "7", "--quiet"], ".jxl"),
        _cli_decoder(lambda s, o: ["djxl", str(s), str(o), "--quiet"], ".jxl", ".png"),
        lambda data: None, "cjxl -e 7 -d D (libjxl)", missing(("cjxl", "djxl"), "libjxl-tools")))
    return peers


# ---------------------------------------------------------------------------------------------- the rate search
@dataclass
class Match:
    """A peer's file for one image at a target: the setting chosen, its file, and whether it is over."""

    index: int  # into the peer's settings
    setting: Any
    data: bytes
    over_target: bool  # even the lowest setting's file is over the target
    tries: int
    next_bytes: int | None = None  # the file of the next setting up (over the target), None at the top
    sizes: dict[int, int] = field(default_factory=dict)


def match_rate(encode: Callable[[Any], bytes], settings: Sequence[Any], target_bytes: int,
               measure: Callable[[bytes], int] = len) -> Match:
    """Binary search over ``settings`` (lowest rate first; file size assumed non-decreasing along them) for the
    largest file not over ``target_bytes``: returns it, with ``next_bytes`` the next setting's (over the
    target) unless it is the last. When the first setting's file is already over, that file, ``over_target``.
    ``measure``: the bytes of a file that count against the target (default: all of them)."""
    files: dict[int, bytes] = {}

    def size(i: int) -> int:
        if i not in files:
            files[i] = encode(settings[i])
        return measure(files[i])

    lo, hi = 0, len(settings) - 1
    if size(lo) > target_bytes:
        return Match(lo, settings[lo], files[lo], True, len(files), size(lo), {i: measure(b) for i, b in files.items()})
    if size(hi) <= target_bytes:
        return Match(hi, settings[hi], files[hi], False, len(files), None, {i: measure(b) for i, b in files.items()})
    while hi - lo > 1:  # size(lo) <= target < size(hi)
        mid = (lo + hi) // 2
        if size(mid) <= target_bytes:
            lo = mid
        else:
            hi = mid
    return Match(lo, settings[lo], files[lo], False, len(files), size(hi), {i: measure(b) for i, b in files.items()})


# ---------------------------------------------------------------------------------------------- metrics
def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude (forward differences) per image: float [B, C, H, W] -> [B]."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).sqrt().flatten(1).mean(1)


def image_metrics(recon: torch.Tensor, ref: torch.Tensor) -> list[dict[str, float]]:
    """Per-image metrics of float [B, 3, H, W] in [0, 1] against the originals: PSNR (dB, capped at 100),
    SSIM, MS-SSIM, sharpness (gradient energy ratio, 1 = as sharp) and colour error (mean |channel mean
    difference|)."""
    from tokenizers_vq import metrics as M

    recon, ref = recon.float(), ref.float()
    ms = M.ms_ssim(recon, ref, reduce=False)
    sharp = (gradient_energy(recon) + 1e-8) / (gradient_energy(ref) + 1e-8)
    colour = (recon.mean((2, 3)) - ref.mean((2, 3))).abs().mean(1)
    out = []
    for i in range(len(ref)):
        out.append({"psnr": float(M.psnr(recon[i:i + 1], ref[i:i + 1])), "ssim": float(M.ssim(recon[i:i + 1], ref[i:i + 1])),
                    "ms_ssim": float(ms[i]), "sharpness": float(sharp[i]), "colour_error": float(colour[i])})
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{metric: {mean, std, p10, p90}} over per-image rows."""
    out = {}
    for k in METRICS + ("header_free_bpp", "file_bpp"):
        v = np.array([r[k] for r in rows if r.get(k) is not None], dtype=np.float64)
        if len(v):
            out[k] = {"mean": float(v.mean()), "std": float(v.std()), "p10": float(np.percentile(v, 10)),
                      "p90": float(np.percentile(v, 90))}
    return out


# ---------------------------------------------------------------------------------------------- vqgen
def fixed_bits(tok: Any, grid_shape: Sequence[int]) -> float:
    """Bits of one image's tokens at the fixed rate: positions (codebook axis included) x log2(vocabulary)."""
    return math.prod(grid_shape) * math.log2(tok.vocab_size)


@torch.no_grad()
def vqgen_round_trip(tok: Any, x: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens int64 [N, *grid], reconstructions float32 [N, 3, H, W] in [0, 1]): the tokenizer's encode and
    decode in batches on the CPU."""
    toks, recs = [], []
    for s in range(0, len(x), batch):
        t = tok.encode(x[s:s + batch])
        toks.append(t)
        recs.append(tok.decode(t).clamp(0, 1))
    return torch.cat(toks), torch.cat(recs)


def entropy_coded(prior: Any, tokens: torch.Tensor, check: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each image's tokens coded alone by ``vqgen compress``'s coder: per image {payload_bytes, file_bytes,
    header_bytes, ideal_bits}; and the decode check of the first ``check`` images (compress_grids ->
    decompress_grids, token for token)."""
    from pipelines.likelihood.compress import compress_grids, compression_stats, decompress_grids

    rows = []
    for i in range(len(tokens)):
        s = compression_stats(prior, tokens[i:i + 1], chunk_size=1)
        rows.append({"payload_bytes": s.payload_bytes, "file_bytes": s.file_bytes,
                     "header_bytes": s.file_bytes - s.payload_bytes, "ideal_bits": s.ideal_bits})
    exact = []
    for i in range(min(check, len(tokens))):
        data = compress_grids(prior, tokens[i:i + 1], chunk_size=1)
        back = decompress_grids(prior, data).tokens
        exact.append(bool(torch.equal(back, tokens[i:i + 1])) and len(data) == rows[i]["file_bytes"])
    return rows, {"checked": len(exact), "exact": all(exact) if exact else None}


# ---------------------------------------------------------------------------------------------- one image set
MATCH = ("payload", "file")


def _measure(peer: Peer, match: str) -> Callable[[bytes], int]:
    """What of a peer's file counts against vqgen's rate: the whole file (``file``), or (``payload``) the file less
    the headers ``peer.header_bytes`` finds (the whole file when it cannot parse them): vqgen's rates count
    token bits only, so ``payload`` compares like with like; ``file`` gives the peers fewer bits."""
    if match == "file":
        return len

    def payload(data: bytes) -> int:
        hb = peer.header_bytes(data)
        return len(data) - (hb or 0)

    return payload


def _vqgen_codec(tname: str, bits: list[float], pixels: int, vq_metrics: list[dict[str, float]],
                 entropy_rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    """vqgen's rows at one rate (``fixed`` or ``entropy``): its bits per image, its metrics, and for the entropy
    rate the coder's file, header and ideal sizes."""
    rows = []
    for i, b in enumerate(bits):
        row = {"image": i, "bpp": b / pixels, "target_bpp": b / pixels, **vq_metrics[i]}
        if tname == "entropy":
            e = entropy_rows[i]  # type: ignore[index]
            row |= {"header_free_bpp": row["bpp"], "file_bpp": 8 * e["file_bytes"] / pixels,
                    "container_header_bytes": e["header_bytes"], "ideal_bpp": e["ideal_bits"] / pixels,
                    "payload_bytes": e["payload_bytes"]}
        rows.append(row)
    how = ("fixed-length tokens" if tname == "fixed" else
           "tokens range-coded by the prior (vqgen compress's coder), one image per file")
    return {"how": how, "rows": rows, "summary": summarise(rows), "over_target": 0}


def _peer_codec(peer: Peer, bits: list[float], x: torch.Tensor, originals: list[np.ndarray],
                files: dict[tuple[str, int, Any], bytes], tmp: Path, match: str) -> dict[str, Any]:
    """One peer matched image by image to ``bits`` (vqgen's bits per image): its rows, metrics and summary.
    ``files`` caches the peer's files by (peer, image, setting) across rates."""
    pixels = x.shape[-2] * x.shape[-1]
    measure = _measure(peer, match)
    t0 = time.perf_counter()
    rows, recs = [], []
    for i in range(len(originals)):
        target = int(math.floor(bits[i] / 8 + 1e-9))  # the most whole bytes within the target bits

        def encode(setting: Any, i: int = i) -> bytes:
            key = (peer.name, i, setting)
            if key not in files:
                files[key] = peer.encode(originals[i], setting, tmp)
            return files[key]

        m = match_rate(encode, peer.settings, target, measure)
        back = peer.decode(m.data, tmp)
        if back.shape != originals[i].shape:
            raise RuntimeError(f"{peer.name} decoded a {back.shape} image from a {originals[i].shape} one")
        recs.append(to_float(back))
        hb = peer.header_bytes(m.data)
        rows.append({"image": i, "bpp": 8 * len(m.data) / pixels, "target_bpp": bits[i] / pixels,
                     "matched_bpp": 8 * measure(m.data) / pixels,  # what was held to the target
                     "file_bytes": len(m.data), "header_bytes": hb,
                     "header_free_bpp": None if hb is None else 8 * (len(m.data) - hb) / pixels,
                     peer.setting_name: m.setting, "over_target": m.over_target,
                     "next_setting_bytes": m.next_bytes, "tries": m.tries})
    for r, met in zip(rows, image_metrics(torch.stack(recs), x)):
        r.update(met)
    return {"how": peer.how, "rows": rows, "summary": summarise(rows),
            "over_target": sum(r["over_target"] for r in rows), "search_s": time.perf_counter() - t0}


def bench_set(label: str, x: torch.Tensor, tok: Any, prior: Any | None, peers: list[Peer], check: int,
              log: Callable[[str], None] = print, match: str = "payload") -> dict[str, Any]:
    """Every codec on the images x float32 [N, 3, H, W] (already 8-bit values): per target (``fixed`` and, with
    a prior, ``entropy``) each codec's per-image rows and their summary."""
    from tokenizers_vq import metrics as M

    n, _, h, w = x.shape
    pixels = h * w
    t0 = time.perf_counter()
    tokens, recon = vqgen_round_trip(tok, x)
    recon = torch.stack([to_float(to_uint8(r)) for r in recon])  # as an 8-bit image, as the peers' are
    log(f"[{label}] vqgen encode + decode of {n} images: {time.perf_counter() - t0:.1f} s")
    counts = M.code_histogram(tokens, tok.vocab_size)
    grid = tuple(tokens.shape[1:])
    fbits = fixed_bits(tok, grid)
    vq_metrics = image_metrics(recon, x)
    out: dict[str, Any] = {
        "label": label, "n": n, "image_size": [h, w], "token_grid": list(grid), "vocab_size": tok.vocab_size,
        "fixed_bits_per_image": fbits, "fixed_bpp": fbits / pixels,
        "codebook_usage": M.codebook_usage(counts), "codebook_perplexity": M.code_perplexity(counts),
        "codes_used": int((counts > 0).sum()), "targets": {}}
    targets = {"fixed": [fbits] * n}
    entropy_rows = None
    if prior is not None:
        if tuple(prior.shape) != grid:
            out["entropy_skipped"] = f"the prior models {tuple(prior.shape)} grids, these images give {grid}"
            log(f"[{label}] no entropy-coded rate: {out['entropy_skipped']}")
        else:
            t0 = time.perf_counter()
            entropy_rows, out["decode_check"] = entropy_coded(prior, tokens, check)
            out["entropy_coding_s"] = time.perf_counter() - t0
            targets["entropy"] = [8 * r["payload_bytes"] for r in entropy_rows]
            log(f"[{label}] entropy-coded {n} images one by one: {out['entropy_coding_s']:.1f} s, decode check "
                f"{out['decode_check']}")
    with tempfile.TemporaryDirectory(prefix="vqgen-photo-codec-") as d:
        tmp = Path(d)
        originals = [to_uint8(xi) for xi in x]
        files: dict[tuple[str, int, Any], bytes] = {}  # the fixed and entropy-coded searches share peer files
        for tname, bits in targets.items():
            codecs = {"vqgen": _vqgen_codec(tname, bits, pixels, vq_metrics, entropy_rows)}
            for peer in peers:
                if peer.missing:
                    codecs[peer.name] = {"how": peer.how, "skipped": peer.missing}
                    continue
                t0 = time.perf_counter()
                codecs[peer.name] = _peer_codec(peer, bits, x, originals, files, tmp, match)
                over = codecs[peer.name]["over_target"]
                log(f"[{label}] {tname} rate, {peer.name}: {time.perf_counter() - t0:.1f} s"
                    + (f"; {over} of {n} images cannot go as low (their smallest file is over)" if over else ""))
            out["targets"][tname] = codecs
    out["recon"] = recon  # for the picture; dropped before the JSON
    return out


# ---------------------------------------------------------------------------------------------- data
def held_out(dataset: str, size: int, limit: int, seed: int) -> torch.Tensor:
    """The first ``limit`` test images of a built-in or image folder at ``size``, 3 channels, as 8-bit values."""
    from pipelines.data import DataSpec, load_data

    splits = load_data(DataSpec(dataset, modality="image", image_size=size, channels=3, limit=limit, seed=seed))
    n = min(limit, len(splits.test))
    x = torch.stack([splits.test[i][0] for i in range(n)])
    return torch.stack([to_float(to_uint8(xi)) for xi in x])


def whole_images(folder: str, limit: int, seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` images of a folder (sorted by path), shorter side resized to 256 and centre-cropped.
    ``folder`` ``photos``: the photographs the ``photos`` built-in holds out for ``seed`` (its test split)."""
    from PIL import Image

    from pipelines.data import IMAGE_EXTS
    from tokenizers_vq.modality.image import pil_to_tensor

    if folder == "photos":
        from pipelines.data.builtins.photos import find_photos, split_photos

        files = [Path(p.path) for p in split_photos(find_photos(), seed)[1]][:limit]
    else:
        files = sorted(f for f in Path(folder).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)[:limit]
    if not files:
        raise ValueError(f"--whole {folder}: no image files ({', '.join(sorted(IMAGE_EXTS))})")
    xs = []
    for f in files:
        with Image.open(f) as im:
            xs.append(to_float(to_uint8(pil_to_tensor(im, WHOLE_SIZE, 3))))
    return torch.stack(xs)


# ---------------------------------------------------------------------------------------------- the picture
def picture(res_set: dict[str, Any], x: torch.Tensor, path: Path, rows: int = 8, scale: int = 3,
            tmp_peers: list[Peer] | None = None) -> Path:
    """Rows of crops: original | vqgen | each peer at the matched rate (entropy-coded when there is one),
    ``scale``x nearest-neighbour, labelled with bpp and PSNR."""
    from PIL import Image, ImageDraw, ImageFont

    tname = "entropy" if "entropy" in res_set["targets"] else "fixed"
    codecs = res_set["targets"][tname]
    names = ["original", "vqgen"] + [k for k in codecs if k != "vqgen"]
    n = min(rows, len(x))
    h, w = x.shape[2] * scale, x.shape[3] * scale
    pad, text_h = 4, 26
    sheet = Image.new("RGB", (len(names) * (w + pad) + pad, text_h + n * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for j, name in enumerate(names):
        draw.text((pad + j * (w + pad), 6), name + (f" ({tname})" if name == "vqgen" else ""), fill="black", font=font)
    peers = {p.name: p for p in tmp_peers or []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            top = text_h + i * (h + text_h + pad)
            for j, name in enumerate(names):
                label = ""
                if name == "original":
                    img = to_uint8(x[i])
                elif name == "vqgen":
                    img = to_uint8(res_set["recon"][i])
                    r = codecs["vqgen"]["rows"][i]
                    label = f"{r['bpp']:.3f} bpp {r['psnr']:.1f} dB"
                elif codecs[name].get("skipped"):
                    img = np.full_like(to_uint8(x[i]), 255)
                    label = "not installed"
                else:
                    r = codecs[name]["rows"][i]
                    p = peers[name]
                    img = p.decode(p.encode(to_uint8(x[i]), r[p.setting_name], Path(d)), Path(d))
                    label = f"{r['bpp']:.3f} bpp {r['psnr']:.1f} dB" + (" OVER" if r["over_target"] else "")
                tile = Image.fromarray(img).resize((w, h), Image.Resampling.NEAREST)
                left = pad + j * (w + pad)
                sheet.paste(tile, (left, top))
                draw.text((left, top + h + 3), label, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---------------------------------------------------------------------------------------------- the report
def fmt_stat(s: dict[str, dict[str, float]], k: str, spec: str) -> str:
    if k not in s:
        return "-"
    v = s[k]
    return f"{v['mean']:{spec}} ({v['p10']:{spec}}-{v['p90']:{spec}})"


def table(res_set: dict[str, Any]) -> list[str]:
    lines = ["| rate matched to | codec | bpp (whole file) | bpp without headers | PSNR dB | SSIM | MS-SSIM | "
             "sharpness | colour error | over target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    n = res_set["n"]
    for tname, codecs in res_set["targets"].items():
        what = f"vqgen fixed ({res_set['fixed_bpp']:.3f} bpp)" if tname == "fixed" else "vqgen entropy-coded"
        for name, c in codecs.items():
            if c.get("skipped"):
                lines.append(f"| {what} | {name} | skipped: {c['skipped']} | | | | | | | |")
                continue
            s = c["summary"]
            whole = fmt_stat(s, "bpp", ".3f")
            free = fmt_stat(s, "header_free_bpp", ".3f")
            if name == "vqgen":
                whole = "- (no file)" if tname == "fixed" else fmt_stat(s, "file_bpp", ".3f")
                free = fmt_stat(s, "bpp", ".3f")
            lines.append(f"| {what} | {name} | {whole} | {free} | {fmt_stat(s, 'psnr', '.2f')} | "
                         f"{fmt_stat(s, 'ssim', '.3f')} | {fmt_stat(s, 'ms_ssim', '.3f')} | "
                         f"{fmt_stat(s, 'sharpness', '.2f')} | {fmt_stat(s, 'colour_error', '.4f')} | "
                         f"{c['over_target']} / {n} |")
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# A learned image codec against JPEG, WebP and JPEG XL at matched bits per pixel", "",
             f"`{res['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads); load average "
             f"{m['load_before']:.1f} at the start, {m['load_after']:.1f} at the end; {res['total_seconds']:.0f} s in all.", "",
             f"Tokenizer `{res['tokenizer']}` ({res['tokenizer_info']}); prior: "
             + (f"`{res['prior']}` ({res['prior_arch']})" if res["prior"] else "none (fixed rate only)") + ".", "",
             "Each cell: mean (10th-90th percentile) over the images. vqgen's bpp are header-free: the fixed rate is "
             "tokens x log2(vocabulary) / pixels, the entropy-coded rate the range coder's payload for the image "
             "alone; its whole-file column adds the `vqgen compress` container header of a one-image file. Peers "
             "are matched per image so that their "
             + ("**payload** (the file less the headers: JPEG's marker segments, WebP's RIFF / chunk / frame "
                "headers; JPEG XL whole)" if res.get("match", "payload") == "payload"
                else "**whole file (headers included)**")
             + " is the largest not over vqgen's rate for that image (a binary search over their quality "
             "setting; `--match` picks payload or whole file). 'over target': "
             "images where even the peer's smallest file is over vqgen's rate; they are kept, at that smallest "
             "file, in every mean. Sharpness: mean gradient magnitude of the reconstruction over the original's "
             "(1 = as sharp, < 1 blurred). Colour error: mean |difference of per-channel means| in [0, 1]. PSNR "
             "is RGB in [0, 1], capped at 100 dB.", ""]
    for s in res["sets"]:
        lines += [f"## {s['label']}", "",
                  f"{s['n']} images, {s['image_size'][0]}x{s['image_size'][1]}; tokens {s['token_grid']} of a "
                  f"{s['vocab_size']}-code vocabulary: fixed rate {s['fixed_bpp']:.4f} bpp. Codebook usage on these "
                  f"images {s['codebook_usage']:.1%} ({s['codes_used']} codes), perplexity "
                  f"{s['codebook_perplexity']:.1f}.", ""]
        if "entropy" in s["targets"]:
            rows = s["targets"]["entropy"]["vqgen"]["rows"]
            hdr = np.mean([r["container_header_bytes"] for r in rows])
            ideal = np.mean([r["ideal_bpp"] for r in rows])
            lines += [f"Entropy-coded: ideal {ideal:.4f} bpp (sum of -log2 p), payload "
                      f"{s['targets']['entropy']['vqgen']['summary']['bpp']['mean']:.4f} bpp; the container adds "
                      f"{hdr:.0f} bytes per one-image file ({8 * hdr / (s['image_size'][0] * s['image_size'][1]):.3f} "
                      f"bpp). Decode check: {s['decode_check']}.", ""]
        elif s.get("entropy_skipped"):
            lines += [f"No entropy-coded rate: {s['entropy_skipped']}.", ""]
        lines += table(s) + [""]
        peers = {k: c for k, c in s["targets"]["fixed"].items() if k != "vqgen"}
        lines += [f"- {k}: {c['how']}" + (f" (skipped: {c['skipped']})" if c.get("skipped") else "")
                  for k, c in peers.items()] + [""]
    if res.get("picture"):
        lines += [f"Picture: `{res['picture']}` (rows: the same crops; original | vqgen | JPEG | WebP | JPEG XL at "
                  "the matched rate, 3x nearest-neighbour, each labelled with bpp and PSNR; OVER = the peer's "
                  "smallest file is over the target).", ""]
    if res.get("note"):
        lines += [res["note"], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.photo_codec", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True, help="a trained image tokenizer folder")
    ap.add_argument("--prior", default=None, help="a prior folder trained on this tokenizer's tokens "
                                                  "(adds the entropy-coded rate)")
    ap.add_argument("--dataset", default="photos", help="a built-in or an image folder (default photos)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="held-out images (default 200; --quick 8)")
    ap.add_argument("--whole", default=None, metavar="DIR",
                    help="also judge a folder of larger images whole at 256x256 (shorter side resized, centre crop); "
                         "'photos': the photographs the photos built-in holds out for --seed")
    ap.add_argument("--whole-limit", type=int, default=50)
    ap.add_argument("--check-decode", type=int, default=8, help="images also decompressed and checked (with a prior)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--match", choices=MATCH, default="payload",
                    help="what of a peer's file is matched to vqgen's token bits: payload (the file less the headers "
                         "the bench can parse: JPEG's marker segments, WebP's RIFF/VP8 headers; JPEG XL whole) or "
                         "the whole file (default payload: vqgen's rates count token bits only)")
    ap.add_argument("--out", default="photo_codec", help="results name: bench/results/NAME.json, "
                                                         "docs/benchmarks/NAME.md and .png")
    ap.add_argument("--quick", action="store_true", help="8 images, print only")
    ap.add_argument("--json", default=None, help="also write the results here (with --quick the only output, the "
                                                 "picture beside it)")
    ap.add_argument("--note", default="", help="a sentence for the markdown (e.g. 'untrained tokenizer')")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from pipelines.stages.common import open_prior
    from tokenizers_vq import load_tokenizer

    limit = args.limit or (8 if args.quick else 200)
    torch.manual_seed(args.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t_all, load_before = time.perf_counter(), os.getloadavg()[0]
    tok = load_tokenizer(args.tokenizer).eval()
    if str(tok.modality) != "image" or tok.input_shape[0] != 3:
        raise ValueError(f"--tokenizer {args.tokenizer}: an RGB image tokenizer is needed, this one takes "
                         f"{tok.modality} of shape {tuple(tok.input_shape)}")
    prior = None
    if args.prior:
        folder, _ = open_prior(args.prior, codec_dir=args.tokenizer)  # checks it was trained on these tokens
        prior = folder.prior.eval()
    peers = make_peers()
    for p in peers:
        if p.missing:
            print(f"skipping {p.name}: {p.missing}", flush=True)
    x = held_out(args.dataset, args.image_size, limit, args.seed)
    sets = [(f"{args.dataset}: {len(x)} held-out images at {args.image_size}x{args.image_size}", x)]
    if args.whole:
        what = "the photographs photos holds out" if args.whole == "photos" else args.whole
        sets.append((f"{what}: whole images at {WHOLE_SIZE}x{WHOLE_SIZE}",
                     whole_images(args.whole, min(args.whole_limit, limit), args.seed)))
    results = [(bench_set(label, xs, tok, prior, peers, args.check_decode, match=args.match), xs)
               for label, xs in sets]
    cmd = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')} python -m bench.photo_codec "
           + shlex.join(argv if argv is not None else sys.argv[1:]))
    c = tok.config
    res: dict[str, Any] = {
        "command": cmd, "tokenizer": args.tokenizer, "prior": args.prior,
        "tokenizer_info": f"{c.quantizer}, vocabulary {tok.vocab_size}, downsample {c.downsample}, "
                          f"{sum(p.numel() for p in tok.parameters()):,} parameters",
        "prior_arch": prior.config.arch if prior is not None else None, "dataset": args.dataset,
        "seed": args.seed, "quick": args.quick, "note": args.note, "match": args.match,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_before": load_before, "load_after": os.getloadavg()[0]},
        "total_seconds": time.perf_counter() - t_all,
        "sets": [{k: v for k, v in s.items() if k != "recon"} for s, _ in results]}
    if args.quick:
        pic = Path(args.json).with_suffix(".png") if args.json else None
    else:
        pic = common.ROOT / "docs" / "benchmarks" / f"{args.out}.png"
    if pic is not None:
        picture(results[0][0], results[0][1], pic, tmp_peers=peers)
        res["picture"] = str(pic.relative_to(common.ROOT)) if pic.is_relative_to(common.ROOT) else str(pic)
    for s in res["sets"]:
        print(f"\n{s['label']}\n" + "\n".join(table(s)))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if not args.quick:
        write_results(args.out, res, markdown(res))
    return res


if __name__ == "__main__":
    main()
