"""`vqgen export`: a clean ``save_pretrained`` folder from a run folder, a checkpoint, or a saved folder."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from prior import Prior, PriorConfig
from tokenizers_vq import Tokenizer, TokenizerConfig

from ..training.checkpoints import CKPT_PREFIX, latest_checkpoint


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


def export_model(src: str | Path, out: str | Path, kind: str = "tokenizer") -> Path:
    """Rebuild the model from ``src`` and write ``config.json``, ``model.safetensors`` and ``README.md``
    into ``out``. Loads safetensors only (no unpickling)."""
    src, out = Path(src), Path(out)
    cfg_file, weights = _find(src)
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: cannot tell which {kind} the weights in {weights} belong to")
    cls, cfg_cls = (Tokenizer, TokenizerConfig) if kind == "tokenizer" else (Prior, PriorConfig)
    config = cfg_cls.from_dict(json.loads(cfg_file.read_text()))
    model = cls(config)
    state = load_file(str(weights))
    # A prior is trained inside a loss wrapper, so its checkpoint keys carry a "prior." prefix.
    if kind == "prior" and all(k.startswith("prior.") for k in state):
        state = {k[len("prior."):]: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit the {kind} in {cfg_file}: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    info: dict = {}
    metrics_file = cfg_file.parent / "metrics.json"
    if metrics_file.is_file():
        info["metrics"] = json.loads(metrics_file.read_text())
    model.save_pretrained(out, card_info=info)
    return out
