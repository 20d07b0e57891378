"""Save/load helpers that both model packages use (``tokenizers_vq`` and ``prior`` never import each other).

``JsonConfig``: JSON round-tripping for config dataclasses. ``FolderMixin``: atomic ``save_pretrained`` /
``from_pretrained`` folders (``config.json`` + ``model.safetensors`` + ``README.md``). ``load_safetensors``:
reads a weights or token file and turns a truncated or corrupt one into an error that names it.
"""

from .folder import (
    FolderMixin,
    atomic_write_bytes,
    atomic_write_text,
    fingerprint_module,
    load_safetensors,
    load_safetensors_into,
    save_safetensors,
)
from .jsonconfig import JsonConfig

__all__ = ["FolderMixin", "JsonConfig", "atomic_write_bytes", "atomic_write_text", "fingerprint_module",
           "load_safetensors", "load_safetensors_into", "save_safetensors"]
