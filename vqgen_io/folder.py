"""Saving and loading models as folders (``config.json`` + ``model.safetensors`` + ``README.md``).

Built on huggingface_hub's ``PyTorchModelHubMixin`` so ``push_to_hub`` works as users expect; we override
``save_pretrained``/``from_pretrained`` because our ``config.json`` carries a class name and a format version
the mixin's dataclass handling does not accept, and because every write here must be atomic (a run killed
mid-save must never leave a half-written model next to a good one). Loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` on a temporary file beside ``path``, give it the mode a plain ``open`` would
    (0666 less the umask: mkstemp's files are 0600, which would hide a shared model from teammates), then
    ``os.replace`` it into place (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename), with the umask's mode."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename), with the umask's mode."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through a temporary file and a rename, with the umask's mode."""
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _corrupt(path: Path, fix: str, err: Exception) -> ValueError:
    size = path.stat().st_size if path.exists() else 0
    return ValueError(f"{path} is truncated or corrupt ({size:,} bytes; safetensors: {err}). It was probably cut "
                      f"short by an interrupted copy, download or write. {fix}")


def load_safetensors(path: str | Path, fix: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (never unpickles). A missing file is ``FileNotFoundError``, a
    truncated or corrupt one a ``ValueError`` naming the file and ending with ``fix`` (how to get a good copy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. {fix}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise _corrupt(path, fix, e) from None


def load_safetensors_into(model: torch.nn.Module, path: str | Path, fix: str, device: str = "cpu"
                          ) -> tuple[list[str], list[str]]:
    """``safetensors.torch.load_model(model, path, strict=False)`` with the same errors as ``load_safetensors``;
    returns (missing, unexpected) key lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. {fix}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=device)
    except (SafetensorError, OSError) as e:
        raise _corrupt(path, fix, e) from None
    return list(missing), list(unexpected)


def fingerprint_module(model: torch.nn.Module, config: Any = None) -> str:
    """32 hex digits of SHA-256 over a config's JSON and every tensor of a state dict (name, dtype, shape,
    raw bytes): two models share it only if they compute the same function. Stable across runs and machines."""
    h = hashlib.sha256()
    if config is not None:
        # identity_dict: the config without fields added after models were saved, where they are at defaults
        ident = config.identity_dict() if hasattr(config, "identity_dict") else config.to_dict()
        h.update(json.dumps(ident, sort_keys=True, default=list).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


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
        leaves either the old file or the new one, never a truncated one. Files get the umask's mode.
        """
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        _atomic_write(path / "model.safetensors", lambda tmp: save_model(self, tmp))
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
        fix = (f"Copy the folder again from where it was made, or re-create it with `vqgen export --{cls.kind} RUN_DIR "
               f"--out {path}` from the training run's checkpoints.")
        missing, unexpected = load_safetensors_into(model, weights, fix, device=str(map_location))
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match its config.json: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}. The folder was probably written by another vqgen version."
            )
        model.eval()
        return model
