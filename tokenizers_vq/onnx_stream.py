"""ONNX streaming steps of a causal spectral tokenizer (issue 24): ``encoder_step.onnx`` and ``decoder_step.onnx``
take a chunk and the state the previous call returned, and return what is ready and the new state, so a stream runs
in onnxruntime with numpy alone (``OnnxStream`` below is such a loop, and the export folder's README shows it).

encoder_step.onnx: ``x`` float32 [1, n * hop] in [-1, 1] (n >= 1 whole frames), ``context`` float32
[1, window_hops - 1 STFT hops] and ``state_0..state_k`` (the causal convolutions' last inputs) -> ``tokens`` int64 [1, n(, q)] and the same states
as ``context_out``, ``state_i_out``. decoder_step.onnx: ``tokens`` int64 [1, n(, q)], ``tail`` / ``env_tail``
float32 [1, window_hops - 1 STFT hops] (the overlap-add sums not yet final) and ``state_i`` -> ``x`` float32
[1, n * hop] and the new states. Every state starts as zeros of the shape ``stream.json`` lists. The decoder's output runs
``skip_samples`` ahead of the input: drop that many samples at the start of a stream, and end it by dividing
``tail`` by ``env_tail`` (what ``stream_decoder().flush()`` returns). Samples are clamped to [-1, 1] where final.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vqgen_io import atomic_write_bytes, atomic_write_text

from .autoencoders.spectral_fast import FastSpectralStep, overlap_add
from .onnx_export import _traceable
from .tokenizer import Tokenizer

ENCODER_STEP_FILE = "encoder_step.onnx"
DECODER_STEP_FILE = "decoder_step.onnx"
STREAM_FILE = "stream.json"
# Opset 20 has a Gelu op: one node per ConvNeXt block where opset 18 spells it in five, which made a one-frame call
# ~7% faster in onnxruntime (measured); onnxruntime runs opset 20 since 1.17 (the package requires 1.18)
STEP_OPSET = 20
EXAMPLE_FRAMES = 3  # traced with 3 frames per call (a size of 1 would be specialised to a constant)


def _dft_bases(m: Any) -> tuple[Tensor, Tensor]:
    """The STFT and inverse STFT of ``m.stft`` as matrices, the window folded in: (analysis float32 [n_fft, 2 * bins]:
    a frame's real then imaginary parts; synthesis float32 [2 * bins, n_fft]: real and imaginary parts -> the
    windowed ``irfft`` frame). onnxruntime's STFT and DFT ops transform a 320-point frame directly, ~10x slower than
    one small matrix product (measured); the results equal ``torch.stft`` / ``irfft`` to float rounding."""
    n, w = m.stft.n_fft, m.stft.window.double().cpu()
    f = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * torch.pi * f * torch.arange(n, dtype=torch.float64)[None] / n  # [bins, n_fft]
    analysis = torch.cat([torch.cos(angle), -torch.sin(angle)]).t() * w[:, None]
    scale = torch.full((n // 2 + 1, 1), 2.0, dtype=torch.float64)
    scale[0] = scale[-1] = 1.0  # DC and Nyquist appear once in the Hermitian spectrum
    synthesis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * torch.cat([scale, scale]) / n * w[None]
    return analysis.float().contiguous(), synthesis.float().contiguous()


class EncoderStep(nn.Module):
    """One call of ``StreamEncoder`` on whole frames, its state in and out (see the module docstring): the
    ``FastSpectralStep`` the stream object runs (time-major, few ops), with the STFT as a matrix product."""

    def __init__(self, tokenizer: Tokenizer):
        super().__init__()
        self.m = tokenizer.model
        self.step = FastSpectralStep(self.m)
        self.analysis = _dft_bases(self.m)[0]

    def forward(self, x: Tensor, context: Tensor, states: list[Tensor]) -> tuple[Tensor, ...]:
        m, hop = self.m, self.m.stft.hop
        buf = torch.cat([context[0], self.step.compand(x[0])])
        rows = buf.view(-1, hop)  # [h - 1 + n * sub, STFT hop]: a frame is h = window_hops consecutive rows
        hops = m.stft.window_hops
        k = rows.shape[0] - (hops - 1)
        frames = torch.cat([rows[j:j + k] for j in range(hops)], dim=1)  # [n * sub, n_fft]
        re, im = (frames @ self.analysis).split(m.bins, dim=1)
        mag = torch.sqrt(re * re + im * im)
        comp = mag.clamp(min=1e-7) ** -0.7  # |S|^0.3 e^{i phase}, as ``_spec_features``
        feats = torch.cat([torch.log(mag + 1e-5), re * comp, im * comp], dim=1)  # [n * sub, 3 * bins]
        feats = feats.view(-1, m.sub, feats.shape[1]).transpose(1, 2).reshape(-1, feats.shape[1] * m.sub)
        codes, new = self.step.encode_features(feats, list(states), None)
        return (codes.long()[None], buf[buf.shape[0] - context.shape[1]:][None], *new)


class DecoderStep(nn.Module):
    """One call of ``StreamDecoder`` (samples in padded time: the first ``skip_samples`` precede the input)."""

    def __init__(self, tokenizer: Tokenizer):
        super().__init__()
        self.m = tokenizer.model
        self.step = FastSpectralStep(self.m)
        self.n_dec = 1 + len(self.m.decoder.blocks)
        self.synthesis = _dft_bases(self.m)[1]
        self.wsq = (self.m.stft.window.float().cpu() ** 2).view(self.m.stft.window_hops, -1)

    def forward(self, tokens: Tensor, tail: Tensor, env_tail: Tensor, states: list[Tensor]) -> tuple[Tensor, ...]:
        m = self.m
        out, (dec, ref) = self.step.decode_frames(tokens[0], (list(states[:self.n_dec]), list(states[self.n_dec:])))
        mag, phase = torch.exp(out[:, :m.bins].clamp(max=6.0)), out[:, m.bins:]
        frames = torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], dim=1) @ self.synthesis  # [k, n_fft]
        hop = m.stft.hop
        done, tail, env_tail = overlap_add(frames, tail.view(-1, hop), env_tail.view(-1, hop), self.wsq,
                                           m.stft.env_floor)
        return (done.clamp(-1.0, 1.0)[None], tail.reshape(1, -1), env_tail.reshape(1, -1), *dec, *ref)


def initial_states(tokenizer: Tokenizer) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The zero states of a new stream: ({encoder input name: array}, {decoder input name: array})."""
    m = tokenizer.model
    stft, step = m.stft, FastSpectralStep(m)
    k = stft.n_fft - stft.hop
    enc = {"context": np.zeros((1, k), np.float32)}
    enc |= {f"state_{i}": s.numpy() for i, s in enumerate(step.encoder.initial_state())}
    dec = {"tail": np.zeros((1, k), np.float32), "env_tail": np.zeros((1, k), np.float32)}
    states = [*step.decoder.initial_state(), *step.refine.initial_state()]
    dec |= {f"state_{i}": s.numpy() for i, s in enumerate(states)}
    return enc, dec


