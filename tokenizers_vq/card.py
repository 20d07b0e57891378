"""Model cards (``README.md``) for exported tokenizers: the Hugging Face Hub's YAML front matter and runnable usage
for each format in the folder (the safetensors folder through vqgen, the ONNX pair through onnxruntime alone)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .modality import get_modality

FORMATS = ("safetensors", "onnx")
# The line users edit (and the tests fill in) to point the usage snippets at the downloaded folder.
FOLDER_PLACEHOLDER = "path/to/this/folder"
_FILES = {"safetensors": "`model.safetensors`", "onnx": "`encoder.onnx`, `decoder.onnx`"}


def _shape(dims: Iterable[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _front_matter(modality: str, quantizer: str, formats: tuple[str, ...]) -> list[str]:
    # No pipeline_tag: the Hub's tasks describe end uses (image-to-image, audio-to-audio, ...); a tokenizer's output
    # is integer tokens for another model, which none of them describes, and a wrong tag misfiles the model.
    tags = ["vqgen", "tokenizer", modality, quantizer] + (["onnx"] if "onnx" in formats else [])
    return ["---", "library_name: vqgen", "license: mit", "tags:", *[f"- {t}" for t in tags], "---", ""]


def _io(config: Any, token_shape: tuple[int, ...], input_shape: tuple[int, ...], vocab_size: int) -> dict[str, str]:
    """Human-readable input/token descriptions shared by the table and the snippets (the modality's wording)."""
    return get_modality(config.modality).card_io(config, token_shape, input_shape, vocab_size)


def _example_input(config: Any, input_shape: tuple[int, ...], numpy: bool) -> list[str]:
    """Lines that build an example input ``x`` (numpy or torch) of the documented layout."""
    return get_modality(config.modality).card_example(config, input_shape, numpy)


def _safetensors_usage(config: Any, input_shape: tuple[int, ...], io: Mapping[str, str]) -> list[str]:
    return [
        "### PyTorch (`config.json` + `model.safetensors`)",
        "",
        "Needs the `vqgen` package, which provides `tokenizers_vq`. Loading reads `config.json` and the safetensors "
        f"weights and never unpickles. `tok.encode(x)` takes x {io['x_torch']}, and checks its shape and range"
        + get_modality(config.modality).card_torch_note,
        "",
        "```python",
        "import torch",
        "from tokenizers_vq import load_tokenizer",
        "",
        f'folder = "{FOLDER_PLACEHOLDER}"  # this folder (for a Hub repo: huggingface_hub.snapshot_download(repo_id))',
        "tok = load_tokenizer(folder)",
        *_example_input(config, input_shape, numpy=False),
        f"tokens = tok.encode(x)  # {io['tokens']}",
        f"recon = tok.decode(tokens)  # {io['recon']}",
        "print(tokens.shape, recon.shape)",
        "```",
        "",
    ]


def _onnx_usage(config: Any, input_shape: tuple[int, ...], io: Mapping[str, str]) -> list[str]:
    m = get_modality(config.modality)
    lines = [
        "### ONNX (`encoder.onnx` + `decoder.onnx`): onnxruntime and numpy only",
        "",
        "No torch and no vqgen needed: `pip install onnxruntime numpy`.",
        "",
        "| file | input | output |",
        "|---|---|---|",
        f"| `encoder.onnx` | `x`: {io['x']} | `tokens`: {io['tokens']} |",
        f"| `decoder.onnx` | `tokens`: the encoder's output | `x`: {io['recon']} |",
        "",
    ]
    for note in m.card_onnx_notes:
        lines += [note, ""]
    lines += [
        "The graphs do not check their input: keep values in range (NaN or out-of-range values give meaningless "
        "tokens rather than an error)" + m.card_onnx_limits,
        "",
        "```python",
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        f'folder = "{FOLDER_PLACEHOLDER}"  # this folder (for a Hub repo: huggingface_hub.snapshot_download(repo_id))',
        'encoder = ort.InferenceSession(f"{folder}/encoder.onnx", providers=["CPUExecutionProvider"])',
        'decoder = ort.InferenceSession(f"{folder}/decoder.onnx", providers=["CPUExecutionProvider"])',
        *_example_input(config, input_shape, numpy=True),
        f'(tokens,) = encoder.run(["tokens"], {{"x": x}})  # {io["tokens"]}',
        f'(recon,) = decoder.run(["x"], {{"tokens": tokens}})  # {io["recon"]}',
        "print(tokens.shape, tokens.dtype, recon.shape, recon.dtype)",
        "```",
        "",
    ]
    return lines


def _onnx_stream_usage() -> list[str]:
    """The streaming loop of a causal codec's step graphs (``tokenizers_vq.onnx_stream``)."""
    return [
        "### Streaming with ONNX (`encoder_step.onnx` + `decoder_step.onnx` + `stream.json`)",
        "",
        "This codec is causal: the step graphs take any whole number of frames and the state the previous call "
        "returned, and return the tokens / samples that are ready and the new state. The decoder's output starts "
        "`skip_samples` before the input; the last samples come from dividing its `tail` by `env_tail` (at least "
        "`env_floor`).",
        "",
        "```python",
        "import json",
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        f'folder = "{FOLDER_PLACEHOLDER}"',
        'info = json.load(open(f"{folder}/stream.json"))',
        'enc = ort.InferenceSession(f"{folder}/encoder_step.onnx", providers=["CPUExecutionProvider"])',
        'dec = ort.InferenceSession(f"{folder}/decoder_step.onnx", providers=["CPUExecutionProvider"])',
        'enc_state = {k: np.zeros(s, np.float32) for k, s in info["encoder_states"].items()}',
        'dec_state = {k: np.zeros(s, np.float32) for k, s in info["decoder_states"].items()}',
        'hop, out = info["hop"], []',
        'x = np.zeros(10 * hop, np.float32)  # your audio at info["sample_rate"]: float32 in [-1, 1]',
        "for i in range(0, len(x), hop):  # one frame per call here; any whole number of frames works",
        '    tokens, *state = enc.run(None, {"x": x[None, i:i + hop], **enc_state})',
        "    enc_state = dict(zip(enc_state, state))",
        '    y, *state = dec.run(None, {"tokens": tokens, **dec_state})',
        "    dec_state = dict(zip(dec_state, state))",
        "    out.append(y[0])",
        'out.append(dec_state["tail"][0] / np.maximum(dec_state["env_tail"][0], info["env_floor"]))  # the end',
        'audio = np.clip(np.concatenate(out), -1, 1)[info["skip_samples"]:]  # aligned with x',
        "print(audio.shape)",
        "```",
        "",
    ]


def tokenizer_card(config: Any, token_shape: tuple[int, ...], input_shape: tuple[int, ...], vocab_size: int, *,
                   formats: Iterable[str] = ("safetensors",), dataset: str | None = None, steps: int | None = None,
                   metrics: Mapping[str, Any] | None = None) -> str:
    """The ``README.md`` of an exported tokenizer folder, as a string.

    ``config`` is the ``TokenizerConfig``; ``input_shape`` is one training input ((C, H, W) images, (T,) audio)
    and ``token_shape`` its token grid ((H/d, W/d) or (T/d,), plus any trailing codebook axis); tokens are int64
    in [0, ``vocab_size``). ``formats`` names the files present: ``"safetensors"`` (``model.safetensors``, used
    through ``tokenizers_vq.load_tokenizer``) and/or ``"onnx"`` (``encoder.onnx`` / ``decoder.onnx``, used
    through onnxruntime and numpy only); each gets a runnable snippet whose ``folder = "path/to/this/folder"``
    line is the one thing to edit. ``dataset``, ``steps`` and ``metrics`` (the run's ``metrics.json``) are
    reported when given. Starts with the YAML front matter the Hub reads (``library_name``, ``license``,
    ``tags``). Raises ``ValueError`` for an unknown or empty ``formats``.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    c, m = config, get_modality(config.modality)
    input_shape, token_shape = tuple(input_shape), tuple(token_shape)
    io = _io(c, token_shape, input_shape, vocab_size)
    bits = math.log2(vocab_size) * math.prod(token_shape) if vocab_size > 1 else 0.0
    lines = _front_matter(c.modality, c.quantizer, formats)
    lines += [
        f"# vqgen {c.modality} tokenizer ({c.quantizer})",
        "",
        f"A discrete autoencoder made with vqgen: the encoder turns {m.noun} "
        f"into a grid of integer tokens in [0, {vocab_size}), the decoder turns tokens back into "
        f"{m.noun}. Use the tokens to train a prior, to compress, or "
        "as discrete features.",
        "",
        "| | |",
        "|---|---|",
        f"| modality | {c.modality} |",
        f"| quantizer | `{c.quantizer}` |",
        f"| vocabulary | {vocab_size} tokens ({math.log2(vocab_size):.2f} bits each) |",
        f"| one input | {_shape(input_shape)} -> tokens {_shape(token_shape)} ({bits:,.0f} bits) |",
        f"| downsampling | {c.downsample}x {m.downsample_axes} |",
    ]
    if getattr(c, "residual", False):
        lines.append(f"| codebooks | {c.num_quantizers} per position (residual); the first n alone also decode, at n/"
                     f"{c.num_quantizers} of the bits (`encode(x, n_quantizers=n)`) |")
    lines += m.card_rows(c)  # units: the sample rate and hop of audio
    lines += [f"| files | `config.json`, {', '.join(_FILES[f] for f in formats)} |", ""]
    if dataset:
        lines += [f"Trained on `{dataset}`" + (f" for {steps} steps." if steps else "."), ""]
    elif steps:
        lines += [f"Trained for {steps} steps.", ""]
    if metrics:
        lines += ["Metrics from the training run (`metrics.json`):", "", "```json",
                  json.dumps(dict(metrics), indent=2, default=str), "```", ""]
    lines += ["## Usage", ""]
    if "safetensors" in formats:
        lines += _safetensors_usage(c, input_shape, io)
    if "onnx" in formats:
        lines += _onnx_usage(c, input_shape, io)
        if getattr(c, "causal", False):
            lines += _onnx_stream_usage()
    lines += ["## License", "", "MIT.", ""]
    return "\n".join(lines)

