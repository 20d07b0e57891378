"""Audio autoencoder: waveform [B, T] in [-1, 1] -> tokens [B, T/d] -> waveform [B, T] in [-1, 1].

The layout follows the VQ-VAE audio model (van den Oord et al. 2017, §4.3): a strided 1-D conv encoder
over the mu-law-companded signal and a decoder that predicts a categorical distribution over the
``mu_law_channels`` mu-law classes of every sample, trained with cross-entropy. Their decoder is an
autoregressive WaveNet; ours is a parallel transposed-conv decoder (SoundStream, Zeghidour et al. 2021,
§3.1-3.2: strided convs, dilated residual units, ELU), which is ~1000x faster to decode and keeps the model
fully convolutional. The distribution is a discretised logistic mixture over the mu-law bins by default
(``audio_head``; see ``audio_heads``), or free logits per class as in the paper. Because a parallel decoder
predicts each sample independently, cross-entropy alone blurs the waveform into per-sample guesses; a
multi-resolution log-mel L1 on the decoded waveform (Défossez et al. 2022, §3.4; Kumar et al. 2019) restores
the spectral envelope, and a waveform L1 aligns the phase.

No GroupNorm/BatchNorm anywhere: statistics over the time axis would make a token depend on the whole
clip, and chunked encoding (bounded memory for long inputs) could then never equal a one-piece encode.
The only normalisation is a LayerNorm over the channels of each latent frame (fsq, vq). With local layers only, every
token depends on a finite window of samples (``receptive_field``), and chunks with that much context either
side give exactly the one-piece tokens.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..audio_dsp import chunked, multires_log_mel_l1
from ..audio_heads import MU_LAW_HEADS, build_head
from ..metrics import mu_law_accuracy, si_snr
from ..mulaw import mu_law_decode, mu_law_encode
from ..quantizers import build_quantizer
from ..registry import AUTOENCODERS
from ..types import TokenizerOutput
from .audio_config import AudioFamilyConfig, check_power_of_two

if TYPE_CHECKING:
    from ..config import TokenizerConfig

MAX_CHANNEL_MULT = 8  # widest stage = 8 x hidden_channels (SoundStream doubles per stage, we cap it)


def stage_strides(downsample: int) -> list[int]:
    """Per-stage strides whose product is ``downsample`` (a power of two): stride-4 stages, plus one
    stride-2 stage first when log2(downsample) is odd. 64 -> [4, 4, 4]; 32 -> [2, 4, 4]; 1 -> []."""
    levels = int(math.log2(downsample))
    return ([2] if levels % 2 else []) + [4] * (levels // 2)


class ResidualUnit(nn.Module):
    """x + conv1x1(elu(dilated_conv(elu(x)))): SoundStream's residual unit (Zeghidour et al. 2021, §3.1),
    kernel 3 instead of 7 to keep the receptive field (and so the chunk overlap) small. [B, C, L] -> same."""

    def __init__(self, channels: int, dilation: int, kernel: int = 3):
        super().__init__()
        self.dilated = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        self.pointwise = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pointwise(F.elu(self.dilated(F.elu(x))))


def _down(cin: int, cout: int, stride: int) -> nn.Conv1d:
    # kernel 2s, padding s/2: output length is exactly L / s, and frame j is centred on samples [j*s, (j+1)*s).
    return nn.Conv1d(cin, cout, 2 * stride, stride=stride, padding=stride // 2)


def _up(cin: int, cout: int, stride: int) -> nn.ConvTranspose1d:
    # The transpose of ``_down``: output length exactly L * s.
    return nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=stride // 2)


class _Elu(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each frame: [B, C, L] -> [B, C, L]. Per frame, so it keeps the model
    local in time (chunked encoding still equals one-piece encoding)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class AudioEncoder(nn.Sequential):
    """float32 [B, 1, T] (companded signal in [-1, 1]) -> float32 [B, out_dim, T / prod(strides)].

    With ``normalize`` (fsq and vq) the output is layer-normalised per frame. Without it the residual stack's
    output grew without bound within ~100 steps (std 1 -> 4,000 on ``tones``, lr 5e-3): FSQ's tanh then
    saturates, every frame gets the same code, and no gradient comes back (codebook usage 0.1%).
    """

    def __init__(self, out_dim: int, hidden: int, strides: list[int], res_blocks: int, latent_blocks: int,
                 normalize: bool = True):
        chans = [hidden * min(2**i, MAX_CHANNEL_MULT) for i in range(len(strides) + 1)]
        layers: list[nn.Module] = [nn.Conv1d(1, chans[0], 7, padding=3)]
        for i, s in enumerate(strides):
            # dilations 1, 3, 9, ...: SoundStream's pattern, growing the context geometrically per unit.
            layers += [ResidualUnit(chans[i], 3**j) for j in range(res_blocks)]
            layers += [_Elu(), _down(chans[i], chans[i + 1], s)]
        layers += [ResidualUnit(chans[-1], 3**j) for j in range(latent_blocks)]
        layers += [_Elu(), nn.Conv1d(chans[-1], out_dim, 3, padding=1)]
        if normalize:
            layers.append(ChannelLayerNorm(out_dim))
        super().__init__(*layers)


class AudioDecoder(nn.Sequential):
    """float32 [B, in_dim, t] -> float32 [B, out_channels, t * prod(strides)]: the output head's parameters."""

    def __init__(self, in_dim: int, out_channels: int, hidden: int, strides: list[int], res_blocks: int,
                 latent_blocks: int):
        chans = [hidden * min(2**i, MAX_CHANNEL_MULT) for i in range(len(strides) + 1)]
        layers: list[nn.Module] = [nn.Conv1d(in_dim, chans[-1], 3, padding=1)]
        layers += [ResidualUnit(chans[-1], 3**j) for j in range(latent_blocks)]
        for i in reversed(range(len(strides))):
            layers += [_Elu(), _up(chans[i + 1], chans[i], strides[i])]
            layers += [ResidualUnit(chans[i], 3**j) for j in range(res_blocks)]
        layers += [_Elu(), nn.Conv1d(chans[0], out_channels, 1)]
        super().__init__(*layers)


