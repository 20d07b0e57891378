"""The house rules, read off the code's own imports: ``prior`` and ``tokenizers_vq`` never import each other or
``pipelines``; ``vqgen_io`` (what both share) imports none of them; ``bench`` (the benchmarks) may import all
four, but nothing in them or in ``scripts/`` imports ``bench``; and no module-level import cycle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vqgen_io", "tokenizers_vq", "prior", "pipelines", "bench", "scripts")  # scripts/: run as files
FORBIDDEN = {
    "vqgen_io": {"tokenizers_vq", "prior", "pipelines", "bench", "scripts"},
    "tokenizers_vq": {"prior", "pipelines", "bench", "scripts"},
    "prior": {"tokenizers_vq", "pipelines", "bench", "scripts"},
    "pipelines": {"bench", "scripts"},
    "scripts": {"bench"},
    "bench": {"scripts"},
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
