"""Command-line flags generated from the config dataclasses, parsed by tyro.

A command's flags are groups of fields: plain dataclasses (``DataOptions``, ``TrainConfig``, the command's own
options) whose fields give each flag's name, type, default and help text (the ``# comment`` on the field, read by
tyro), and model groups (``PriorConfig``, ``TokenizerConfig``) whose flags are their shared fields plus every
registered component's section fields (``--made-hidden``, ``--codebook-size``). A section flag reaches the model
only when it was given (on the command line or in a ``--config`` file), so each component keeps its own defaults;
a section flag the chosen component does not have is an error that names the components that have it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from vqgen_io.components import Registry


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of dataclass ``cls``: its docstring entry or trailing ``# comment``."""
    from tyro import _docstrings  # tyro's own reader of field comments (the text `--help` would show)

    try:
        return _docstrings.get_field_docstring(cls, name, ()) or ""
    except Exception:  # noqa: BLE001 - a missing help text must never break the command line
        return ""


@dataclasses.dataclass
class Flag:
    """One flag: ``name`` is the field name (``--name-with-dashes`` on the command line)."""

    name: str
    type: Any
    default: Any = dataclasses.MISSING  # MISSING: required
    help: str = ""
    hint: str | None = None  # replaces tyro's "(default: ...)" note
    positional: bool = False
    section: str | None = None  # the model section this field belongs to ("net"); None: an ordinary option


@dataclasses.dataclass
class Group:
    """A titled set of flags (one box in ``--help``)."""

    title: str
    flags: list[Flag]


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def dataclass_group(title: str, cls: type, *, skip: Iterable[str] = (), defaults: dict[str, Any] | None = None
                    ) -> Group:
    """Flags for the fields of dataclass ``cls`` (less ``skip``), with ``defaults`` overriding the field defaults."""
    hints, defaults = _resolved_hints(cls), defaults or {}
    flags = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_") or f.metadata.get("flag") is False:
            continue
        default = defaults.get(f.name, f.default)
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        flags.append(Flag(f.name, hints[f.name], default, field_help(cls, f.name),
                          positional=bool(f.metadata.get("positional"))))
    return Group(title, flags)


def model_group(title: str, config_cls: type, *, skip: Iterable[str] = (), defaults: dict[str, Any] | None = None,
                choices: dict[str, Registry] | None = None) -> Group:
    """Flags for a ``SectionedConfig``: its shared fields (less ``skip`` and the sections) and the union of every
    registered component's section fields. ``choices``: selector field -> registry, shown as choices."""
    skip = set(skip) | set(config_cls.SECTIONS)
    group = dataclass_group(title, config_cls, skip=skip, defaults=defaults)
    for flag in group.flags:
        if choices and flag.name in choices:
            names = tuple(choices[flag.name].names())
            flag.type = Literal[names] if flag.default is not None else Literal[names] | None  # type: ignore[valid-type]
    seen = {f.name for f in group.flags}
    for section, (_, registry) in config_cls.SECTIONS.items():
        for name, owners in registry.field_owners().items():
            if name in seen:
                continue
            seen.add(name)
            first = registry.config_class(owners[0])
            f = next(x for x in dataclasses.fields(first) if x.name == name)
            defaults_by = {}
            for owner in owners:
                g = next(x for x in dataclasses.fields(registry.config_class(owner)) if x.name == name)
                defaults_by.setdefault(_show(_default(g)), []).append(owner)
            shown = "; ".join(f"{d} ({', '.join(o)})" if len(defaults_by) > 1 else d for d, o in defaults_by.items())
            help_text = field_help(first, name)
            if len(owners) < len(registry.names()):
                help_text = f"[{', '.join(owners)}] {help_text}"
            group.flags.append(Flag(name, _resolved_hints(first)[name], _default(f), help_text,
                                    hint=f"(default: {shown})", section=section))
    return group


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- parsing
@dataclasses.dataclass
class Parsed:
    """What a command line gave: every flag's value (``values``), the flags set explicitly (on the command line
    or in a ``--config`` file: ``explicit``), and the groups they came from."""

    values: dict[str, Any]
    explicit: set[str]
    groups: list[Group]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def section_fields(self, title: str) -> dict[str, Any]:
        """The model fields of group ``title``: every shared field, and the section fields given explicitly."""
        group = next(g for g in self.groups if g.title == title)
        return {f.name: self.values[f.name] for f in group.flags if f.section is None or f.name in self.explicit}


