"""Registered components and model configs made of a shared part plus one section per chosen component.

A component (a quantizer, a prior architecture, an autoencoder family, a dataset) is one file that declares its
config dataclass (every field with its default and a trailing ``# comment`` that is its help text) and registers
itself under its name::

    @dataclass
    class MADEConfig(ComponentConfig):
        made_hidden: tuple[int, ...] = (256, 256)  # hidden widths

    @ARCHS.register("made", config=MADEConfig)
    class MADE(PriorNet): ...

A ``SectionedConfig`` (``PriorConfig``, ``TokenizerConfig``) holds the fields every model shares plus the section of
each chosen component, saved as ``{"arch": "made", "net": {...}}``. Section fields keep the flat names the configs
had before sections existed (``made_hidden``, ``codebook_size``), so ``PriorConfig(arch="made", made_hidden=(64,))``
and ``config.made_hidden`` work as they always did, and the command line's flags are those same names.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from .jsonconfig import JsonConfig

T = TypeVar("T")


@dataclasses.dataclass
class ComponentConfig:
    """Base of a component's config section. ``finalize(parent)`` derives the fields left ``None`` and checks the
    values that depend on the parent config's shared fields (raise ``ValueError`` with the fix)."""

    def finalize(self, parent: Any) -> None:
        """Derive and check fields that need the parent config (its shared fields are set); default: nothing."""


# Field metadata of a setting added to a config after format 2 was first released: left at its default it is not
# hashed, so folders saved before it existed keep their fingerprints (`field(default=..., metadata=ADDED_LATER)`).
ADDED_LATER = {"added_later": True}