def _convs(module: nn.Module) -> list[nn.Module]:
    """The conv layers of a sequential stack, in execution order (a residual branch's convs in place:
    the identity path never reaches further than the branch, so the branch sets the reach)."""
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


def encoder_receptive_field(encoder: nn.Module) -> int:
    """Input samples that one output frame of ``encoder`` can see (the usual rf = 1 + sum (k-1) d j)."""
    rf, jump = 1, 1
    for m in _convs(encoder):
        rf += (m.kernel_size[0] - 1) * m.dilation[0] * jump
        jump *= m.stride[0]
    return rf


def decoder_receptive_field(decoder: nn.Module) -> float:
    """Latent frames that one output sample of ``decoder`` can see (a float: fine layers add fractions).

    A conv at a layer with ``u`` samples per frame widens the window by (k-1) d / u frames; a transposed
    conv with stride s and kernel k mixes ceil(k/s) neighbouring inputs, widening it by (ceil(k/s)-1) / u.
    """
    span, u = 1.0, 1
    for m in _convs(decoder):
        k, d, s = m.kernel_size[0], m.dilation[0], m.stride[0]
        if isinstance(m, nn.ConvTranspose1d):
            span += (math.ceil(k / s) - 1) / u
            u *= s
        else:
            span += (k - 1) * d / u
    return span


@dataclass
class MuLawConfig(AudioFamilyConfig):
    """Strided 1-D convolutions and a decoder that predicts every mu-law sample (see the module docstring)."""

    audio_head: str = "logistic"  # logistic (discretised logistic mixture over the mu-law classes) | categorical (the VQ-VAE paper's free logits; ~4x fewer steps per CPU-second) | istft (the spectral codec, another family)
    logistic_mixtures: int = 1  # mixture components per sample
    downsample: int = 64  # input-to-token factor (a power of two): 250 tokens/s at 16 kHz
    hidden_channels: int = 16  # width of the first conv stage
    num_res_blocks: int = 1  # residual units per stage
    latent_res_blocks: int = 3  # dilated residual units (1, 3, 9, ...) at the token rate

    def finalize(self, parent: Any) -> None:
        if self.audio_head not in MU_LAW_HEADS:
            raise ValueError(f"audio_head must be one of {(*MU_LAW_HEADS, 'istft')}, got {self.audio_head!r}")
        if self.logistic_mixtures < 1:
            raise ValueError(f"logistic_mixtures must be >= 1, got {self.logistic_mixtures}")
        self.downsample = check_power_of_two(self.downsample)
        self.check_downsample(parent, self.downsample)