def _flag_names(argv: list[str]) -> set[str]:
    """Field names of the flags present in argv (``--a-b``, ``--a_b``, ``--a-b=1``, ``--no-a-b``)."""
    names = set()
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name = tok[2:].split("=", 1)[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):
                names.add(name[3:])
    return names


def _split_commas(argv: list[str], sequence_flags: set[str]) -> list[str]:
    """``--fsq-levels 8,5,5,5`` -> ``--fsq-levels 8 5 5 5`` for sequence-typed flags (the old spelling)."""
    out: list[str] = []
    current = None
    for tok in argv:
        if tok.startswith("--"):
            current = tok[2:].split("=", 1)[0].replace("-", "_")
            out.append(tok)
        elif current in sequence_flags and "," in tok:
            out += [t for t in tok.split(",") if t]
        else:
            out.append(tok)
    return out


def _is_sequence(tp: Any) -> bool:
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
    args = typing.get_args(tp)
    if type(None) in args:
        tp = next(a for a in args if a is not type(None))
    return typing.get_origin(tp) in (list, tuple)


def load_config_file(path: str | Path, known: set[str], command: str) -> dict[str, Any]:
    """A recipe (``recipes.load_recipe``: a YAML mapping of flag names to values, or a shipped recipe's name) for
    ``command``. Unknown names are an error naming the file."""
    from recipes import load_recipe

    data = load_recipe(path, command)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {unknown} for `vqgen {command}` (see --help)")
    return data


def _group_class(group: Group, overrides: dict[str, Any]) -> type:
    fields = []
    for flag in group.flags:
        default = overrides.get(flag.name, flag.default)
        if isinstance(default, list) and _is_sequence(flag.type) and typing.get_origin(flag.type) is tuple:
            default = tuple(default)
        marks: list[Any] = [tyro.conf.arg(help=flag.help or None, help_behavior_hint=flag.hint)]
        if flag.positional:
            marks.append(tyro.conf.Positional)
        tp = Annotated[(flag.type, *marks)]  # type: ignore[valid-type]
        if default is dataclasses.MISSING:
            fields.append((flag.name, tp))
        elif isinstance(default, (list, dict, set)):
            fields.append((flag.name, tp, dataclasses.field(default_factory=lambda d=default: type(d)(d))))
        else:
            fields.append((flag.name, tp, dataclasses.field(default=default)))
    required = [f for f in fields if len(f) == 2]
    optional = [f for f in fields if len(f) == 3]
    title = re.sub(r"\W+", "_", group.title).strip("_") or "options"
    return dataclasses.make_dataclass(title, required + optional, kw_only=True)


def parse(argv: list[str], groups: list[Group], *, prog: str, description: str,
          config: dict[str, Any] | None = None) -> Parsed:
    """Parse ``argv`` against ``groups`` with tyro. ``config``: values from a recipe file (defaults that the
    command line overrides; they count as given)."""
    config = config or {}
    sequence = {f.name for g in groups for f in g.flags if _is_sequence(f.type)}
    argv = _split_commas(argv, sequence)
    classes = {g.title: _group_class(g, config) for g in groups}
    top = dataclasses.make_dataclass("Args", [
        (re.sub(r"\W+", "_", title), Annotated[cls, tyro.conf.OmitArgPrefixes, tyro.conf.arg(name=title)])
        for title, cls in classes.items()])
    result = tyro.cli(top, args=argv, prog=prog, description=description)
    values: dict[str, Any] = {}
    for title in classes:
        values |= dataclasses.asdict(getattr(result, re.sub(r"\W+", "_", title)))
    known = set(values)
    return Parsed(values, (_flag_names(argv) & known) | set(config), groups)


def check_sections(parsed: Parsed, title: str, chosen: dict[str, str], registries: dict[str, Registry]) -> None:
    """A section flag given for a component that does not have it is an error naming the components that do.
    ``chosen``: section -> chosen component name; ``registries``: section -> registry."""
    group = next(g for g in parsed.groups if g.title == title)
    for flag in group.flags:
        if flag.section is None or flag.name not in parsed.explicit or flag.section not in chosen:
            continue
        registry = registries[flag.section]
        name = chosen[flag.section]
        owners = registry.field_owners()[flag.name]
        if name not in owners:
            raise ValueError(f"--{flag.name.replace('_', '-')} is a setting of {registry.kind} {', '.join(owners)}, "
                             f"not of {name!r}: drop it, or choose one of those")


def to_yaml(values: dict[str, Any]) -> str:
    """A recipe file holding ``values`` (tuples as lists), which ``--config`` reads back."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)


Runner = Callable[[Parsed], int]
