"""The house rules, read off the code's own imports: ``prior`` and ``tokenizers_vq`` never import each other or
``pipelines``; ``vqgen_io`` (what both share) imports none of them; ``bench`` (the benchmarks) may import all
four, but nothing in them or in ``scripts/`` imports ``bench``; and no module-level import cycle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vqgen_io", "tokenizers_vq", "prior", "pipelines", "recipes", "bench", "scripts")  # scripts/: run as files
FORBIDDEN = {
    "vqgen_io": {"tokenizers_vq", "prior", "pipelines", "recipes", "bench", "scripts"},
    "tokenizers_vq": {"prior", "pipelines", "recipes", "bench", "scripts"},
    "prior": {"tokenizers_vq", "pipelines", "recipes", "bench", "scripts"},
    "recipes": {"vqgen_io", "tokenizers_vq", "prior", "pipelines", "bench", "scripts"},
    "pipelines": {"bench", "scripts"},
    "scripts": {"bench"},
    "bench": {"scripts"},
}
# Why each rule holds (docs/ARCHITECTURE.md shows these beside the import graph drawn from the code)
REASONS = {
    "vqgen_io": "the save/load helpers both model packages share: it can depend on neither",
    "tokenizers_vq": "a tokenizer is usable (and exportable) without priors, data loaders or training",
    "prior": "a prior models integer grids from any source: it knows nothing of tokenizers, data or training",
    "recipes": "settings files and their reader: data, not code that reaches into the packages",
    "pipelines": "the library (data, training, stages, the CLI): benchmarks and launch scripts sit above it",
    "scripts": "thin `accelerate launch` entry points into pipelines",
    "bench": "benchmarks use the library like a user; nothing but their tests imports them",
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the project modules ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return {m for m in found if m.split(".")[0] in PACKAGES}


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[0] in FORBIDDEN))
def test_model_packages_import_nothing_above_them(name: str) -> None:
    bad = {m for m in _imports(name, MODULES[name], top_level_only=False) if m.split(".")[0] in FORBIDDEN[name.split(".")[0]]}
    assert not bad, f"{name} imports {sorted(bad)}: {name.split('.')[0]} must not depend on them"


def test_every_package_is_checked() -> None:
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    assert {"bench", "bench.common", "bench.compression", "bench.gpu.stepkit", "scripts.train_prior"} \
        <= set(MODULES)


def test_no_module_level_import_cycles() -> None:
    graph = {n: {m for m in _imports(n, p, top_level_only=True) if m in MODULES and m != n} for n, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_rule_checker_sees_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text("from tokenizers_vq import load_tokenizer\nfrom ..pipelines.data import DataSpec\n")
    assert _imports("prior.mod", f, top_level_only=True) == {
        "tokenizers_vq", "tokenizers_vq.load_tokenizer", "pipelines.data", "pipelines.data.DataSpec"}
    f.write_text("def f():\n    import bench.compression\n    from bench.common import ROOT\n")  # lazy too
    assert _imports("pipelines.mod", f, top_level_only=False) == {"bench.compression", "bench.common",
                                                                   "bench.common.ROOT"}


# ---------------------------------------------------------------------------------------------- docs/ARCHITECTURE.md
def package_edges() -> set[tuple[str, str]]:
    """(A, B): some module of package A imports package B (anywhere in the module, lazy imports too)."""
    edges = set()
    for name, path in MODULES.items():
        for m in _imports(name, path, top_level_only=False):
            a, b = name.split(".")[0], m.split(".")[0]
            if a != b:
                edges.add((a, b))
    return edges


def _components() -> list[tuple[str, str, str, list[str]]]:
    """(kind, where a new one goes, its registry, the names registered now), read from the registries."""
    from prior import ARCHS
    from tokenizers_vq import AUTOENCODERS, QUANTIZERS

    rows = [("prior architecture", "prior/NAME.py: a ComponentConfig dataclass + `@ARCHS.register`", "prior.ARCHS",
             ARCHS.names()),
            ("quantizer", "tokenizers_vq/quantizers/NAME.py: config + `@QUANTIZERS.register`",
             "tokenizers_vq.QUANTIZERS", QUANTIZERS.names()),
            ("autoencoder family", "tokenizers_vq/autoencoders/NAME.py: config + `@AUTOENCODERS.register`",
             "tokenizers_vq.AUTOENCODERS", AUTOENCODERS.names())]
    try:
        from pipelines.data.spec import DATASETS

        rows.append(("built-in dataset", "pipelines/data/builtins/NAME.py: `@DATASETS.register`",
                     "pipelines.data.DATASETS", DATASETS.names()))
    except ImportError:
        pass
    from pipelines.commands import COMMANDS
    from recipes import recipe_names

    rows += [("command", "pipelines/commands.py: an options dataclass + a `COMMANDS` entry", "pipelines.commands.COMMANDS",
              list(COMMANDS)),
             ("recipe", "recipes/TOPIC/NAME.yaml: flag names to values, `command:`, the command line in a comment",
              "recipes.recipe_names()", recipe_names())]
    return rows


def architecture_markdown() -> str:
    """docs/ARCHITECTURE.md, generated from the code: ``python tests/test_layering.py > docs/ARCHITECTURE.md``."""
    lines = ["# Architecture", "",
             "Generated from the code by `python tests/test_layering.py > docs/ARCHITECTURE.md`; "
             "`tests/test_layering.py` fails when this file is stale or when an import breaks a rule below.", "",
             "## The packages and their imports", "",
             "An arrow A --> B: some module of A imports B today (read from the source). Every arrow obeys the rules "
             "in the table under it; `tests/test_layering.py` also keeps the code free of module-level import cycles.",
             "", "```mermaid", "flowchart TD"]
    lines += [f"    {a} --> {b}" for a, b in sorted(package_edges())]
    lines += ["```", "", "| package | must never import | why |", "|---|---|---|"]
    lines += [f"| `{pkg}` | {', '.join(f'`{f}`' for f in sorted(FORBIDDEN[pkg])) or '-'} | {REASONS[pkg]} |"
              for pkg in PACKAGES]
    lines += ["", "## Where each kind of component goes", "",
              "A component is one file that declares its config dataclass (each field's comment is its help text; the "
              "`vqgen` flags are generated from them) and registers under its name; the registries import every "
              "module of their folder, so adding one touches nothing else but its test.", "",
              "| kind | a new one | registry | registered now |", "|---|---|---|---|"]
    lines += [f"| {kind} | {where} | `{reg}` | {', '.join(names)} |" for kind, where, reg, names in _components()]
    return "\n".join(lines) + "\n"


def test_docs_architecture_md_is_generated_from_the_code() -> None:
    doc = ROOT / "docs" / "ARCHITECTURE.md"
    assert doc.read_text() == architecture_markdown(), \
        "docs/ARCHITECTURE.md is stale: python tests/test_layering.py > docs/ARCHITECTURE.md"
    for a, b in package_edges():  # the picture only draws allowed arrows
        assert b not in FORBIDDEN.get(a, set()), (a, b)


if __name__ == "__main__":
    import sys

    sys.path[0] = str(ROOT)  # not tests/, whose tests/prior folder would shadow the prior package
    print(architecture_markdown(), end="")
