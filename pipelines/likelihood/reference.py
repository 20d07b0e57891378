"""A prior's own score reference: what its scores look like on data like its training data, so that an anomaly score
means the same whichever folder an input arrives in.

``vqgen train-prior`` holds a slice of the training grids out of training (``--reference-fraction``), fits a small
*local model* on the training grids (an order-2 n-gram: each token given its left and upper neighbours, counted in
a second, ``score_local/``), and once the prior is trained records three features of each held-out grid in
``score_reference.json``:

* ``nll``: -ln p(grid) in nats under the prior (the null label for a conditional prior: the marginal p(grid));
* ``complexity``: the length in nats that a generic lossless compressor (PNG, ``png_nats``) gives the same grid;
* ``local``: -ln p(grid) in nats under the local model.

Every score below is computed per input from those three numbers of that input alone and the reference:

* ``nll``: the plain NLL (higher = more anomalous);
* ``typicality``: |NLL - mean reference NLL| (Nalisnick et al. 2019, one input at a time);
* ``nll_tails``: two-sided calibrated deviation of the NLL (``Tails``): 1 at the reference's 2.5% / 97.5%
  quantiles, 0 at its median, measured separately below and above the median;
* ``excess``: NLL - complexity, the input-complexity correction of Serra et al. 2020 ("Input complexity and
  out-of-distribution detection with likelihood-based generative models"): how much worse than PNG the prior
  codes the input, calibrated on the reference (``Upper``: 0 at its median, 1 at its 97.5% quantile);
* ``local_excess``: the same correction with the local model in place of the prior. The local model knows the
  training data's neighbourhoods (stroke widths, edges, textures) and, unlike the prior, does not generalise
  beyond them, so inputs made of unseen local patterns (typed digits, other textures) cost it more than PNG;
* ``combined``: max(``local_excess``, ``excess``).

The default is the one ``bench/ood.py`` measured best on its sets (docs/benchmarks/ood.md): ``DEFAULT_METHOD``.

``verdict``: an input is ``ood`` when its ``ood_score`` exceeds the threshold that flags a fraction ``fpr`` of the
reference grids. The threshold is cross-fitted (each half of the reference scored with quantiles taken from the
other half), so the held-out false-positive rate is not flattered by scoring the examples the quantiles came from.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from prior import PriorConfig, build_prior, load_prior
from vqgen_io import atomic_write_text

REFERENCE_FILE = "score_reference.json"
REFERENCE_FORMAT = 1
LOCAL_DIR = "score_local"  # the local model, a save_pretrained n-gram prior folder inside the prior folder
LOCAL_ORDER = 2  # parents of the local model: left and upper neighbour (2-D grids), two previous tokens (1-D)
LOCAL_FIT_LIMIT = 20000  # the local model is counted on at most this many training grids (bounded size)
LOCAL_FIT_TOKENS = 20_000_000  # ... and at most about this many tokens (long audio grids)
REFERENCE_LIMIT = 1000  # at most this many held-out grids ...
REFERENCE_TOKENS = 2_000_000  # ... and about this many tokens (scoring them ends every train-prior run)
METHODS = ("nll", "typicality", "nll_tails", "excess", "local_excess", "combined")
DEFAULT_METHOD = "local_excess"
TAIL = 0.025  # a calibrated deviation of 1 = this quantile (below the median) or 1 - TAIL (above)
MIN_REFERENCE = 20  # fewer held-out grids than this give no usable tail quantiles


# ---------------------------------------------------------------------------------------------- complexity
def _as_image(grid: np.ndarray) -> np.ndarray:
    """A token grid as a 2-D array for PNG: [h, w] as is, [h, w, q] -> [h, w*q], [t] -> [1, t], [t, q] as is."""
    if grid.ndim == 1:
        return grid[None]
    if grid.ndim == 3:
        return grid.reshape(grid.shape[0], -1)
    return grid


def png_nats(grids: Tensor | np.ndarray, vocab_size: int) -> np.ndarray:
    """Code length in nats of each grid under a generic lossless compressor: float64 [N].

    grids: int [N, *shape] in [0, vocab_size). Each grid is written as one greyscale PNG (Pillow, zlib level 9;
    8-bit for vocabularies up to 256, else 16-bit), its token values as pixel values; for raw 8-bit pixels that is
    the PNG of the image itself. The length includes PNG's fixed headers (the same for every grid of a shape).
    """
    a = np.asarray(grids.cpu() if isinstance(grids, Tensor) else grids)
    dtype = np.uint8 if vocab_size <= 256 else np.uint16  # Pillow makes these "L" and "I;16" images
    out = np.empty(len(a), dtype=np.float64)
    for i, g in enumerate(a):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(_as_image(g.astype(dtype)))).save(buf, "PNG", compress_level=9)
        out[i] = 8 * buf.tell() * math.log(2.0)
    return out


# ---------------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Tails:
    """Calibrated deviation from a reference sample: 0 at its median, 1 at its ``TAIL`` quantile below the median or
    its ``1 - TAIL`` quantile above, linear in between and beyond (no saturation: far-out inputs still rank by how
    far out they are). ``upper``: one-sided, (v - median) / (upper quantile - median), negative below the median."""

    median: float
    low: float  # median - TAIL quantile (> 0)
    high: float  # 1 - TAIL quantile - median (> 0)
    upper: bool = False

    @classmethod
    def fit(cls, values: np.ndarray, upper: bool = False) -> Tails:
        v = np.asarray(values, dtype=np.float64)
        lo, med, hi = np.quantile(v, [TAIL, 0.5, 1 - TAIL])
        floor = 1e-6 * max(1.0, abs(float(med)))  # a constant feature would divide by zero
        return cls(float(med), max(float(med - lo), floor), max(float(hi - med), floor), upper)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        d = np.asarray(values, dtype=np.float64) - self.median
        if self.upper:
            return d / self.high
        return np.where(d >= 0, d / self.high, -d / self.low)


@dataclass(frozen=True)
class Features:
    """Per-grid features in nats, float64 [N] each: the prior's (marginal) NLL, the PNG length, the local model's
    NLL."""

    nll: np.ndarray
    complexity: np.ndarray
    local: np.ndarray

    def derived(self) -> dict[str, np.ndarray]:
        """The quantities the scores calibrate: nll, excess (nll - complexity), local_excess (local - complexity)."""
        return {"nll": self.nll, "excess": self.nll - self.complexity, "local_excess": self.local - self.complexity}

    def take(self, mask: np.ndarray) -> Features:
        return Features(self.nll[mask], self.complexity[mask], self.local[mask])


def _fit_tails(f: Features) -> dict[str, Tails]:
    d = f.derived()
    return {"nll": Tails.fit(d["nll"]), "excess": Tails.fit(d["excess"], upper=True),
            "local_excess": Tails.fit(d["local_excess"], upper=True)}


@dataclass
class ScoreReference:
    """Features of held-out grids like the prior's training data (``Features``, in a fixed order), what they were,
    and the local model (a count-based ``Prior``, or None until attached); every score and threshold is derived
    from them."""

    features: Features
    source: str = ""  # what the grids were, in words (printed by `vqgen score`, recorded in its summary)
    in_sample: bool = False  # the grids may have been trained on (``--reference`` on an old folder)
    local_model: Any = None  # the n-gram ``Prior`` whose NLL is the ``local`` feature
    _tails: dict[str, Tails] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        f = self.features
        arrays = [np.asarray(a, dtype=np.float64) for a in (f.nll, f.complexity, f.local)]
        if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
            raise ValueError("score reference: nll, complexity and local must be three vectors of one length, got "
                             + ", ".join(str(a.shape) for a in arrays))
        if len(arrays[0]) < MIN_REFERENCE:
            raise ValueError(f"a score reference needs at least {MIN_REFERENCE} grids, got {len(arrays[0])}")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("score reference: the features contain NaN or inf")
        self.features = Features(*arrays)
        self._tails = _fit_tails(self.features)

    @property
    def n(self) -> int:
        return len(self.features.nll)

    @property
    def mean_nll(self) -> float:
        return float(self.features.nll.mean())

    def scores(self, f: Features, method: str = DEFAULT_METHOD, tails: dict[str, Tails] | None = None) -> np.ndarray:
        """Anomaly score of each input (float64 [N], higher = more anomalous) by ``method`` (one of ``METHODS``)."""
        if method not in METHODS:
            raise ValueError(f"unknown anomaly score {method!r}; one of {', '.join(METHODS)}")
        t, d = tails or self._tails, f.derived()
        if method == "nll":
            return d["nll"]
        if method == "typicality":
            return np.abs(d["nll"] - self.mean_nll)
        if method == "nll_tails":
            return t["nll"](d["nll"])
        if method in ("excess", "local_excess"):
            return t[method](d[method])
        return np.maximum(t["local_excess"](d["local_excess"]), t["excess"](d["excess"]))  # combined

    def held_out_scores(self, method: str = DEFAULT_METHOD) -> np.ndarray:
        """Each reference grid's score with the quantiles fitted on the other half (even / odd positions): float64
        [n], what an unseen in-distribution input scores; thresholds are taken from these."""
        out = np.empty(self.n)
        half = np.arange(self.n) % 2
        for part in (0, 1):
            tails = _fit_tails(self.features.take(half != part))
            out[half == part] = self.scores(self.features.take(half == part), method, tails)
        return out

    def threshold(self, fpr: float, method: str = DEFAULT_METHOD) -> float:
        """The score above which an input is called ``ood`` so that a fraction ``fpr`` in (0, 1) of held-out
        in-distribution inputs would be: the (1 - fpr) quantile of ``held_out_scores``."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
        if fpr * self.n < 1:
            raise ValueError(f"--fpr {fpr}: the reference has {self.n} grids, too few to calibrate a false-positive "
                             f"rate below {1 / self.n:.3g}")
        return float(np.quantile(self.held_out_scores(method), 1.0 - fpr))

    # ------------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        f = self.features
        return {"format": REFERENCE_FORMAT, "source": self.source, "in_sample": self.in_sample, "n": self.n,
                "default_method": DEFAULT_METHOD, "local_model": LOCAL_DIR,
                # full precision (JSON floats round-trip exactly): a loaded reference scores as the one computed
                **{k: [float(v) for v in a] for k, a in (("nll", f.nll), ("complexity", f.complexity),
                                                         ("local", f.local))}}

    def save(self, folder: str | Path) -> Path:
        """``score_reference.json`` and the local model (``score_local/``) into a prior folder; returns the JSON's
        path."""
        if self.local_model is None:
            raise ValueError("a score reference is saved with its local model; none is attached")
        self.local_model.save_pretrained(Path(folder) / LOCAL_DIR)
        path = Path(folder) / REFERENCE_FILE
        atomic_write_text(path, json.dumps(self.to_dict()) + "\n")  # last: a reference file means both are there
        return path

    @classmethod
    def load(cls, folder: str | Path, map_location: str = "cpu") -> ScoreReference | None:
        """The reference a prior folder records (with its local model), or None when it has none (saved before
        priors carried one, or trained with ``--reference-fraction 0``). ``ValueError`` naming the file and the fix
        when it is unreadable."""
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        fix = (f"delete {path} and recompute it with `vqgen score --prior {folder} --reference DATA` (DATA: the "
               "data the prior was trained on)")
        try:
            d = json.loads(path.read_text())
            if d.get("format") != REFERENCE_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, this vqgen reads {REFERENCE_FORMAT}")
            feats = Features(np.array(d["nll"]), np.array(d["complexity"]), np.array(d["local"]))
            local = load_prior(Path(folder) / LOCAL_DIR, map_location=map_location)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise ValueError(f"{path} (or its local model {LOCAL_DIR}/) is not a readable score reference ({e}): "
                             + fix) from e
        return cls(feats, d.get("source", ""), bool(d.get("in_sample")), local)


