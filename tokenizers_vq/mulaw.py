"""mu-law companding (ITU-T G.711), via torchaudio, with range checking torchaudio leaves out."""

from __future__ import annotations

import torch
import torchaudio.functional as AF
from torch import Tensor


def finite_range(x: Tensor) -> tuple[bool, float, float] | None:
    """(all values finite, min, max) of a float tensor with one host sync, or None for an empty tensor and
    inside a torch.compile graph, where reading a value would break the graph (compiled training relies on
    the data layer's validation). Shared by ``mu_law_encode`` and the tokenizer's input check."""
    if not x.numel() or torch.compiler.is_compiling():
        return None
    finite, lo, hi = torch.stack([torch.isfinite(x).all().to(x.dtype), x.min(), x.max()]).tolist()
    return bool(finite), lo, hi


def check_range(x: Tensor, lo: float, hi: float, what: str, hint: str) -> None:
    """Raise ``ValueError`` ("{what} contains NaN or inf" / "{what} must lie in [lo, hi], got [min, max]; {hint}")
    unless every value of ``x`` is finite and in [lo, hi]: one host sync, skipped inside torch.compile."""
    checked = finite_range(x)
    if checked is None:
        return
    finite, mn, mx = checked
    if not finite:
        raise ValueError(f"{what} contains NaN or inf values")
    if mn < lo or mx > hi:
        raise ValueError(f"{what} must lie in [{lo:g}, {hi:g}], got range [{mn:.4g}, {mx:.4g}]; {hint}")


def mu_law_encode(x: Tensor, quantization_channels: int = 256) -> Tensor:
    """Waveform float [...] in [-1, 1] -> int64 codes [...] in [0, quantization_channels).

    Identical to ``torchaudio.functional.mu_law_encoding`` on [-1, 1]. Raises ``ValueError`` for samples
    outside [-1, 1], NaN or inf: torchaudio would silently return out-of-range codes (1.5 -> 264).
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"mu_law_encode expects a float waveform, got dtype {x.dtype}")
    check_range(x, -1.0, 1.0, "mu_law_encode: the waveform", "peak-normalise or clip the waveform first")
    return AF.mu_law_encoding(x, quantization_channels).long()


def mu_law_decode(q: Tensor, quantization_channels: int = 256) -> Tensor:
    """int codes [...] in [0, quantization_channels) -> float32 waveform [...] in [-1, 1].

    Identical to ``torchaudio.functional.mu_law_decoding``; out-of-range codes are a ``ValueError`` (not checked
    inside a torch.compile / torch.export graph, which cannot read a value: the spectral codec's exported encoder
    decodes its own in-range codes).
    """
    if q.numel() and not torch.compiler.is_compiling() and (q.min().item() < 0 or q.max().item() >= quantization_channels):
        raise ValueError(
            f"mu_law_decode: codes must lie in [0, {quantization_channels}), got range "
            f"[{q.min().item()}, {q.max().item()}]"
        )
    return AF.mu_law_decoding(q, quantization_channels).float()