@AUTOENCODERS.register("mulaw", config=MuLawConfig)
class AudioAutoencoder(nn.Module):
    """Encoder -> quantizer -> decoder over mu-law audio; see the module docstring.

    Input: float32 [B, T] in [-1, 1] at ``config.sample_rate``, T a multiple of ``config.downsample``.
    Tokens: int64 [B, T / downsample] ([B, T / downsample, q] for rvq / rfsq). Output: float32 [B, T] in [-1, 1].
    """

    modality = "audio"

    @staticmethod
    def train_crop_samples(config: TokenizerConfig) -> int:
        """Training window when none is given: 2048 samples (a sample-rate decoder makes every sample costly)."""
        return 2048

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.classes = config.mu_law_channels
        strides = stage_strides(config.downsample)
        self.quantizer = build_quantizer(config)
        self.head = build_head(config.audio_head, self.classes, config.logistic_mixtures)
        # A norm keeps FSQ/VQ encoder positions in range, but would pin gumbel's logits, whose scale is the codes'
        # confidence (it collapsed gumbel on spoken-digits: docs/DESIGN_NOTES.md).
        self.encoder = AudioEncoder(self.quantizer.in_dim, config.hidden_channels, strides, config.num_res_blocks,
                                    config.latent_res_blocks, normalize=self.quantizer.normalize_input)
        self.decoder = AudioDecoder(self.quantizer.out_dim, self.head.channels, config.hidden_channels, strides,
                                    config.num_res_blocks, config.latent_res_blocks)
        d = config.downsample
        # Context each side of a chunk that makes chunk edges invisible (half the window, rounded up, +1
        # frame for the centring offset of the strided convs). chunk_overlap_tokens is a floor, not a cap.
        self.encoder_context = math.ceil(encoder_receptive_field(self.encoder) / 2 / d) + 1
        self.decoder_context = math.ceil(decoder_receptive_field(self.decoder) / 2) + 1
        needed = max(self.encoder_context, self.decoder_context)
        if config.chunk_overlap_tokens < needed:
            warnings.warn(
                f"chunk_overlap_tokens={config.chunk_overlap_tokens} is less than this model's receptive field "
                f"needs ({needed} tokens each side); using {needed} so chunked encode/decode equals one-piece",
                stacklevel=2,
            )
        self.overlap = max(config.chunk_overlap_tokens, needed)
        # Multi-resolution STFT sizes (Défossez et al. 2022 §3.4 use 5 scales up to 2048 at 24 kHz; three
        # suffice for 1 s clips), scaled with the sample rate so each resolution covers the same milliseconds.
        scale = config.sample_rate / 16000
        self.mel_ffts = [2 ** max(6, round(math.log2(n * scale))) for n in (256, 512, 1024)]

    # ------------------------------------------------------------------ interface
    @property
    def frame_rate(self) -> float:
        """Tokens per second (250 at 16 kHz and downsample 64)."""
        return self.config.sample_rate / self.config.downsample

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(T,) -> (T // downsample,)."""
        return (int(input_shape[-1]) // self.config.downsample,)

    def _check_length(self, x: Tensor) -> None:
        d = self.config.downsample
        if x.dim() != 2:
            raise ValueError(f"audio autoencoder expects a waveform [B, T], got shape {tuple(x.shape)}")
        if x.shape[1] % d:
            raise ValueError(
                f"audio length {x.shape[1]} is not a multiple of downsample={d}: pad with zeros, e.g. "
                f"torch.nn.functional.pad(x, (0, {(-x.shape[1]) % d})), or crop to {x.shape[1] // d * d} samples"
            )

    def _companded(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x float [B, T] in [-1, 1] -> (mu-law codes int64 [B, T], encoder input float32 [B, 1, T] in [-1, 1])."""
        codes = mu_law_encode(x, self.classes)
        # The companded value, scaled back to [-1, 1]: what the VQ-VAE audio encoder sees (§4.3).
        return codes, (codes.float() * (2.0 / (self.classes - 1)) - 1.0)[:, None]

    def log_probs(self, out: Tensor) -> Tensor:
        """Decoder output [B, C, T] -> float32 [B, Q, T]: log-probability of every mu-law class per sample."""
        return self.head.log_probs(out)

    def expected_waveform(self, out: Tensor) -> Tensor:
        """Decoder output [B, C, T] -> float32 [B, T] in [-1, 1]: the head's smooth point estimate (categorical:
        E[value]; logistic: mixture of the components' medians), differentiable."""
        return self.head.mean_waveform(out)

    def argmax_waveform(self, out: Tensor) -> Tensor:
        """Decoder output [B, C, T] -> float32 [B, T] in [-1, 1]: the value of the most likely class."""
        return mu_law_decode(self.head.mode_codes(out), self.classes)

    def _encode_piece(self, x: Tensor) -> Tensor:
        return self.quantizer(self.encoder(self._companded(x)[1])).codes

    def _decode_piece(self, codes: Tensor, mode: str) -> Tensor:
        out = self.decoder(self.quantizer.codes_to_latent(codes))
        return self.expected_waveform(out) if mode == "mean" else self.argmax_waveform(out)

    def encode(self, x: Tensor, chunk_tokens: int | None = None) -> Tensor:
        """x float32 [B, T] in [-1, 1], T a multiple of downsample -> codes int64 [B, T / downsample] (rvq / rfsq:
        [B, T / downsample, q]; chunks are stitched along time, axis 1).

        Long inputs are encoded ``chunk_tokens`` tokens at a time (default ``config.chunk_tokens``; 0 = one
        piece) with ``self.overlap`` tokens of context either side, so memory is bounded by the chunk size
        and the tokens equal a one-piece encode.
        """
        self._check_length(x)
        d = self.config.downsample
        t = x.shape[1] // d
        chunk = self.config.chunk_tokens if chunk_tokens is None else chunk_tokens
        if chunk <= 0 or t <= chunk:
            return self._encode_piece(x)
        return chunked(lambda lo, hi: self._encode_piece(x[:, lo * d:hi * d]), t, chunk, self.overlap, 1)

    def decode(self, codes: Tensor, chunk_tokens: int | None = None, mode: str = "mean") -> Tensor:
        """codes int64 [B, t] (rvq / rfsq: [B, t, q'], q' <= q) -> waveform float32 [B, t * downsample] in [-1, 1].

        ``mode="mean"`` (default) returns the expected sample value under the predicted class distribution:
        the minimum-mean-square-error estimate, which is smooth where the decoder is unsure, whereas the
        argmax (``mode="argmax"``) jumps between neighbouring classes there and adds crackle; sampling would
        add white noise, since the parallel decoder treats samples as independent. Chunked like ``encode``.
        """
        if mode not in ("mean", "argmax"):
            raise ValueError(f"decode mode must be 'mean' or 'argmax', got {mode!r}")
        want = "[B, t, q]" if self.config.residual else "[B, t]"
        if codes.dim() != 2 + self.config.residual:
            raise ValueError(f"audio codes must be {want}, got shape {tuple(codes.shape)}")
        t = codes.shape[1]
        chunk = self.config.chunk_tokens if chunk_tokens is None else chunk_tokens
        if chunk <= 0 or t <= chunk:
            return self._decode_piece(codes, mode)
        return chunked(lambda lo, hi: self._decode_piece(codes[:, lo:hi], mode), t, chunk, self.overlap,
                             self.config.downsample)

    def mel_loss(self, est: Tensor, ref: Tensor) -> Tensor:
        """Multi-resolution log-mel L1 (nats), mean over the resolutions that fit in T. est, ref: [B, T]."""
        return multires_log_mel_l1(est, ref, self.config.sample_rate, self.mel_ffts)

    def forward(self, x: Tensor) -> TokenizerOutput:
        """x float32 [B, T] in [-1, 1] -> TokenizerOutput(recon float32 [B, T] in [-1, 1] (``decode``'s "mean"),
        codes int64 [B, T/d] (rvq / rfsq: [B, T/d, n], n < q under quantizer dropout), loss, metrics).

        loss = CE of the mu-law classes + mel_loss_weight * multi-resolution log-mel L1
        + waveform_loss_weight * L1(recon, x) + quantizer loss. The waveform term is what aligns the phase:
        CE in the companded domain weights quiet samples as much as loud ones, and the log-mel loss is
        phase-blind, so neither alone drives up SI-SNR, which is dominated by the loud parts.
        """
        self._check_length(x)
        target, inp = self._companded(x)
        q = self.quantizer(self.encoder(inp))
        out = self.decoder(q.quantized).float()  # (B, C, T); under bf16 autocast the head's mixture math stays fp32
        ce = self.head.nll(out, target)
        recon = self.expected_waveform(out)
        mel = self.mel_loss(recon, x)
        wave = (recon - x).abs().mean()
        loss = ce + self.config.mel_loss_weight * mel + self.config.waveform_loss_weight * wave + q.loss
        metrics = {
            "ce": ce.detach(),
            "mel_l1": mel.detach(),
            "wave_l1": wave.detach(),
            "mu_law_acc": mu_law_accuracy(self.head.mode_codes(out.detach()), target),
            "si_snr": si_snr(recon.detach(), x),
            **q.metrics,
        }
        return TokenizerOutput(recon=recon, codes=q.codes, loss=loss, metrics=metrics)
