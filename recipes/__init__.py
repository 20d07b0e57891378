"""Recipes: the settings behind every number the README reports, one YAML file each, run with one command.

A recipe is a mapping of a training command's flag names to values (``pixelcnn_layers: 16``), plus ``command:``,
the command it is for; its first comment lines give the command line and the number it produced. Run one with
``vqgen train-prior --config recipes/compression/pixelcnn16.yaml --tokens ... --out ...`` (flags after it override
it); the bench scripts read the same files with ``load_recipe``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def recipe_names() -> list[str]:
    """Every recipe shipped here, as ``folder/name`` without ``.yaml``, sorted."""
    root = Path(str(resources.files(__name__)))
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, else a shipped recipe name (``compression/pixelcnn16``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = Path(str(resources.files(__name__))) / Path(str(name_or_path)).with_suffix(".yaml")
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no recipe file {name_or_path}: pass a YAML file, or one of the shipped recipes "
                            f"({', '.join(recipe_names())})")


def load_recipe(name_or_path: str | Path, command: str | None = None) -> dict[str, Any]:
    """The settings of a recipe (dashes in names turned into underscores), without its ``command`` key; a
    ``ValueError`` when it is for another command than ``command``, or is not a YAML mapping."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping of flag names to values, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    meant = data.pop("command", None)
    if command is not None and meant is not None and meant != command:
        raise ValueError(f"recipe {path} is for `vqgen {meant}`, not `vqgen {command}`")
    return data
