"""Saving and loading models as folders (``config.json`` + ``model.safetensors`` + ``README.md``).

Built on huggingface_hub's ``PyTorchModelHubMixin`` so ``push_to_hub`` works as users expect; we override
``save_pretrained``/``from_pretrained`` because our ``config.json`` carries a class name and a format version
the mixin's dataclass handling does not accept, and because every write here must be atomic (a run killed
mid-save must never leave a half-written model next to a good one). Loading never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_model, save_model


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class FolderMixin(PyTorchModelHubMixin):
    """Folder save/load for a ``torch.nn.Module`` whose only constructor argument is a config dataclass.

    Subclasses set ``config_class`` (with ``to_json``/``from_file``) and may override ``model_card``.
    """

    config_class: Any = None
    kind: str = "model"

    def model_card(self, extra: dict[str, Any] | None = None) -> str:
        return f"# vqgen {self.kind}\n\n```json\n{self.config.to_json()}\n```\n"

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | Path, *, card_info: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``save_directory``.

        Each file is written to a temporary name first and renamed into place, so an interrupted save
        leaves either the old file or the new one, never a truncated one.
        """
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".model.", suffix=".safetensors.tmp")
        os.close(fd)
        save_model(self, tmp)
        os.replace(tmp, path / "model.safetensors")
        atomic_write_text(path / "config.json", self.config.to_json())
        atomic_write_text(path / "README.md", self.model_card(card_info))

    @classmethod
    def from_pretrained(cls, pretrained: str | Path, *, map_location: str | torch.device = "cpu", **kwargs: Any):  # type: ignore[override]
        """Rebuild from a folder written by ``save_pretrained`` (or a Hub repo id, downloaded first)."""
        path = Path(pretrained)
        if not path.exists() and "/" in str(pretrained) and not str(pretrained).startswith((".", "/")):
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(pretrained), **kwargs))
        if not path.is_dir():
            raise FileNotFoundError(f"{pretrained}: not a folder. Pass a folder written by save_pretrained "
                                    f"(it holds config.json and model.safetensors).")
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{path} has no config.json, so it is not a saved vqgen {cls.kind}. Pass the folder that "
                f"`vqgen train-{cls.kind}` or save_pretrained wrote (or re-create it with `vqgen export`)."
            )
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file} is not valid JSON ({e}); re-export the {cls.kind}.") from e
        config = cls.config_class.from_dict(raw)
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has config.json but no model.safetensors; re-export the {cls.kind}.")
        model = cls(config)
        missing, unexpected = load_model(model, weights, strict=False, device=str(map_location))
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match its config.json: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}. The folder was probably written by another vqgen version."
            )
        model.eval()
        return model
