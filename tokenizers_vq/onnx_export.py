"""ONNX export of a tokenizer: ``encoder.onnx`` (x -> tokens) and ``decoder.onnx`` (tokens -> x), runnable with
``onnxruntime`` and numpy alone (no torch, no vqgen).

``encoder.onnx``: input ``x``, float32 image [B, C, H, W] in [0, 1] or audio [B, T] in [-1, 1] (mu-law companding
happens inside the graph); output ``tokens``, int64 [B, H/d, W/d] or [B, T/d] in [0, vocab_size).
``decoder.onnx``: input ``tokens`` (int64, the encoder's layout); output ``x`` (the encoder input's layout and range).

The graphs are the model's own ``encode``/``decode`` code traced once, so a quantizer whose tokens carry a trailing
codebook axis ([B, t, q] / [B, h, w, q]) exports unchanged: the batch axis, audio's time axis and an image's height
and width are declared dynamic, and any further token axis keeps its traced size. Image H and W are any multiples of
the downsampling where the network allows (the convolutional families do: checked at a second size before writing);
an image tokenizer whose graph does not trace with symbolic H and W is exported at ``config.image_size``, and the
returned ``dynamic_size`` says which.

Audio is traced as one piece (``chunk_tokens=0``): the PyTorch ``Tokenizer.encode``/``decode`` cut long inputs
into chunks with enough context that chunk edges are invisible, so the one-piece graph gives the same tokens, and
decoded values within float rounding. No length was found where that fails (the tests use inputs of 8 chunks; a
default-size vq model gave identical tokens for 5 s of audio, 1,253 tokens in 5 chunks), so no limit is documented. Tokens are
argmins/roundings of float values, so a value within float rounding of a tie could in principle go the other way
in another runtime; none did in any test.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqgen_io import atomic_write_bytes

from .tokenizer import Tokenizer

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
# The opset torch's exporter (torchlib) writes natively, so no version-conversion pass runs; onnxruntime has run
# it since 1.14 (2023), so the files load in old runtimes too, and higher opsets add nothing these graphs use.
DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file (weights inline) cannot exceed protobuf's 2 GiB
DECODE_TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| accepted for decoded values in the export-time self-check


def _trace_kwargs(tokenizer: Tokenizer) -> dict[str, Any]:
    """The modality's extra encode/decode arguments for tracing (audio: ``chunk_tokens=0``, one piece)."""
    return dict(tokenizer.modality.trace_kwargs)


class OnnxEncoder(nn.Module):
    """The tokenizer's encode math: image float32 [B, C, H, W] in [0, 1] -> int64 [B, H/d, W/d]; audio float32
    [B, T] in [-1, 1] (T a multiple of d) -> int64 [B, T/d]. Tokens in [0, vocab_size). No input checks (the graph
    cannot raise); the caller keeps inputs in range."""

    def __init__(self, tokenizer: Tokenizer):
        super().__init__()
        self.model = tokenizer.model
        self.kwargs = _trace_kwargs(tokenizer)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x, **self.kwargs).long()


class OnnxDecoder(nn.Module):
    """The tokenizer's decode math (``Tokenizer.decode``: audio returns the head's mean waveform): int64 tokens
    [B, *grid] in [0, vocab_size) -> image float32 [B, C, h*d, w*d] in [0, 1] or audio float32 [B, t*d] in [-1, 1]."""

    def __init__(self, tokenizer: Tokenizer):
        super().__init__()
        self.model = tokenizer.model
        self.kwargs = _trace_kwargs(tokenizer)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model.decode(tokens, **self.kwargs)


def _codebooks(tokenizer: Tokenizer) -> list[nn.Module]:
    """vector-quantize-pytorch codebooks (they carry an ``initted`` flag and k-means-initialise on first use)."""
    return [m for m in tokenizer.modules() if hasattr(m, "initted") and hasattr(m, "init_embed_")]


@contextlib.contextmanager
def _traceable(tokenizer: Tokenizer) -> Iterator[None]:
    """Eval mode, and vq codebooks' first-use k-means turned off: it is an ``if`` on a buffer, which an exported
    graph cannot branch on, and an initialised codebook never takes it."""
    was_training = tokenizer.training
    books = _codebooks(tokenizer)
    if not all(bool(book.initted) for book in books):
        raise ValueError(
            "this vq tokenizer's codebook was never initialised: with kmeans_init it is set by k-means on the "
            "first batch the model sees, so its tokens are not defined yet. Export a trained tokenizer "
            "(`vqgen train-tokenizer`, then `vqgen export --tokenizer RUN_DIR`), or run one training step first"
        )
    for book in books:
        book.init_embed_ = lambda *args, **kwargs: None  # instance attribute: shadows the method until deleted
    tokenizer.eval()
    try:
        yield
    finally:
        for book in books:
            del book.init_embed_
        tokenizer.train(was_training)


