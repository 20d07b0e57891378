"""JSON round-tripping for the config dataclasses (``TokenizerConfig``, ``PriorConfig``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for a dataclass: ``to_json`` writes the fields plus ``class_name`` (which model the config
    builds); ``from_dict`` refuses unknown fields with a ``ValueError`` naming them."""

    class_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known - {"class_name"}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps({"class_name": self.class_name, **self.to_dict()}, indent=2)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        return cls.from_json(Path(path).read_text())