def fit_local_model(grids: Tensor, vocab_size: int, shape: tuple[int, ...], num_codebooks: int = 1) -> Any:
    """The local model: an order-``LOCAL_ORDER`` n-gram ``Prior`` counted on grids (int [N, *shape], or a sharded
    split's ``ShardedArray``, read block by block; at most ``LOCAL_FIT_LIMIT`` of them and about ``LOCAL_FIT_TOKENS``
    tokens are used, evenly spaced)."""
    from ..data.tokens import row_chunks, take_rows

    limit = max(1, min(LOCAL_FIT_LIMIT, LOCAL_FIT_TOKENS // max(1, grids[0].numel() if len(grids) else 1)))
    if len(grids) > limit:
        grids = take_rows(grids, torch.linspace(0, len(grids) - 1, limit).long())  # a lazy view of a sharded split
    model = build_prior(PriorConfig(arch="ngram", ngram_order=LOCAL_ORDER, vocab_size=vocab_size, shape=tuple(shape),
                                    num_codebooks=num_codebooks))
    model.fit_chunks(row_chunks(grids))  # exactly fit's counts on all of them
    return model


def reference_split(n: int, fraction: float, seed: int, seq_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held) of ``n`` training grids of ``seq_len`` tokens: ``round(fraction * n)`` of them (at most
    ``REFERENCE_LIMIT`` and ``REFERENCE_TOKENS / seq_len``, at least ``MIN_REFERENCE``) held out for the score
    reference, chosen by a permutation seeded with ``seed``; none when fewer than ``MIN_REFERENCE`` would be. Both
    sorted int64 arrays."""
    cap = max(MIN_REFERENCE, min(REFERENCE_LIMIT, REFERENCE_TOKENS // max(1, seq_len)))
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--reference-fraction must be in [0, 1), got {fraction}")
    k = min(int(round(fraction * n)), cap)
    if k < MIN_REFERENCE or n - k < 1:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng([int(seed), 0x5C0E]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])