def _export(module: nn.Module, args: tuple[Any, ...], names: list[str], outputs: list[str],
            dynamic: dict[str, Any]) -> bytes:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=dynamic, opset_version=STEP_OPSET, verbose=False)
    return program.model_proto.SerializeToString()


def export_stream_steps(tokenizer: Tokenizer, out_dir: str | Path) -> dict[str, Any]:
    """Write ``encoder_step.onnx``, ``decoder_step.onnx`` and ``stream.json`` for a causal spectral tokenizer,
    after checking a 4-call stream in onnxruntime against ``stream_encoder`` / ``stream_decoder`` (tokens equal,
    samples within 1e-4; ``RuntimeError`` otherwise). ``ValueError`` for a tokenizer that is not causal."""
    tokenizer._streaming_model()  # the clear error for a non-causal tokenizer
    m, out = tokenizer.model, Path(out_dir)
    enc0, dec0 = initial_states(tokenizer)
    t = torch.export.Dim("frames", min=1)
    x = torch.zeros(1, EXAMPLE_FRAMES * m.hop)
    enc_states = [torch.from_numpy(v) for k, v in enc0.items() if k.startswith("state_")]
    dec_states = [torch.from_numpy(v) for k, v in dec0.items() if k.startswith("state_")]
    with _traceable(tokenizer), torch.no_grad():
        tokens = EncoderStep(tokenizer).eval()(x, torch.from_numpy(enc0["context"]), enc_states)[0]
        enc_names = ["x", "context", *[f"state_{i}" for i in range(len(enc_states))]]
        enc = _export(EncoderStep(tokenizer).eval(), (x, torch.from_numpy(enc0["context"]), enc_states), enc_names,
                      ["tokens", *[f"{n}_out" for n in enc_names[1:]]],
                      {"x": {1: m.hop * t}, "context": None, "states": [None] * len(enc_states)})
        dec_names = ["tokens", "tail", "env_tail", *[f"state_{i}" for i in range(len(dec_states))]]
        dec = _export(DecoderStep(tokenizer).eval(),
                      (tokens, torch.from_numpy(dec0["tail"]), torch.from_numpy(dec0["env_tail"]), dec_states),
                      dec_names, ["x", *[f"{n}_out" for n in dec_names[1:]]],
                      {"tokens": {1: t}, "tail": None, "env_tail": None, "states": [None] * len(dec_states)})
    info = {"sample_rate": int(tokenizer.sample_rate), "hop": int(m.hop), "skip_samples": int(m.stft.pad),
            "env_floor": m.stft.env_floor,
            "latency_ms": tokenizer.latency_ms, "codebooks": tokenizer.num_codebooks, "vocab_size": tokenizer.vocab_size,
            "fingerprint": tokenizer.fingerprint,
            "encoder_states": {k: list(v.shape) for k, v in enc0.items()},
            "decoder_states": {k: list(v.shape) for k, v in dec0.items()}}
    _check(tokenizer, enc, dec, info)
    atomic_write_bytes(out / ENCODER_STEP_FILE, enc)
    atomic_write_bytes(out / DECODER_STEP_FILE, dec)
    atomic_write_text(out / STREAM_FILE, json.dumps(info, indent=2))
    return {"encoder_step": out / ENCODER_STEP_FILE, "decoder_step": out / DECODER_STEP_FILE, **info}


