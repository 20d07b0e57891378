"""`vqgen export` (``export_model``): the safetensors folder and the ONNX folder, their Hub-ready model cards with
runnable usage, and ``--push-to-hub`` failing with a clear message when the Hub cannot be reached (no traffic leaves
this machine: offline mode, or a closed loopback port)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.repocard import metadata_load

from pipelines.stages.export import export_model
from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer
from tokenizers_vq.card import FOLDER_PLACEHOLDER

TINY = dict(modality="image", quantizer="fsq", hidden_channels=8, latent_dim=8, fsq_levels=[5, 3], image_size=16,
            num_res_blocks=1)
FILES = {"safetensors": {"config.json", "model.safetensors", "README.md"},
         "onnx": {"config.json", "encoder.onnx", "decoder.onnx", "README.md"}}
# The ONNX card's snippet must run where torch and vqgen cannot be imported.
TORCHLESS = 'import sys\nfor m in ("torch", "tokenizers_vq", "vqgen_io"):\n    sys.modules[m] = None\n'


@pytest.fixture
def saved(tmp_path):
    """A saved tiny tokenizer folder with the run's metrics.json beside it."""
    src = tmp_path / "run"
    build_tokenizer(TokenizerConfig(**TINY)).eval().save_pretrained(src)
    (src / "metrics.json").write_text(json.dumps({"psnr": 12.5, "step": 7}))
    return src


def _snippet(readme: str, folder) -> str:
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1 and FOLDER_PLACEHOLDER in blocks[0], readme
    return blocks[0].replace(FOLDER_PLACEHOLDER, str(folder))  # what the card tells users to edit


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_writes_folder_with_hub_card(saved, tmp_path, fmt):
    out = tmp_path / fmt
    assert export_model(saved, out, fmt=fmt) == out
    assert {p.name for p in out.iterdir()} == FILES[fmt]
    assert (out / "config.json").read_text() == (saved / "config.json").read_text()
    readme = (out / "README.md").read_text()
    meta = metadata_load(out / "README.md")  # huggingface_hub's own parser of the YAML header
    assert meta["library_name"] == "vqgen" and meta["license"] == "mit"
    assert {"vqgen", "tokenizer", "image", "fsq"} <= set(meta["tags"])
    assert ("onnx" in meta["tags"]) == (fmt == "onnx")
    assert "example.invalid" not in readme and "for 7 steps" in readme and '"psnr": 12.5' in readme
    code = _snippet(readme, out)
    if fmt == "safetensors":
        exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})  # needs torch and vqgen: here
    else:
        assert "import torch" not in code
        proc = subprocess.run([sys.executable, "-c", TORCHLESS + code], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "(2, 4, 4) int64 (2, 1, 16, 16) float32" in proc.stdout


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="tokenizers only.*--format safetensors"):
        export_model(tmp_path / "any", tmp_path / "out", kind="prior", fmt="onnx")
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(tmp_path / "any", tmp_path / "out", fmt="torchscript")
    with pytest.raises(ValueError, match="expects a Hub model repo id OWNER/NAME"):
        export_model(tmp_path / "any", tmp_path / "out", push_to_hub="no owner")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("hub, reason", [
    ("offline", "offline mode (HF_HUB_OFFLINE is set)"),
    ("refused", "could not reach the Hub at http://127.0.0.1:9"),
])
def test_push_to_hub_failure_says_what_and_how_to_retry(saved, tmp_path, monkeypatch, hub, reason):
    if hub == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a closed port on this machine: the connection is refused before anything is sent
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError) as err:
        export_model(saved, out, push_to_hub="someone/tiny-tokenizer")
    msg = str(err.value)
    assert msg.startswith("push to the Hugging Face Hub failed: ") and reason in msg, msg
    assert f"the folder was written at {out}" in msg, msg
    assert "hf auth login" in msg and f"hf upload someone/tiny-tokenizer {out}" in msg, msg
    assert {p.name for p in out.iterdir()} == FILES["safetensors"]
    assert torch.equal(load_tokenizer(str(out)).encode(torch.zeros(1, 1, 16, 16)),
                       load_tokenizer(str(saved)).encode(torch.zeros(1, 1, 16, 16)))


def test_causal_audio_codec_exports_streaming_steps(tmp_path):
    """A causal spectral codec exports its offline pair (mu-law decoding inside the graph) and its streaming step
    graphs (checked against stream_encoder / stream_decoder at export); the card's streaming loop runs without
    torch and returns the clip's length."""
    src = tmp_path / "run"
    torch.manual_seed(0)
    tok = build_tokenizer(modality="audio", causal=True, istft_dim=16, istft_layers=1, num_quantizers=2,
                          codebook_size=16, clip_samples=3200)
    with torch.no_grad():
        tok.train()(torch.rand(4, 3200) * 1.6 - 0.8)  # every codebook k-means-initialised, as after training
    tok.eval().save_pretrained(src)
    out = export_model(src, tmp_path / "onnx", fmt="onnx")
    assert {p.name for p in out.iterdir()} == FILES["onnx"] | {"encoder_step.onnx", "decoder_step.onnx",
                                                               "stream.json"}
    info = json.loads((out / "stream.json").read_text())
    assert (info["hop"], info["skip_samples"], info["latency_ms"], info["codebooks"]) == (320, 240, 35.0, 2)
    readme = (out / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    stream = next(b for b in blocks if "encoder_step.onnx" in b).replace(FOLDER_PLACEHOLDER, str(out))
    proc = subprocess.run([sys.executable, "-c", TORCHLESS + stream], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(3200,)"  # 10 frames in, 10 frames out, aligned
    from tokenizers_vq.onnx_stream import OnnxStream

    onnx, x = OnnxStream(out / "encoder_step.onnx", out / "decoder_step.onnx", info), torch.rand(6 * 320) * 2 - 1
    tokens = np.concatenate([onnx.encode(x[i:i + 640].numpy()) for i in range(0, len(x), 640)])
    assert np.array_equal(tokens, tok.encode(x[None])[0].numpy())
    y = np.concatenate([onnx.decode(tokens), onnx.flush()])
    assert np.abs(y[:-240] - tok.decode(torch.from_numpy(tokens)[None])[0].numpy()[:-240]).max() < 1e-4
    # Chunks of 1, 3 and 2 frames through the bound, double-buffered states (after flush: a new stream) give what
    # the plain onnxruntime loop, the states passed as numpy each call, gives.
    import onnxruntime as ort

    sess = {n: ort.InferenceSession(str(out / f"{n}_step.onnx"), providers=["CPUExecutionProvider"])
            for n in ("encoder", "decoder")}
    es = {k: np.zeros(v, np.float32) for k, v in info["encoder_states"].items()}
    ds = {k: np.zeros(v, np.float32) for k, v in info["decoder_states"].items()}
    plain, bound, a = [], [], 0
    for n in (1, 3, 2):
        chunk = x[a * 320:(a + n) * 320].numpy()
        t, *e = sess["encoder"].run(None, {"x": chunk[None], **es})
        es = dict(zip(es, e))
        y0, *d = sess["decoder"].run(None, {"tokens": t, **ds})
        ds = dict(zip(ds, d))
        plain.append(y0[0])
        bound.append(onnx.decode(onnx.encode(chunk)))
        a += n
    assert np.array_equal(np.concatenate(plain)[240:], np.concatenate(bound))
