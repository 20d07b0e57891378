"""bench/ is a package: every script runs as ``python -m bench.NAME`` from the repository root (its ``--help`` names
that command), every module imports without path edits, and nothing tells a user to run ``python bench/NAME.py``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "bench").rglob("*.py")
                 if p.name != "__init__.py")
SCRIPTS = [m for m in MODULES if 'if __name__ == "__main__":' in (ROOT / (m.replace(".", "/") + ".py")).read_text()]


def test_the_scripts_are_found():
    assert {"bench.compression", "bench.tokenizer_quality", "bench.assemble_docs", "bench.gpu.report",
            "bench.gpu.sparse_flex"} <= set(SCRIPTS)
    assert {"bench.common", "bench.baselines", "bench.speech_peers", "bench.gpu.stepkit"} <= set(MODULES) - set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_answers_help(name, monkeypatch, capsys):
    mod = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [name, "--help"])  # the scripts whose main() takes no argv read sys.argv
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 0
    out = capsys.readouterr().out
    if "stepkit.parse_args" not in Path(mod.__file__).read_text():  # a GPU step names the module run as __main__
        assert out.startswith(f"usage: python -m {name} "), out[:200]


def test_a_script_runs_with_python_m_from_the_root():
    r = subprocess.run([sys.executable, "-m", "bench.assemble_docs", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m bench.assemble_docs"), r.stderr[-2000:]


def test_no_how_to_run_text_names_a_bench_file():
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "bench" / "gpu_check.sh", *(ROOT / "docs").rglob("*.md"),
             *(ROOT / "bench").rglob("*.py"), *(ROOT / "bench").rglob("*.sh")]
    stale = re.compile(r"python3? +bench/|\"\$PY\" +bench/")  # `python bench/x.py` no longer imports `bench`
    bad = [f"{f.relative_to(ROOT)}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
           if stale.search(line)]
    assert not bad, bad