def _example(tokenizer: Tokenizer) -> Tensor:
    """A deterministic example input of the training shape with batch 2 and, for audio, at least 2 tokens (an axis
    of size 1 would be specialised to a constant by torch.export)."""
    gen = torch.Generator().manual_seed(0)
    return tokenizer.modality.example_input(tokenizer.input_shape, tokenizer.config.downsample, gen)


def _dims(tokenizer: Tokenizer, tokens: Tensor, spatial: bool = True) -> tuple[dict[int, Any], dict[int, Any]]:
    """Dynamic axes of (x, tokens): batch, audio's time axis (T = d * t, so only multiples of the hop trace), and
    with ``spatial`` an image's H and W (multiples of d). A trailing token axis (codebooks) is not named, so it
    stays static."""
    if tokenizer.modality.timed:
        return tokenizer.modality.dynamic_axes(tokens, tokenizer.config.downsample)
    return tokenizer.modality.dynamic_axes(tokens, tokenizer.config.downsample, spatial=spatial)


def _export(module: nn.Module, example: Tensor, in_name: str, out_name: str, dims: dict[int, Any], opset: int,
            path: Path) -> Any:
    """The ONNX ``ModelProto`` of ``module`` traced on ``example`` (``path`` only names it in errors)."""
    # The dynamo exporter (torch.export): the TorchScript one (dynamo=False) is deprecated, has no ONNX op for
    # aten::expm1 (the audio heads' mu-law expansion) and refuses vector-quantize-pytorch's codebook as a constant;
    # torch.export traces symbolic batch/time sizes, so the dynamic axes are real, not traced-size constants.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter, not the user's concern
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[in_name], output_names=[out_name],
                                    dynamic_shapes={in_name: dims}, opset_version=opset, verbose=False)
    proto = program.model_proto
    size = proto.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise ValueError(f"{path}: the model is {size / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit; "
                         "export a smaller tokenizer, or use --format safetensors")
    return proto


def _rename_dims(target: Any, source: Any) -> None:
    """Give ``target``'s symbolic axes (a graph input/output) the names of ``source``'s: the exporter names an
    output's derived sizes after internal symbols ("s60"), the other model's input names them "batch", "t"."""
    pairs = zip(target.type.tensor_type.shape.dim, source.type.tensor_type.shape.dim)
    for t_dim, s_dim in pairs:
        if t_dim.HasField("dim_param") and s_dim.HasField("dim_param"):
            t_dim.dim_param = s_dim.dim_param


