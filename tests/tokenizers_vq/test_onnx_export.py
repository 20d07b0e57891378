"""ONNX export: onnxruntime alone, in a process where ``import torch`` fails, gives PyTorch's tokens exactly and its
decoded values within 1e-4, for images and audio, every quantizer, two batch sizes and (audio) two lengths, one
of them many encoder chunks long; and the ONNX model card's snippet runs there as written."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tokenizers_vq import TokenizerConfig, build_tokenizer
from tokenizers_vq.card import FOLDER_PLACEHOLDER, tokenizer_card
from tokenizers_vq.onnx_export import DECODER_FILE, ENCODER_FILE, export_onnx

# Residual quantizers once each (their graphs differ from vq / fsq only in the layer loop and the codebook axis).
CASES = [(m, q) for m in ("image", "audio") for q in ("vq", "fsq", "gumbel")] + [("image", "rfsq"), ("audio", "rvq")]
BATCHES = (1, 3)
AUDIO_TOKENS = (3, 29)  # within one chunk, and 8 chunks of CHUNK (the PyTorch encoder stitches those)
CHUNK = 4

# Runs in a fresh interpreter: torch and vqgen cannot be imported, only onnxruntime and numpy.
SCRIPT = r"""
import sys
for name in ("torch", "tokenizers_vq", "vqgen_io", "prior", "pipelines"):
    sys.modules[name] = None  # `import name` now raises ImportError
import pathlib
import numpy as np
import onnxruntime as ort
try:
    import torch
    raise SystemExit("torch was importable")
except ImportError:
    pass

folder, data = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
enc = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
dec = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
assert [i.name for i in enc.get_inputs()] == ["x"] and [o.name for o in enc.get_outputs()] == ["tokens"]
assert [i.name for i in dec.get_inputs()] == ["tokens"] and [o.name for o in dec.get_outputs()] == ["x"]
assert all(v.shape[0] == "batch" for v in enc.get_inputs() + enc.get_outputs() + dec.get_outputs()), "batch axis"
for x_file in sorted(data.glob("*.x.npy")):
    case = x_file.name[: -len(".x.npy")]
    ref_tokens, ref_x = np.load(data / f"{case}.tokens.npy"), np.load(data / f"{case}.decoded.npy")
    (tokens,) = enc.run(["tokens"], {"x": np.load(x_file)})
    assert tokens.dtype == np.int64 and tokens.shape == ref_tokens.shape, (case, tokens.dtype, tokens.shape)
    assert np.array_equal(tokens, ref_tokens), f"{case}: {(tokens != ref_tokens).sum()} of {tokens.size} tokens differ"
    (recon,) = dec.run(["x"], {"tokens": ref_tokens})
    assert recon.dtype == np.float32 and recon.shape == ref_x.shape, (case, recon.dtype, recon.shape)
    err = float(np.abs(recon - ref_x).max())
    assert err <= 1e-4, f"{case}: decoded values differ by {err:.3g}"
    print(case, "ok", tokens.shape, f"{err:.1e}")
exec(compile((data / "snippet.py").read_text(), "README.md snippet", "exec"), {"__name__": "__main__"})
assert sys.modules["torch"] is None
"""


@pytest.fixture(scope="module", autouse=True)
def _reuse_onnx_registry():
    """Every torch.onnx.export rebuilds its op registry from torchlib's sources (~1.5 s on 2 cores); the registry
    depends only on the opset, so these tests build it once. Skipped when torch's private layout differs."""
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return
    cls.from_torchlib = classmethod(functools.lru_cache(maxsize=None)(original.__func__))
    try:
        yield
    finally:
        cls.from_torchlib = original


def _tiny(modality: str, quantizer: str):
    kw = dict(modality=modality, quantizer=quantizer, hidden_channels=8, latent_dim=8, codebook_size=16,
              fsq_levels=[5, 3], num_res_blocks=1, num_quantizers=2)
    if modality == "image":
        kw.update(image_size=16)
    else:
        # gumbel exercises the categorical head, the others the (default) logistic one with 2 mixtures.
        head = "categorical" if quantizer == "gumbel" else "logistic"
        kw.update(clip_samples=64, downsample=4, latent_res_blocks=1, chunk_tokens=CHUNK, audio_head=head,
                  logistic_mixtures=2)
    return build_tokenizer(TokenizerConfig(**kw))