def _drop_later_defaults(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (``asdict(obj)``) less ``obj``'s ADDED_LATER fields that hold their default."""
    for f in dataclasses.fields(obj):
        if f.metadata.get("added_later") and f.name in d:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            if d[f.name] == default:
                del d[f.name]
    return d


@dataclasses.dataclass
class NoConfig(ComponentConfig):
    """The section of a component without settings of its own."""


class Registry:
    """Components of one kind by name. ``package``: where they live; every module in it is imported on first use,
    so a new component is one new file there (its ``register`` call runs on import)."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._entries: dict[str, type] = {}
        self._discovered = False

    def register(self, name: str, config: type[ComponentConfig] = NoConfig) -> Callable[[type[T]], type[T]]:
        """Class decorator: the component ``cls`` under ``name`` with its config dataclass ``config``
        (``cls.name`` and ``cls.config_class`` are set)."""

        def deco(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"two {self.kind}s registered as {name!r}: {self._entries[name]} and {cls}")
            if not (dataclasses.is_dataclass(config) and issubclass(config, ComponentConfig)):
                raise TypeError(f"{cls.__name__}: config must be a ComponentConfig dataclass, got {config}")
            cls.name, cls.config_class = name, config  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return deco

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True  # set first: the modules imported below may ask for the registry themselves
        pkg = importlib.import_module(self.package)
        for m in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{m.name}")

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted (the order modules happened to be imported in must not show)."""
        self._discover()
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Any:
        """The component class registered as ``name``; a ``ValueError`` listing the choices otherwise."""
        self._discover()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._entries[name]

    def config_class(self, name: str) -> type[ComponentConfig]:
        return self.get(name).config_class

    def field_owners(self) -> dict[str, list[str]]:
        """Each section field name -> the components (in registration order) whose config declares it."""
        owners: dict[str, list[str]] = {}
        for name in self.names():
            for f in dataclasses.fields(self.config_class(name)):
                owners.setdefault(f.name, []).append(name)
        return owners


def _same(a: Any, b: Any) -> bool:
    """Equal as settings (a tuple and a list of the same values are the same setting)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise TypeError(f"field {f.name} has no default")


class SectionedConfig(JsonConfig):
    """Mixin for a model config dataclass (declared with ``@dataclass(init=False)``): its own (shared) fields, plus
    for each entry of ``SECTIONS`` (section attribute -> (selector field, registry)) a field holding the chosen
    component's config. The constructor takes keywords only: shared fields, a section as a dict or a config
    instance, and section fields by their flat names. Reading or setting ``config.<section field>`` reaches the
    section. Fields of components that are not chosen are accepted and ignored (one set of keywords can build any
    component, as with the single flat config of format 1), except a field declared with ``metadata={"strict":
    True}`` set to other than its default: that is a ``ValueError`` naming the components that have it (a
    capability the chosen one lacks, e.g. ``output="logistic_mixture"``). Unknown names are a ``ValueError``.
    (The command line is stricter: a flag the chosen component does not have is an error.)

    Subclasses may override ``_derive_selectors(given)`` (fill selectors left ``None`` from the keywords) and set
    ``LEGACY`` (a reader for format-1 flat dicts; see ``prior/legacy.py``)."""

    SECTIONS: ClassVar[dict[str, tuple[str, Registry]]] = {}
    FORMAT_VERSION: ClassVar[int] = 2
    LEGACY: ClassVar[LegacyFormat | None] = None

    def __init__(self, **kwargs: Any):
        own = [f for f in dataclasses.fields(self) if f.name not in self.SECTIONS]  # type: ignore[arg-type]
        for f in own:
            object.__setattr__(self, f.name, kwargs.pop(f.name) if f.name in kwargs else _field_default(f))
        given = {s: kwargs.pop(s, None) for s in self.SECTIONS}
        self._derive_selectors(kwargs)
        for section, (selector, registry) in self.SECTIONS.items():
            cls = registry.config_class(getattr(self, selector))  # ValueError naming the choices
            base = given[section]
            base = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base or {})
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = set(base) - names
            if unknown:
                raise ValueError(f"{getattr(self, selector)!r} has no settings {sorted(unknown)}; its settings: "
                                 f"{sorted(names)}")
            base |= {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            object.__setattr__(self, section, cls(**base))
        foreign = {n for _, reg in self.SECTIONS.values() for n in reg.field_owners()}
        unknown = set(kwargs) - foreign - {"class_name"}
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} fields {sorted(unknown)}")
        self._refuse_settings_of_others(kwargs)
        self.__post_init__()
        for section in self.SECTIONS:
            getattr(self, section).finalize(self)
        self._check_sections()

    def _refuse_settings_of_others(self, values: dict[str, Any]) -> None:
        """``ValueError`` for a strict field (``metadata={"strict": True}``) of components not chosen, set to other
        than its default there."""
        for name, value in values.items():
            for selector, registry in self.SECTIONS.values():
                owners = registry.field_owners().get(name, [])
                fields = [next(f for f in dataclasses.fields(registry.config_class(o)) if f.name == name)
                          for o in owners]
                if any(f.metadata.get("strict") for f in fields) and not any(
                        _same(value, _field_default(f)) for f in fields):
                    raise ValueError(f"{name}={value!r} is a setting of {registry.kind} {', '.join(owners)}, not of "
                                     f"{getattr(self, selector)!r} (this config's {selector}): drop it, or choose one "
                                     "of those")

    def __post_init__(self) -> None:
        """Checks of the shared fields (subclasses); the sections exist but are not finalized yet."""

    def _check_sections(self) -> None:
        """Checks that need the finalized sections (subclasses)."""

    def _derive_selectors(self, given: dict[str, Any]) -> None:
        """Fill selector fields left ``None`` (``given``: the keywords not yet used)."""

    @classmethod
    def known_fields(cls) -> set[str]:
        """Every keyword the constructor takes by name: the shared fields and every registered section field."""
        own = {f.name for f in dataclasses.fields(cls) if f.name not in cls.SECTIONS}  # type: ignore[arg-type]
        return own | {n for _, registry in cls.SECTIONS.values() for n in registry.field_owners()}

    # ------------------------------------------------------------------ flat access to section fields
    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        if not name.startswith("_"):
            for section in type(self).SECTIONS:
                sec = self.__dict__.get(section)
                if sec is not None and hasattr(sec, name):
                    return getattr(sec, name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}" + self._owner_hint(name))

    def _owner_hint(self, name: str) -> str:
        for selector, registry in type(self).SECTIONS.values():
            owners = registry.field_owners().get(name)
            if owners:
                return (f": it is a setting of {registry.kind} {', '.join(owners)}, and this config's {selector} is "
                        f"{self.__dict__.get(selector)!r}")
        return ""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__ and not name.startswith("_"):  # type: ignore[attr-defined]
            for section in type(self).SECTIONS:
                sec = self.__dict__.get(section)
                if sec is not None and name in sec.__dataclass_fields__:
                    setattr(sec, name, value)
                    return
        object.__setattr__(self, name, value)

    def replace(self: T, **changes: Any) -> T:
        """A new config with ``changes`` (shared or section fields by name; a new selector picks that component's
        section, whose fields start from its defaults). A config read from format 1 stays format 1 when it can."""
        new = type(self)(**(self.flat_dict() | changes))  # type: ignore[attr-defined]
        source = self.__dict__.get("_v1_source")
        if source is not None:
            object.__setattr__(new, "_v1_source", source)
        return new

    # ------------------------------------------------------------------ JSON
    def _later_defaults(self) -> set[str]:
        """Names of the ADDED_LATER fields (shared or of the chosen sections) that hold their default."""
        names = set(dataclasses.asdict(self)) - set(_drop_later_defaults(self, dataclasses.asdict(self)))  # type: ignore[call-overload]
        for section in self.SECTIONS:
            sec = getattr(self, section)
            names |= set(dataclasses.asdict(sec)) - set(_drop_later_defaults(sec, dataclasses.asdict(sec)))
        return names

    def flat_dict(self) -> dict[str, Any]:
        """Shared fields and the chosen sections' fields in one flat dict (the names the flags use)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.SECTIONS}  # type: ignore[call-overload]
        for section in self.SECTIONS:
            d |= dataclasses.asdict(getattr(self, section))
        return d

    def canonical_dict(self) -> dict[str, Any]:
        """The config in the current format, whatever format it was read from (to compare two configs)."""
        return dataclasses.asdict(self) | {"format_version": self.FORMAT_VERSION}  # type: ignore[call-overload]

    def _as_v1(self) -> dict[str, Any] | None:
        """The format-1 flat dict of a config read from a format-1 file, while it still is one (None otherwise)."""
        source = self.__dict__.get("_v1_source")
        legacy = type(self).LEGACY
        if source is None or legacy is None:
            return None
        later = self._later_defaults()
        flat = {k: v for k, v in self.flat_dict().items() if k not in legacy.implied and k not in later}
        if not set(flat) <= set(source) or not legacy.representable(self):
            return None
        # keep the file's own spelling of unchanged values (1 vs 1.0 hash differently)
        return source | {k: v for k, v in flat.items() if source.get(k) != v} | {"format_version": 1}

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the shared fields and a dict per section (``{"arch": "made", "net": {...}}``).
        A config read from a format-1 file is written back in format 1 (so its fingerprint, which prior folders and
        compressed files record, stays the same)."""
        v1 = self._as_v1()
        return v1 if v1 is not None else self.canonical_dict()

    def identity_dict(self) -> dict[str, Any]:
        """What the fingerprint hashes: the shared fields and the chosen sections (format-1 configs: what format 1
        hashed, through ``LEGACY.identity``)."""
        v1 = self._as_v1()
        if v1 is not None:
            return type(self).LEGACY.identity(v1)
        d = _drop_later_defaults(self, self.canonical_dict())
        for section in self.SECTIONS:
            if isinstance(d.get(section), dict):
                d[section] = _drop_later_defaults(getattr(self, section), d[section])
        return d

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Rebuild from ``to_dict()`` output, in this format or (through ``LEGACY``) format 1's flat dicts."""
        d = {k: v for k, v in d.items() if k != "class_name"}
        version = d.get("format_version", 1)
        if not isinstance(version, int) or version > cls.FORMAT_VERSION:
            raise ValueError(f"this {cls.__name__} was saved with format_version {version!r}, newer than this "
                             f"vqgen understands ({cls.FORMAT_VERSION}): upgrade vqgen")
        legacy = cls.LEGACY  # type: ignore[attr-defined]
        if version >= 2 or legacy is None or any(s in d for s in cls.SECTIONS):  # type: ignore[attr-defined]
            return cls(**d)  # type: ignore[call-arg]
        unknown = set(d) - set(legacy.fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        source = legacy.upgrade(legacy.fields | d | {"format_version": 1})  # what format 1 held after loading
        config = cls(**source, **legacy.implied_values(source))  # type: ignore[call-arg]
        object.__setattr__(config, "_v1_source", source)
        return config


class LegacyFormat:
    """How a ``SectionedConfig`` reads and hashes format 1 (one flat dataclass holding every component's fields).
    Subclasses give ``fields`` (every format-1 field with its default, frozen), ``identity(flat)`` (what format 1's
    fingerprint hashed), and may override ``upgrade`` and ``representable``."""

    fields: dict[str, Any] = {}
    implied: tuple[str, ...] = ()  # current fields format 1 had no field for (it implied them from others)

    def implied_values(self, source: dict[str, Any]) -> dict[str, Any]:
        """Values of ``implied`` fields that today's defaults would no longer give for a format-1 file (passed to
        the constructor, kept out of the format-1 dict and its hash); default: none."""
        return {}

    def upgrade(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Format-1 flat dict -> constructor keywords (default: the same names, which the sections kept)."""
        return dict(flat)

    def representable(self, config: Any) -> bool:
        """Whether ``config`` can still be written in format 1 (its components existed then)."""
        return True

    def identity(self, flat: dict[str, Any]) -> dict[str, Any]:
        return flat