class OnnxStream:
    """A stream through the step graphs with onnxruntime and numpy only: ``encode(x)`` with float32 [n * hop] ->
    int64 tokens; ``decode(tokens)`` -> float32 samples (the first ``skip_samples`` of the stream dropped);
    ``flush()`` -> the decoder's last samples. ``enc`` / ``dec``: the ONNX bytes or paths; ``info``: stream.json;
    ``threads``: onnxruntime's intra-op threads (default: its own choice, one per core).

    Written for one frame per call: every state lives in two preallocated buffers per graph, shared with
    onnxruntime (``OrtValue``s over numpy arrays), and a call runs an ``IOBinding`` that reads one set and writes
    the other (then the sets swap), so no state is converted or copied between calls; the bindings of a chunk size
    are made at its first call. With the same samples, the 128x3 codec's one-frame stream went from 48.2x / 46.1x
    to 62.2x / 59.0x real time on one thread (bench/codec_speed.py, two runs each)."""

    def __init__(self, enc: Any, dec: Any, info: dict[str, Any], threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:  # a stream of small calls is usually fastest on one thread
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = threads
        self.enc = ort.InferenceSession(enc if isinstance(enc, bytes) else str(enc), opts,
                                        providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(dec if isinstance(dec, bytes) else str(dec), opts,
                                        providers=["CPUExecutionProvider"])
        self.info, self.floor, self.hop = info, info["env_floor"], info["hop"]
        self.vocab = info.get("vocab_size")
        self._ort = ort
        self._graphs = {"enc": (self.enc, info["encoder_states"], "x"), "dec": (self.dec, info["decoder_states"], "tokens")}
        # per graph: two sets of state buffers (numpy arrays, and OrtValues over the same memory)
        self._states = {g: [{k: np.zeros(shape, np.float32) for k, shape in states.items()} for _ in range(2)]
                        for g, (_, states, _) in self._graphs.items()}
        self._values = {g: [{k: ort.OrtValue.ortvalue_from_numpy(a) for k, a in d.items()} for d in sets]
                        for g, sets in self._states.items()}
        self._bound: dict[tuple[str, tuple[int, ...]], tuple[Any, ...]] = {}
        self.reset()

    @property
    def enc_state(self) -> dict[str, np.ndarray]:
        """The encoder's current state (numpy arrays, read-only by convention)."""
        return self._states["enc"][self._side["enc"]]

    @property
    def dec_state(self) -> dict[str, np.ndarray]:
        """The decoder's current state."""
        return self._states["dec"][self._side["dec"]]

    def reset(self) -> None:
        """Zero states: a new stream."""
        for sets in self._states.values():
            for d in sets:
                for a in d.values():
                    a.fill(0.0)
        self._side = {"enc": 0, "dec": 0}
        self.skip = self.info["skip_samples"]

    def _binding(self, graph: str, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """(input buffer, main output buffer, [binding from state set 0, from set 1]) for inputs shaped like
        ``data`` [1, ...]; made at the first call of that shape (one plain run learns the output's shape)."""
        key = (graph, data.shape)
        if key not in self._bound:
            sess, states, in_name = self._graphs[graph]
            zeros = {k: np.zeros_like(a) for k, a in self._states[graph][0].items()}
            out0 = sess.run(None, {in_name: np.zeros_like(data), **zeros})[0]
            inp, out = np.zeros_like(data), np.zeros_like(out0)
            ov = self._ort.OrtValue.ortvalue_from_numpy
            inp_v, out_v = ov(inp), ov(out)
            names = [o.name for o in sess.get_outputs()]
            binds = []
            for side in (0, 1):
                b = sess.io_binding()
                b.bind_ortvalue_input(in_name, inp_v)
                b.bind_ortvalue_output(names[0], out_v)
                for k in states:
                    b.bind_ortvalue_input(k, self._values[graph][side][k])
                    b.bind_ortvalue_output(f"{k}_out", self._values[graph][1 - side][k])
                binds.append(b)
            self._bound[key] = (inp, out, binds, inp_v, out_v)  # the OrtValues kept alive with their bindings
        inp, out, binds = self._bound[key][:3]
        return inp, out, binds

    def _run(self, graph: str, data: np.ndarray) -> np.ndarray:
        inp, out, binds = self._binding(graph, data)
        inp[...] = data
        side = self._side[graph]
        self._graphs[graph][0].run_with_iobinding(binds[side])
        self._side[graph] = 1 - side
        return out[0].copy()

    def encode(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 1 or not len(x) or len(x) % self.hop:
            raise ValueError(f"OnnxStream.encode takes whole frames: float32 [n * {self.hop}] samples, got shape "
                             f"{x.shape} (hold back the rest until a frame is complete)")
        return self._run("enc", x[None].astype(np.float32, copy=False))

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        if self.vocab is not None and len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab):
            raise ValueError(f"tokens must be in [0, {self.vocab}), got values in [{tokens.min()}, {tokens.max()}]")
        y = self._run("dec", tokens[None].astype(np.int64, copy=False))
        drop = min(self.skip, len(y))
        self.skip -= drop
        return y[drop:]

    def flush(self) -> np.ndarray:
        """The decoder's last samples; the states start a new stream."""
        tail, env = self.dec_state["tail"][0], self.dec_state["env_tail"][0]
        y = np.clip(tail / np.maximum(env, self.floor), -1.0, 1.0)[self.skip:]
        self.reset()
        return y


def _check(tokenizer: Tokenizer, enc: bytes, dec: bytes, info: dict[str, Any]) -> None:
    """A stream of 1, 2, 3 and 5 frames through onnxruntime equals PyTorch's stream objects."""
    hop = info["hop"]
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(11 * hop, generator=gen) * 1.6 - 0.8)
    onnx, penc, pdec = OnnxStream(enc, dec, info), tokenizer.stream_encoder(), tokenizer.stream_decoder()
    got_t, want_t, got_y, want_y, i = [], [], [], [], 0
    for n in (1, 2, 3, 5):
        chunk = x[i * hop:(i + n) * hop]
        i += n
        got_t.append(onnx.encode(chunk.numpy()))
        want_t.append(penc(chunk).numpy())
        got_y.append(onnx.decode(want_t[-1]))
        want_y.append(pdec(torch.from_numpy(want_t[-1])).numpy())
    got_y.append(onnx.flush())
    want_y.append(pdec.flush().numpy())
    report = "please report this with the tokenizer's config.json"
    frames = np.concatenate([a.reshape(len(a), -1) != b.reshape(len(b), -1) for a, b in zip(got_t, want_t)]).any(1)
    # Two equal (or almost equal) codes, e.g. duplicates k-means draws from too few vectors, tie; onnxruntime's float
    # arithmetic may break the tie the other way: one such frame of the 11 is rounding, more is a wrong graph.
    if frames.sum() > 1:
        raise RuntimeError(f"{ENCODER_STEP_FILE}: onnxruntime's tokens differ from stream_encoder's in "
                           f"{int(frames.sum())} of {len(frames)} frames; {report}")
    got, want = np.concatenate(got_y), np.concatenate(want_y)
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not err <= 1e-4:
        raise RuntimeError(f"{DECODER_STEP_FILE}: onnxruntime's samples differ from stream_decoder's by {err:.3g} "
                           f"(> 1e-4); {report}")
