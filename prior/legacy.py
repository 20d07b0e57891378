"""Format 1 of ``PriorConfig`` (vqgen before component sections): one flat dataclass holding every architecture's
fields. Folders and compressed files saved then record fingerprints computed from that flat dict, so a config read
from such a file keeps it (and is written back in format 1). Frozen: new fields never go here."""

from __future__ import annotations

import math
from typing import Any

from vqgen_io.components import LegacyFormat

# Every format-1 field with its default, as the last format-1 release declared them (stride was derived from shape).
V1_FIELDS: dict[str, Any] = {
    "arch": "transformer", "vocab_size": 512, "shape": (8, 8), "num_classes": 0, "num_codebooks": 1,
    "codebook_pattern": "flatten", "label_dropout": 0.1, "n_layer": 4, "n_head": 4, "d_model": 128, "dropout": 0.0,
    "attention": "strided", "stride": None, "summary": 1, "residual_channels": 64, "skip_channels": 64,
    "dilation_cycle": 10, "n_cycles": 1, "pixelcnn_layers": 6, "pixelcnn_channels": 64, "made_hidden": (256, 256),
    "made_order": "raster", "made_seed": 0, "made_ensemble": 1, "made_connectivity_agnostic": False,
    "made_num_masks": 0, "output": "softmax", "logistic_mixtures": 5, "lstm_hidden": 128, "lstm_layers": 2,
    "laplace_alpha": 1.0, "ngram_order": 3, "ngram_template": "jbig", "ngram_smoothing": "kneser_ney",
    "ngram_alpha": 0.5, "ngram_discount": None, "ngram_position": False, "format_version": 1,
}
V1_ARCHS = ("transformer", "sparse_transformer", "wavenet", "pixelcnn", "made", "lstm", "histogram", "ngram")
# Fields format 1 added after priors were first saved: left out of the fingerprint at these defaults.
LATER_FIELDS = {"num_codebooks": 1, "codebook_pattern": "flatten", "made_ensemble": 1,
                "made_connectivity_agnostic": False, "made_num_masks": 0, "output": "softmax", "logistic_mixtures": 5}


class PriorV1(LegacyFormat):
    fields = V1_FIELDS

    def upgrade(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Format 1's ``__post_init__`` normalisations and its derived stride."""
        d = dict(flat)
        d["shape"] = tuple(int(s) for s in d["shape"])
        d["made_hidden"] = tuple(int(s) for s in d["made_hidden"])
        if d["stride"] is None:
            shape = d["shape"]
            d["stride"] = math.prod(shape[1:]) if len(shape) >= 2 else max(1, math.isqrt(math.prod(shape)))
        return d

    def representable(self, config: Any) -> bool:
        return config.arch in V1_ARCHS

    def identity(self, flat: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flat.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


PRIOR_V1 = PriorV1()