def _inputs(modality: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Named inputs: two batch sizes, and for audio two lengths (multiples of the hop, 4)."""
    if modality == "image":
        # Blocky images (4x4 blocks upsampled) vary more between token cells than pixel noise does.
        return {f"b{b}": torch.nn.functional.interpolate(torch.rand(b, 1, 4, 4, generator=gen), size=16)
                for b in BATCHES}
    return {f"b{b}_t{t}": torch.rand(b, t * 4, generator=gen) * 2 - 1 for b in BATCHES for t in AUDIO_TOKENS}


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{q}" for m, q in CASES])
def exported(request, tmp_path_factory):
    """(folder with encoder.onnx, decoder.onnx, README.md; data folder with inputs, PyTorch references, snippet)."""
    modality, quantizer = request.param
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    tok = _tiny(modality, quantizer)
    inputs = _inputs(modality, gen)
    if quantizer == "vq":
        tok(list(inputs.values())[-1])  # a train-mode forward: k-means initialises the codebook, codes differ
    if quantizer == "rvq":
        with torch.no_grad():  # no quantizer dropout without grad: every layer's codebook k-means-initialises
            tok(list(inputs.values())[-1])
    tok.eval()
    with torch.no_grad():
        if quantizer == "fsq":
            # An untrained projection keeps FSQ's latents near 0, i.e. in 2 or 3 codes; spread them out.
            tok.model.quantizer.fsq.project_in.weight.mul_(8)
    folder = tmp_path_factory.mktemp(f"{modality}-{quantizer}")
    data = tmp_path_factory.mktemp(f"{modality}-{quantizer}-data")
    info = export_onnx(tok, folder)
    assert info["encoder"] == folder / ENCODER_FILE and info["decoder"] == folder / DECODER_FILE
    all_tokens = []
    for name, x in inputs.items():
        tokens = tok.encode(x)
        np.save(data / f"{name}.x.npy", x.numpy())
        np.save(data / f"{name}.tokens.npy", tokens.numpy())
        np.save(data / f"{name}.decoded.npy", tok.decode(tokens).numpy())
        all_tokens.append(tokens.flatten())
    distinct = torch.cat(all_tokens).unique().numel()
    assert distinct >= 4, f"only {distinct} distinct tokens: token equality would say little"
    card = tokenizer_card(tok.config, tok.token_shape(tok.input_shape), tok.input_shape, tok.vocab_size,
                          formats=("onnx",))
    (folder / "README.md").write_text(card)
    return tok, folder, data


def _python_block(card: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, f"expected one python block in an ONNX-only card, found {len(blocks)}"
    return blocks[0]


def test_onnx_runs_without_torch(exported):
    """Tokens exact and decoded values within 1e-4 against PyTorch, and the card's snippet, torch-less."""
    _, folder, data = exported
    snippet = _python_block((folder / "README.md").read_text())
    assert FOLDER_PLACEHOLDER in snippet
    (data / "snippet.py").write_text(snippet.replace(FOLDER_PLACEHOLDER, str(folder)))  # as the card says to
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(data)], capture_output=True, text=True,
                          cwd=data, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_inputs = len(list(data.glob("*.x.npy")))
    assert proc.stdout.count(" ok ") == n_inputs, proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert "int64" in last and "float32" in last, proc.stdout  # the snippet's own print: tokens and recon dtypes


def test_export_leaves_tokenizer_unchanged(exported):
    """Exporting restores train/eval mode and vq's first-use k-means hook (the encoder still checks input)."""
    tok, _, _ = exported
    assert not tok.training
    assert all("init_embed_" not in vars(m) for m in tok.modules())
    bad = torch.full((1, *tok.input_shape), 2.0)
    with pytest.raises(ValueError, match="must lie in"):
        tok.encode(bad)


def test_uninitialised_vq_codebook_is_a_clear_error(tmp_path):
    tok = _tiny("image", "vq").eval()
    with pytest.raises(ValueError, match="codebook was never initialised"):
        export_onnx(tok, tmp_path)
    assert not list(tmp_path.iterdir())


def test_rejects_non_tokenizers(tmp_path):
    with pytest.raises(TypeError, match="priors have no ONNX export"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("autoencoder,patch", [("vqvae", 1), ("resnet", 1), ("resnet", 2)])
def test_image_height_and_width_are_dynamic(tmp_path, autoencoder, patch):
    """Both image families are fully convolutional: the exported graphs take any H, W that are multiples of the
    downsampling, and give PyTorch's tokens and decoded images at a size other than the traced one."""
    import onnxruntime as ort

    torch.manual_seed(0)
    tok = build_tokenizer(TokenizerConfig(modality="image", autoencoder=autoencoder, channels=3, image_size=16,
                                          hidden_channels=8, latent_dim=8, num_res_blocks=1, quantizer="fsq",
                                          fsq_levels=[5, 3], attention=autoencoder == "resnet",
                                          **({"patch_size": 2, "channel_mult": [1, 2]} if patch > 1 else {}))).eval()
    with torch.no_grad():
        tok.model.quantizer.fsq.project_in.weight.mul_(8)  # spread an untrained projection over the codes
    info = export_onnx(tok, tmp_path)
    assert info["dynamic_size"] is True
    enc = ort.InferenceSession(str(tmp_path / ENCODER_FILE), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(tmp_path / DECODER_FILE), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    tokens = enc.run(["tokens"], {"x": x.numpy()})[0]
    want = tok.encode(x)
    assert tokens.shape == (2, 6, 10) and np.array_equal(tokens, want.numpy())
    out = dec.run(["x"], {"tokens": tokens})[0]
    np.testing.assert_allclose(out, tok.decode(want).numpy(), atol=1e-4)
