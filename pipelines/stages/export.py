"""`vqgen export`: a clean, shareable folder from a run folder, a checkpoint, or a saved folder.

``--format safetensors`` (default): ``config.json`` + ``model.safetensors`` + ``README.md``, loaded with vqgen.
``--format onnx`` (tokenizers): ``config.json`` + ``encoder.onnx`` + ``decoder.onnx`` + ``README.md``, run with
onnxruntime alone. ``--push-to-hub OWNER/NAME`` then uploads the folder with huggingface_hub.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from prior import Prior, PriorConfig
from tokenizers_vq import Tokenizer, TokenizerConfig
from vqgen_io import atomic_write_text, load_safetensors

from ..training.checkpoints import CKPT_PREFIX, latest_checkpoint

FORMATS = ("safetensors", "onnx")
KINDS = ("tokenizer", "prior")


def _find(path: Path) -> tuple[Path, Path]:
    """(config.json, weights) for a run folder (latest checkpoint wins over a final save only when there is
    no final save), a ``checkpoint-N`` folder (config from its run folder), or a saved folder."""
    if path.name.startswith(CKPT_PREFIX) and (path / "model.safetensors").is_file():
        return path.parent.parent / "config.json", path / "model.safetensors"
    if (path / "model.safetensors").is_file():
        return path / "config.json", path / "model.safetensors"
    ckpt = latest_checkpoint(path)
    if ckpt is not None and (ckpt / "model.safetensors").is_file():
        return path / "config.json", ckpt / "model.safetensors"
    raise FileNotFoundError(
        f"{path}: no model.safetensors here and no checkpoint under {path / 'checkpoints'}; pass a run folder "
        "(`--out` of a training command), one of its checkpoints, or a saved folder"
    )


def _load(src: Path, kind: str) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, card info from the run's metrics.json) rebuilt from ``src``; safetensors only."""
    cfg_file, weights = _find(src)
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: cannot tell which {kind} the weights in {weights} belong to")
    cls, cfg_cls = (Tokenizer, TokenizerConfig) if kind == "tokenizer" else (Prior, PriorConfig)
    config = cfg_cls.from_dict(json.loads(cfg_file.read_text()))
    model = cls(config)
    state = load_safetensors(weights, f"Use another checkpoint of the run (under {src / 'checkpoints'}) or copy the "
                                      "folder again.")
    # A prior is trained inside a loss wrapper, so its checkpoint keys carry a "prior." prefix.
    if kind == "prior" and all(k.startswith("prior.") for k in state):
        state = {k[len("prior."):]: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit the {kind} in {cfg_file}: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    model.eval()
    info: dict[str, Any] = {}
    metrics_file = cfg_file.parent / "metrics.json"
    if metrics_file.is_file():
        info["metrics"] = json.loads(metrics_file.read_text())
        if isinstance(info["metrics"], dict) and info["metrics"].get("step") is not None:
            info["steps"] = info["metrics"]["step"]
    return model, info


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; reading it here as well honours a later setting.
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _why(err: BaseException, endpoint: str) -> str:
    """One line saying which of the usual reasons stopped the upload to ``endpoint``."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled):
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)"
    if isinstance(err, HfHubHTTPError) and status in (401, 403):
        return f"the Hub refused the request (HTTP {status}): not logged in, or no write access to this repo"
    if isinstance(err, (ConnectionError, TimeoutError)) or "connect" in type(err).__name__.lower() \
            or "timeout" in type(err).__name__.lower():
        return f"could not reach the Hub at {endpoint} (no network, proxy or firewall)"
    return "the upload failed"


def _check_repo_id(repo: str) -> None:
    """Fail before any work when ``repo`` is not a valid "owner/name" Hub repo id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
        ok = repo.count("/") == 1
    except HFValidationError:
        ok = False
    if not ok:
        raise ValueError(f"--push-to-hub expects a Hub model repo id OWNER/NAME (letters, digits, '-', '_', '.'), "
                         f"got {repo!r}")


def push_folder(out: Path, repo: str) -> str:
    """Upload every file of ``out`` to the Hub model repo ``repo`` ("owner/name"), creating it if needed;
    returns the repo URL. Raises ``RuntimeError`` saying what failed, that ``out`` is intact, and how to retry."""
    def fail(reason: str, err: BaseException | None = None) -> RuntimeError:
        detail = f" ({type(err).__name__}: {err})" if err is not None else ""
        q_repo, q_out = shlex.quote(repo), shlex.quote(str(out))
        return RuntimeError(
            f"push to the Hugging Face Hub failed: {reason}{detail}. The export itself succeeded: the folder was "
            f"written at {out}. To retry: check the network (unset HF_HUB_OFFLINE if it is set), log in with "
            f"`hf auth login` (`huggingface-cli login` on huggingface_hub < 0.34), then run "
            f"`hf upload {q_repo} {q_out}` (or `huggingface-cli upload {q_repo} {q_out}`), or export again with "
            f"--push-to-hub {q_repo}."
        )

    if _offline():
        raise fail("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(out),
                          commit_message=f"vqgen export ({', '.join(sorted(p.name for p in out.iterdir()))})")
    except Exception as e:  # any failure, network or not, leaves the folder behind: say so, with the cause
        raise fail(_why(e, api.endpoint), e) from e
    return str(url)


def export_model(src: str | Path, out: str | Path, kind: str = "tokenizer", fmt: str = "safetensors",
                 push_to_hub: str | None = None) -> Path:
    """Rebuild the model from ``src`` (a run folder, a ``checkpoint-N`` folder or a saved folder; loads
    safetensors only, never unpickles) and write a clean folder at ``out``; returns ``out``.

    ``fmt="safetensors"``: ``config.json``, ``model.safetensors``, ``README.md`` (load with ``load_tokenizer`` /
    ``load_prior``). ``fmt="onnx"`` (tokenizers only): ``config.json``, ``encoder.onnx`` (``x`` float32 image
    [B, C, H, W] in [0, 1] / audio [B, T] in [-1, 1] -> ``tokens`` int64), ``decoder.onnx`` (``tokens`` -> ``x``)
    and ``README.md``, usable with onnxruntime alone (see ``tokenizers_vq.onnx_export``). Tokenizer cards carry
    the Hub's YAML header and runnable usage for the format written.

    ``push_to_hub="owner/name"`` then uploads the folder to that Hub model repo (created if missing); if the
    Hub cannot be reached or refuses, ``RuntimeError`` says why, that ``out`` was still written, and how to retry.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if push_to_hub is not None:
        _check_repo_id(push_to_hub)
    if fmt == "onnx" and kind != "tokenizer":
        raise ValueError("--format onnx exports tokenizers only (encoder.onnx and decoder.onnx); a prior samples "
                         "autoregressively, which has no ONNX export here: export it with --format safetensors")
    src, out = Path(src), Path(out)
    model, info = _load(src, kind)
    if fmt == "safetensors":
        model.save_pretrained(out, card_info=info)
    else:
        from tokenizers_vq.onnx_export import export_onnx

        export_onnx(model, out)
        atomic_write_text(out / "config.json", model.config.to_json())
        atomic_write_text(out / "README.md", model.model_card({**info, "formats": (fmt,)}))
    if push_to_hub:
        push_folder(out, push_to_hub)
    return out
