"""`vqgen export` (``export_model``): the safetensors folder and the ONNX folder, their Hub-ready model cards with
runnable usage, and ``--push-to-hub`` failing with a clear message when the Hub cannot be reached (no traffic leaves
this machine: offline mode, or a closed loopback port)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

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
