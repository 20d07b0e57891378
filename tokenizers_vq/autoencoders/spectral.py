"""Spectral audio autoencoder (``audio_head="istft"``): waveform [B, T] -> tokens at a frame rate -> waveform.

Built for what a listener hears at low bitrates, after Vocos (Siuzdak 2023) and the codecs that spend their
bits on coarse frames with several residual codebooks (SoundStream, EnCodec, DAC):

* **encoder**: the input is mu-law companded to ``mu_law_channels`` classes (as in the VQ-VAE paper) and
  expanded again, so the encoder sees exactly the 8-bit mu-law signal; one STFT frame per token (hop =
  ``downsample`` samples, window ``4 * hop``) gives log-magnitude and power-law-compressed real/imaginary parts
  (phase kept, so a waveform loss can align it), then ConvNeXt blocks at the frame rate.
* **decoder**: ConvNeXt blocks at the frame rate predict each frame's log-magnitude and phase; an inverse STFT
  ("same" padding, windowed overlap-add) synthesises the waveform. All layers run at the frame rate (50 Hz at
  16 kHz / hop 320), ~300x fewer positions than a sample-rate decoder, which is what makes a speech codec
  trainable on two CPU cores.
* **losses**: multi-resolution log-mel L1 and log-STFT-magnitude L1 (what intelligibility depends on), plus a
  small waveform L1 that aligns the phase (SI-SNR) where the signal is predictable, e.g. tones.

Every layer is local in time (per-frame LayerNorm, kernel-7 depthwise convs), so a token depends on a finite
window and chunked encode/decode with ``overlap`` frames of context equals a one-piece run.

``causal=True`` (issue 24) pads every convolution on the left only and frames the STFT so that a frame ends with its
hop: a token depends on no later sample, and ``stream_encoder()`` / ``stream_decoder()`` (``spectral_stream.py``) code
audio in chunks of any size, carrying each convolution's last inputs and the overlap-add tail between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen_io.components import ADDED_LATER

from ..audio_dsp import chunked, multires_spectral_l1
from ..metrics import si_snr
from ..mulaw import mu_law_decode, mu_law_encode
from ..quantizers import build_quantizer
from ..registry import AUTOENCODERS
from ..types import TokenizerOutput
from .audio_config import AudioFamilyConfig

if TYPE_CHECKING:
    from ..config import TokenizerConfig

KERNEL = 7  # depthwise kernel of each ConvNeXt block (Vocos, ConvNeXt)
WINDOW_HOPS = 4  # STFT window = 4 hops (75% overlap), as Vocos
CAUSAL_ENV_FLOOR = 1e-2  # (FrameSTFT.env_floor) the summed squared Hann window is 1.5 where 4 frames overlap


def conv_step(conv: nn.Conv1d, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """A causal (unpadded) conv on ``x`` [B, C, n] after ``state`` [B, C, k - 1], its last k - 1 input frames
    (zeros at the start): ([B, C', n], the new state). Offline and streaming both run this, so they agree."""
    k = conv.kernel_size[0]
    xin = torch.cat([state, x], dim=2) if k > 1 else x
    y = conv(xin) if torch.is_grad_enabled() else _conv_taps(conv, xin)
    return y, xin[:, :, xin.shape[2] - (k - 1):]


def _conv_taps(conv: nn.Conv1d, xin: Tensor) -> Tensor:
    """``conv(xin)`` (unpadded, stride 1) as a sum over its k taps: [B, C, n + k - 1] -> [B, C', n]. Without grad
    (encode, decode, streams), where a call holds a frame or a few: oneDNN's conv1d costs ~75 us a call on one
    frame, this ~10 us (depthwise) and a plain matrix product (dense)."""
    k, w, b = conv.kernel_size[0], conv.weight, conv.bias
    if conv.stride[0] != 1 or conv.dilation[0] != 1 or b is None:
        return conv(xin)
    taps = xin.unfold(2, k, 1)  # [B, C, n, k]: frame t's window
    if conv.groups == conv.in_channels == conv.out_channels:  # depthwise: one filter per channel
        return (taps * w[:, 0][None, :, None]).sum(-1) + b[:, None]
    if conv.groups == 1:  # dense: (C * k) -> C' per frame
        return F.linear(taps.permute(0, 2, 1, 3).flatten(2), w.flatten(1), b).transpose(1, 2)
    return conv(xin)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k=7) -> per-frame LayerNorm -> pointwise MLP (x3) -> layer scale, residual.
    [B, C, L] -> [B, C, L] (Liu et al. 2022; Vocos's backbone block). ``causal``: the conv sees frames
    t-6..t (left padding only) and ``step`` carries its last 6 input frames between calls."""

    def __init__(self, dim: int, layer_scale: float = 1 / 8, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.dw = nn.Conv1d(dim, dim, KERNEL, padding=0 if causal else KERNEL // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 3 * dim)
        self.down = nn.Linear(3 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        if self.causal:
            return self.step(x, x.new_zeros(x.shape[0], x.shape[1], KERNEL - 1))[0]
        return self._pointwise(x, self.dw(x))

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Causal blocks: ``x`` [B, C, n] after ``state`` [B, C, 6] -> ([B, C, n], the new state)."""
        y, state = conv_step(self.dw, x, state)
        return self._pointwise(x, y), state

    def _pointwise(self, x: Tensor, y: Tensor) -> Tensor:
        y = self.down(F.gelu(self.up(self.norm(y.transpose(1, 2)))))
        return x + (self.gamma * y).transpose(1, 2)


class FrameStack(nn.Module):
    """Conv in (k=``in_kernel``) -> ``layers`` ConvNeXt blocks -> LayerNorm -> linear out. [B, cin, L] -> [B, cout, L].
    ``causal``: every conv padded on the left only; ``step`` runs new frames after a carried state."""

    def __init__(self, cin: int, dim: int, cout: int, layers: int, in_kernel: int = KERNEL, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.inp = nn.Conv1d(cin, dim, in_kernel, padding=0 if causal else in_kernel // 2)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, causal=causal) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, cout)

    def forward(self, x: Tensor) -> Tensor:
        if self.causal:
            return self.step(x, self.initial_state(x))[0]
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self._out(x)

    def initial_state(self, x: Tensor) -> list[Tensor]:
        """Zero history for a causal stack fed ``x`` [B, cin, n]: the input conv's, then each block's."""
        b, dim = x.shape[0], self.inp.out_channels
        return [x.new_zeros(b, x.shape[1], self.inp.kernel_size[0] - 1),
                *(x.new_zeros(b, dim, KERNEL - 1) for _ in self.blocks)]

    def step(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Causal stacks: frames ``x`` [B, cin, n] after ``state`` -> ([B, cout, n], the new state)."""
        h, s0 = conv_step(self.inp, x, state[0])
        new = [s0]
        for b, s in zip(self.blocks, state[1:]):
            h, s = b.step(h, s)
            new.append(s)
        return self._out(h), new

    def _out(self, x: Tensor) -> Tensor:
        return self.out(self.norm(x.transpose(1, 2))).transpose(1, 2)

    @property
    def reach(self) -> int:
        """Frames of context that one output frame depends on: either side, or (causal) to the left only."""
        k = self.inp.kernel_size[0]
        if self.causal:
            return k - 1 + (KERNEL - 1) * len(self.blocks)
        return k // 2 + (KERNEL // 2) * len(self.blocks)


class FrameSTFT(nn.Module):
    """One complex STFT frame per hop, centred on each hop's samples ("same" padding), and its inverse.
    ``causal``: each frame ends with its hop (the window looks back ``window_hops`` hops, 4 by default, never ahead),
    so a sample is final once the window_hops - 1 frames after its own are added (``OverlapAdd`` streams this).

    ``analyse``: float [B, T] (T a multiple of hop) -> complex [B, n_fft/2 + 1, T/hop].
    ``synthesise``: complex [B, n_fft/2 + 1, L] -> float [B, L * hop], windowed overlap-add normalised by the
    summed squared window, so ``synthesise(analyse(x)) == x`` up to float error (causal: but for the last 32 samples
    at a 320-sample window, where the summed window is below ``env_floor``, which fade out).
    """

    def __init__(self, hop: int, causal: bool = False, window_hops: int = WINDOW_HOPS):
        super().__init__()
        self.hop = hop
        self.window_hops = int(window_hops)
        self.n_fft = self.window_hops * hop
        self.pad = self.n_fft - hop if causal else (self.n_fft - hop) // 2  # samples of window before the hop
        # Divide by at least this window sum. Causal: the last samples of a clip lie under the tail of one window
        # only, where w^2 -> 0 and y / w^2 is rounding noise, so they fade out instead (the last 10% of a window: 32 samples, 2 ms at 16 kHz).
        self.env_floor = CAUSAL_ENV_FLOOR if causal else 1e-8
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def analyse(self, x: Tensor) -> Tensor:
        return self.frames(F.pad(x, (self.pad, self.n_fft - self.hop - self.pad)))

    def frames(self, x: Tensor) -> Tensor:
        """Unpadded framing: float [B, n_fft - hop + n * hop] -> complex [B, n_fft / 2 + 1, n]."""
        return torch.stft(x, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)

    def synthesise(self, spec: Tensor) -> Tensor:
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[None, :, None]  # [B, n_fft, L]
        length = self.n_fft + (spec.shape[-1] - 1) * self.hop
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        y = F.fold(frames, **fold)[:, 0, 0]
        env = F.fold((self.window**2)[None, :, None].expand(1, -1, spec.shape[-1]), **fold)[:, 0, 0]
        start = self.pad
        end = start + spec.shape[-1] * self.hop
        return y[:, start:end] / env[:, start:end].clamp(min=self.env_floor)


@dataclass
class SpectralConfig(AudioFamilyConfig):
    """STFT features in, ConvNeXt stacks at the token rate, inverse-STFT synthesis (see the module docstring)."""

    audio_head: str = "istft"  # istft: this family (--audio-head istft chooses it; format 1 named it so)
    causal: bool = field(default=False, metadata={**ADDED_LATER, "strict": True})  # no lookahead: left-padded convs and an STFT window that ends with its frame, so stream_encoder() / stream_decoder() code audio chunk by chunk (latency: one token plus 3 STFT hops, 35 ms at 16 kHz)
    waveform_loss_weight: float = 1.0  # weight of the L1 between the decoded and the input waveform
    downsample: int | None = None  # the token hop in samples (default: sample_rate / 50, 50 tokens/s); any multiple of istft_upsample
    stft_loss_weight: float = 1.0  # weight of the multi-resolution log-STFT-magnitude L1
    istft_dim: int = 256  # width of the frame-rate ConvNeXt stacks
    istft_layers: int = 6  # ConvNeXt blocks in the encoder and in the decoder
    istft_upsample: int = 4  # STFT frames per token (hop 320 -> STFT hop 80, window 320 at 16 kHz)
    harmonics: int = field(default=0, metadata=ADDED_LATER)  # experimental, non-causal: > 0 adds a harmonic source of this many harmonics at a decoded pitch (harmonic.py; real 8 kHz speech, 10 min: STOI 0.789 / 0.775 against 0.804 / 0.808 without); 0: the inverse STFT alone
    f0_loss_weight: float = field(default=1.0, metadata=ADDED_LATER)  # weight of the pitch loss (L1 in octaves against YIN on voiced frames) when harmonics > 0
    istft_window_hops: int = field(default=WINDOW_HOPS, metadata=ADDED_LATER)  # synthesis and analysis window in STFT hops (4: 75% overlap, as Vocos; 8 at 8 kHz, 40 ms: STOI 0.784 / 0.786 against 0.804 / 0.808 on real speech)

    def finalize(self, parent: Any) -> None:
        if self.audio_head != "istft":
            raise ValueError(f"audio_head {self.audio_head!r} is a mu-law head: drop --autoencoder spectral (or use "
                             "--autoencoder mulaw)")
        if self.downsample is None:
            self.downsample = parent.sample_rate // 50  # one STFT frame per token at 50 Hz
        self.downsample = int(self.downsample)
        if self.downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {self.downsample}")
        if self.harmonics < 0:
            raise ValueError(f"harmonics must be >= 0, got {self.harmonics}")
        if self.harmonics and self.causal:
            raise ValueError("harmonics > 0 needs a non-causal codec: the harmonic source does not stream yet")
        if self.istft_window_hops < 2:
            raise ValueError(f"istft_window_hops must be >= 2 (frames must overlap), got {self.istft_window_hops}")
        if self.istft_upsample < 1 or self.downsample % self.istft_upsample:
            raise ValueError(f"downsample {self.downsample} is not a multiple of istft_upsample {self.istft_upsample}")
        self.check_downsample(parent, self.downsample)


@AUTOENCODERS.register("spectral", config=SpectralConfig)
class SpectralAudioAutoencoder(nn.Module):
    """Waveform float32 [B, T] in [-1, 1] (T a multiple of ``downsample``) <-> tokens [B, T / downsample(, q)].

    ``config.downsample`` is the token hop (any positive integer: 320 gives 50 tokens/s at 16 kHz), a multiple of
    ``istft_upsample`` (STFT frames per token: the STFT hop is downsample / istft_upsample, its window 4 hops);
    ``istft_dim`` / ``istft_layers`` size the encoder and decoder stacks.
    """

    modality = "audio"
    # Without --quantizer: the shipped spoken-digits tokenizer's bottleneck (recipes/speech/spectral_rvq13.yaml cut
    # to 5 codebooks, 2.25 kbit/s at 16 kHz): residual codebooks of 512 codes, dead codes replaced early.
    default_quantizer = ("rvq", {"num_quantizers": 5, "codebook_size": 512, "dead_code_threshold": 0.1})
    # Without --lr (train-tokenizer's default is 2e-3): 1e-3, as every speech recipe. 10 minutes on real 8 kHz speech,
    # two seeds: STOI 0.811 / 0.812 against 0.798 / 0.803 at 2e-3; spoken digits at 10 minutes: 0.799 against 0.776.
    default_lr = 1e-3
    # With --mixed-precision auto on a CPU with bf16 in hardware (AVX-512 BF16, AMX): bf16 autocast. Real 8 kHz speech,
    # 10 minutes, one thread, AMD EPYC: 1.38x the steps (857 against 622 in 150 s), STOI 0.815 / 0.810 against
    # 0.804 / 0.808 in fp32 (seeds 0 / 1); the shipped spoken-digits tokenizer was trained in bf16.
    cpu_bf16 = True

    @staticmethod
    def train_crop_samples(config: TokenizerConfig) -> int:
        """Training window when none is given: 20 tokens (0.4 s at 16 kHz): frame-rate layers are cheap and the
        80 ms STFT window wants frames of context."""
        return 20 * config.downsample

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.hop = int(config.downsample)
        self.sub = int(config.istft_upsample)  # STFT frames per token: analysis and synthesis at hop / sub
        self.causal = bool(config.causal)
        self.stft = FrameSTFT(self.hop // self.sub, causal=self.causal, window_hops=config.istft_window_hops)
        bins = self.stft.n_fft // 2 + 1
        self.bins = bins
        self.quantizer = build_quantizer(config)
        dim, layers = config.istft_dim, config.istft_layers
        fine = max(16, dim // 2)
        self.fine_dim = fine
        # Kernel 1 on the spectral channels: each token frame already stacks ``sub`` STFT frames of 4 hops each.
        self.encoder = FrameStack(3 * bins * self.sub, dim, self.quantizer.in_dim, layers, in_kernel=1,
                                  causal=self.causal)
        self.latent_norm = nn.LayerNorm(self.quantizer.in_dim) if self.quantizer.normalize_input else None
        # Token-rate stack, then ``sub`` finer frames per token (depth-to-space) refined at the STFT frame rate:
        # a short synthesis window keeps onsets and envelopes sharp, which intelligibility (STOI) depends on.
        self.decoder = FrameStack(self.quantizer.out_dim, dim, fine * self.sub, layers, causal=self.causal)
        self.harmonics = int(config.harmonics)  # per STFT frame: pitch logit, gain logit, one logit per harmonic
        self.refine = FrameStack(fine, fine, 2 * bins + (2 + self.harmonics if self.harmonics else 0), 2,
                                 causal=self.causal)
        # Context for chunked coding, in tokens: the stacks' reach plus the STFT window's neighbouring frames.
        self.overlap = (self.encoder.reach + self.decoder.reach + -(-self.refine.reach // self.sub)
                        + max(WINDOW_HOPS, self.stft.window_hops))
        sr = config.sample_rate
        # Loss resolutions from 16 to 128 ms windows at 16 kHz (short ones keep onsets, long ones harmonics).
        self.loss_ffts = [max(64, n * sr // 16000 // 2 * 2) for n in (256, 512, 1024, 2048)]

    # ------------------------------------------------------------------ interface
    @property
    def frame_rate(self) -> float:
        """Tokens per second (50 at 16 kHz and hop 320)."""
        return self.config.sample_rate / self.hop

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(T,) -> (T // hop,)."""
        return (int(input_shape[-1]) // self.hop,)

    def _check_length(self, x: Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"audio autoencoder expects a waveform [B, T], got shape {tuple(x.shape)}")
        if x.shape[1] % self.hop:
            raise ValueError(
                f"audio length {x.shape[1]} is not a multiple of downsample={self.hop}: pad with zeros, e.g. "
                f"torch.nn.functional.pad(x, (0, {(-x.shape[1]) % self.hop})), or crop to "
                f"{x.shape[1] // self.hop * self.hop} samples")

    def _features(self, x: Tensor) -> Tensor:
        """x float [B, T] -> encoder input float32 [B, 3 * bins, T / hop]: the mu-law-companded signal, expanded,
        as log-magnitude and |S|^0.3-compressed real/imaginary parts."""
        return self._spec_features(self.stft.analyse(self.companded(x)))

    def companded(self, x: Tensor) -> Tensor:
        """x float [B, T] -> float32 [B, T]: the ``mu_law_channels``-level mu-law signal the encoder sees."""
        return mu_law_decode(mu_law_encode(x, self.config.mu_law_channels), self.config.mu_law_channels).float()

    def _spec_features(self, spec: Tensor) -> Tensor:
        """STFT frames complex [B, bins, n * sub] -> encoder input float32 [B, 3 * bins * sub, n]."""
        mag = spec.abs()
        comp = spec * (mag.clamp(min=1e-7) ** -0.7)  # |S|^0.3 e^{i phase}
        feats = torch.cat([torch.log(mag + 1e-5), comp.real, comp.imag], dim=1)
        b, c, n = feats.shape  # space-to-depth: the ``sub`` frames of a token side by side as channels
        return feats.view(b, c, n // self.sub, self.sub).permute(0, 1, 3, 2).reshape(b, c * self.sub, n // self.sub)

    def _encode_latent(self, x: Tensor) -> Tensor:
        z = self.encoder(self._features(x))
        if self.latent_norm is not None:  # bounded latents keep FSQ's tanh and VQ's distances well-scaled
            z = self.latent_norm(z.transpose(1, 2)).transpose(1, 2)
        return z

    def _synthesise(self, latent: Tensor) -> Tensor:
        """Quantized latent [B, D, L] -> waveform float32 [B, L * hop] (unclamped)."""
        return self._waveform(self._frames_out(latent))[0]

    def _frames_out(self, latent: Tensor) -> Tensor:
        """Quantized latent [B, D, L] -> refine's output [B, 2 * bins (+ 2 + harmonics), L * sub] at the STFT rate."""
        return self.refine(self._depth_to_space(self.decoder(latent)))  # decoder: [B, fine * sub, L]

    def _waveform(self, out: Tensor, teacher: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """refine's output -> (waveform float32 [B, L * hop], the predicted pitch in Hz [B, L * sub] or None): the
        inverse STFT, plus the harmonic source when ``harmonics`` > 0, at the predicted pitch (read without gradient)
        or, where ``teacher`` = (pitch Hz, voiced 0/1, both [B, L * sub]) says voiced, at the teacher's pitch."""
        y = self.stft.synthesise(self._spectrum(out))
        if not self.harmonics:
            return y, None
        from .harmonic import f0_from_logit, harmonic_amplitudes, harmonic_source

        extra = out[:, 2 * self.bins:].float()  # fp32 under bf16 autocast: a bf16 pitch is 0.03-0.06 octave coarse
        f0 = f0_from_logit(extra[:, 0])
        amps = harmonic_amplitudes(extra[:, 1], extra[:, 2:])
        source = f0.detach() if teacher is None else torch.where(teacher[1] > 0, teacher[0], f0.detach())
        return y + harmonic_source(source, amps, self.stft.hop, self.config.sample_rate), f0

    def _depth_to_space(self, h: Tensor) -> Tensor:
        """Decoder output [B, fine * sub, L] -> the STFT-rate frames [B, fine, L * sub] refine reads."""
        b, _, n = h.shape
        return h.view(b, self.fine_dim, self.sub, n).permute(0, 1, 3, 2).reshape(b, self.fine_dim, n * self.sub)

    def _spectrum(self, out: Tensor) -> Tensor:
        """refine's output [B, 2 * bins, n] (log-magnitude, phase) -> complex STFT frames [B, bins, n]."""
        log_mag, phase = out[:, :self.bins], out[:, self.bins:2 * self.bins]
        mag = torch.exp(log_mag.clamp(max=6.0))  # exp(6) ~ 400: beyond any real frame, and no overflow early on
        return torch.polar(mag, phase)

    # ------------------------------------------------------------------ streaming (causal models)
    @property
    def latency_ms(self) -> float:
        """Algorithmic latency of a causal model in ms: a token's samples, plus the window_hops - 1 STFT hops of
        synthesis window that overlap the next frames (35 ms at 16 kHz, hop 320, window 4 hops); ``inf`` for a
        non-causal model (whole clips)."""
        if not self.causal:
            return math.inf
        return 1000.0 * (self.hop + (self.stft.window_hops - 1) * self.stft.hop) / self.config.sample_rate

    def stream_encoder(self, n_quantizers: int | None = None) -> Any:
        from .spectral_stream import StreamEncoder

        return StreamEncoder(self, n_quantizers)

    def stream_decoder(self, check_tokens: Any = None) -> Any:
        from .spectral_stream import StreamDecoder

        return StreamDecoder(self, check_tokens)

    def _encode_piece(self, x: Tensor, n_quantizers: int | None = None) -> Tensor:
        return self.quantizer.codes(self._encode_latent(x), n_quantizers)

    def _decode_piece(self, codes: Tensor) -> Tensor:
        return self._synthesise(self.quantizer.codes_to_latent(codes)).clamp(-1.0, 1.0)

    def encode(self, x: Tensor, chunk_tokens: int | None = None, n_quantizers: int | None = None) -> Tensor:
        """x float32 [B, T] in [-1, 1] -> codes int64 [B, T / hop] (residual quantizers: [B, T / hop, q]).

        Long inputs are encoded ``chunk_tokens`` frames at a time with ``overlap`` frames of context either side;
        the tokens equal a one-piece encode.
        """
        self._check_length(x)
        t = x.shape[1] // self.hop
        chunk = self.config.chunk_tokens if chunk_tokens is None else chunk_tokens
        if chunk <= 0 or t <= chunk:
            return self._encode_piece(x, n_quantizers)
        return chunked(lambda lo, hi: self._encode_piece(x[:, lo * self.hop:hi * self.hop], n_quantizers),
                       t, chunk, self.overlap, 1)

    def decode(self, codes: Tensor, chunk_tokens: int | None = None) -> Tensor:
        """codes int64 [B, t] (or [B, t, q]) -> waveform float32 [B, t * hop] in [-1, 1]. Chunked like ``encode``."""
        t = codes.shape[1]
        chunk = self.config.chunk_tokens if chunk_tokens is None else chunk_tokens
        if self.harmonics:  # the harmonic source's phase runs through the whole clip: frames in chunks, one synthesis
            def frames(lo: int, hi: int) -> Tensor:
                return self._frames_out(self.quantizer.codes_to_latent(codes[:, lo:hi])).transpose(1, 2)

            out = frames(0, t) if chunk <= 0 or t <= chunk else chunked(frames, t, chunk, self.overlap, self.sub)
            return self._waveform(out.transpose(1, 2))[0].clamp(-1.0, 1.0)
        if chunk <= 0 or t <= chunk:
            return self._decode_piece(codes)
        return chunked(lambda lo, hi: self._decode_piece(codes[:, lo:hi]), t, chunk, self.overlap, self.hop)

    # ------------------------------------------------------------------ training
    def spectral_losses(self, est: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        """(multi-resolution log-mel L1, multi-resolution log-STFT-magnitude L1), each a mean over the resolutions
        that fit in T. est, ref: float [B, T]."""
        return multires_spectral_l1(est, ref, self.config.sample_rate, self.loss_ffts)

    def forward(self, x: Tensor) -> TokenizerOutput:
        """x float32 [B, T] in [-1, 1] -> TokenizerOutput(recon float32 [B, T], codes, loss, metrics).

        loss = mel_loss_weight * log-mel L1 + stft_loss_weight * log-magnitude L1
        + waveform_loss_weight * L1(recon, x) + quantizer loss.
        """
        self._check_length(x)
        q = self.quantizer(self._encode_latent(x))
        c = self.config
        if self.harmonics:  # the pitch target, YIN on the input; in training the source plays it where voiced
            from .harmonic import track_f0

            target, voiced = track_f0(x, c.sample_rate, self.stft.hop)
            # evaluation decodes at the predicted pitch, as decode() does: no pitch that did not pass the tokens
            recon, f0 = self._waveform(self._frames_out(q.quantized), (target, voiced) if self.training else None)
        else:
            recon, f0 = self._waveform(self._frames_out(q.quantized))
        mel, mag = self.spectral_losses(recon, x)
        wave = (recon - x).abs().mean()
        loss = c.mel_loss_weight * mel + c.stft_loss_weight * mag + c.waveform_loss_weight * wave + q.loss
        metrics = {"mel_l1": mel.detach(), "stft_l1": mag.detach(), "wave_l1": wave.detach(),
                   "si_snr": si_snr(recon.detach().clamp(-1, 1), x), **q.metrics}
        if f0 is not None:  # the predicted pitch against YIN's, voiced frames only
            err = (torch.log2(f0) - torch.log2(target)).abs()
            f0_l1 = (err * voiced).sum() / voiced.sum().clamp(min=1.0)
            loss = loss + c.f0_loss_weight * f0_l1
            metrics |= {"f0_l1_octaves": f0_l1.detach(), "voiced": voiced.mean()}
        return TokenizerOutput(recon=recon.clamp(-1.0, 1.0), codes=q.codes, loss=loss, metrics=metrics)