def _self_check(enc: bytes, dec: bytes, paths: tuple[Path, Path], example: Tensor, tokens: Tensor,
                decoded: Tensor) -> None:
    """Run both models in onnxruntime on the traced example and compare with PyTorch, before anything is written:
    an exporter bug fails here, at export time, not in a user's pipeline."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    enc_sess = ort.InferenceSession(enc, opts, providers=["CPUExecutionProvider"])
    dec_sess = ort.InferenceSession(dec, opts, providers=["CPUExecutionProvider"])
    report = "please report this with the tokenizer's config.json, and use --format safetensors meanwhile"
    got = enc_sess.run(["tokens"], {"x": example.numpy()})[0]
    if got.dtype != np.int64 or got.shape != tuple(tokens.shape) or not np.array_equal(got, tokens.numpy()):
        raise RuntimeError(f"{paths[0]}: onnxruntime's tokens ({got.dtype} {got.shape}) differ from PyTorch's "
                           f"(int64 {tuple(tokens.shape)}) on the export example; {report}")
    out = dec_sess.run(["x"], {"tokens": tokens.numpy()})[0]
    err = float(np.abs(out - decoded.numpy()).max()) if out.shape == tuple(decoded.shape) else float("inf")
    if not err <= DECODE_TOLERANCE:
        raise RuntimeError(f"{paths[1]}: onnxruntime's decoded values differ from PyTorch's by up to {err:.3g} "
                           f"(> {DECODE_TOLERANCE:g}); {report}")


def export_onnx(tokenizer: Tokenizer, out_dir: str | Path, *, opset: int | None = None) -> dict[str, Any]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``tokenizer`` into ``out_dir`` (atomically, umask modes).

    encoder.onnx: ``x`` float32 (image [B, C, H, W] in [0, 1], H and W multiples of ``config.downsample`` where
    ``dynamic_size`` is returned True, else ``config.image_size``; audio [B, T] in
    [-1, 1], any T that is a multiple of ``config.downsample``) -> ``tokens`` int64 ([B, H/d, W/d] / [B, T/d]) in
    [0, vocab_size). decoder.onnx: ``tokens`` int64 -> ``x`` float32 in the encoder input's layout and range; audio
    decodes to the same mean waveform as ``Tokenizer.decode``. B is dynamic in both.

    Both models are checked with onnxruntime against PyTorch on an example input before they are written (tokens
    equal, decoded values within 1e-4; ``RuntimeError`` otherwise). ``opset`` defaults to ``DEFAULT_OPSET`` (18, written natively; others are
    converted by onnx's version converter, which may refuse some ops). Returns ``{"encoder": Path,
    "decoder": Path, "opset": int, "input_shape": (B, ...), "token_shape": (B, ...)}`` for the example traced.
    Raises ``ValueError`` for an uninitialised vq codebook, a model over 2 GiB or a codec with a harmonic source.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"export_onnx takes a tokenizers_vq.Tokenizer, got {type(tokenizer).__name__}; priors have "
                        "no ONNX export (use save_pretrained / --format safetensors)")
    if getattr(tokenizer.config, "harmonics", 0):  # its source accumulates phase block by block over the whole clip
        raise ValueError("a spectral codec with harmonics > 0 (experimental) has no ONNX export yet: export it with "
                         "--format safetensors, or train without --harmonics")
    opset = DEFAULT_OPSET if opset is None else int(opset)  # others go through onnx's version converter
    out = Path(out_dir)
    enc_path, dec_path = out / ENCODER_FILE, out / DECODER_FILE
    example = _example(tokenizer)
    spatial = not tokenizer.modality.timed  # images: try symbolic H and W first
    with _traceable(tokenizer), torch.no_grad():
        encoder, decoder = OnnxEncoder(tokenizer).eval(), OnnxDecoder(tokenizer).eval()
        tokens = encoder(example)
        decoded = decoder(tokens)
        while True:
            x_dims, tok_dims = _dims(tokenizer, tokens, spatial=spatial)
            try:
                enc = _export(encoder, example, "x", "tokens", x_dims, opset, enc_path)
                dec = _export(decoder, tokens, "tokens", "x", tok_dims, opset, dec_path)
                _rename_dims(enc.graph.output[0], dec.graph.input[0])
                _rename_dims(dec.graph.output[0], enc.graph.input[0])
                enc_bytes, dec_bytes = enc.SerializeToString(), dec.SerializeToString()
                _self_check(enc_bytes, dec_bytes, (enc_path, dec_path), example, tokens, decoded)
                if spatial:  # the graphs must also agree with PyTorch at another size, or be exported static
                    other = _other_size_example(tokenizer, example)
                    other_tokens = encoder(other)
                    _self_check(enc_bytes, dec_bytes, (enc_path, dec_path), other, other_tokens,
                                decoder(other_tokens))
                break
            except Exception:  # noqa: BLE001 - symbolic H, W did not trace or check: export at the traced size
                if not spatial:
                    raise
                spatial = False
    enc, dec = enc_bytes, dec_bytes
    steps = {}
    if tokenizer.latency_ms != float("inf"):  # a causal codec: its streaming steps too, checked the same way
        from .onnx_stream import export_stream_steps

        steps = export_stream_steps(tokenizer, out)
    atomic_write_bytes(enc_path, enc)
    atomic_write_bytes(dec_path, dec)
    return {"encoder": enc_path, "decoder": dec_path, "opset": opset, "input_shape": tuple(example.shape),
            "token_shape": tuple(tokens.shape), "dynamic_size": spatial or tokenizer.modality.timed,
            **{k: steps[k] for k in ("encoder_step", "decoder_step") if k in steps}}


def _other_size_example(tokenizer: Tokenizer, example: Tensor) -> Tensor:
    """An image example of another height and width (one and two token rows / columns more), same batch."""
    d = tokenizer.config.downsample
    gen = torch.Generator().manual_seed(1)
    b, c, h, w = example.shape
    return torch.rand(b, c, h + d, w + 2 * d, generator=gen)
