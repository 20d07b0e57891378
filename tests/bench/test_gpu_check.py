"""bench/gpu_check.sh, the prepared GPU check (issue 12 item 4): its ``--dry-run`` walks every step on the CPU and
reports each ok; its bookkeeping records a failed, capped or skipped step and goes on; bad input is refused clearly;
the wheels it carries to the GPU image satisfy vqgen's own requirements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from bench.gpu import install, report

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "VQGEN_TEST_DEVICE", "GPU_CHECK_BUDGET")} | (env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


# ---------------------------------------------------------------------------------------------- the dry run
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run_walks_every_step_on_the_cpu_and_reports_each_ok(tmp_path):
    docs_md = ROOT / "docs" / "benchmarks" / "gpu_check.md"
    docs_before = docs_md.read_text() if docs_md.is_file() else None
    results_before = (ROOT / "bench" / "results" / "gpu_check.json").is_file()
    out = tmp_path / "out"  # what the device tool would bring back
    out.mkdir()
    r = _run("--dry-run", "--results-dir", str(tmp_path / "res"), timeout=880,
             env={"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "OUT": str(out)})
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "gpu_check_pytest.log",
                                                     "gpu_check_steps.tar.gz"]  # the device tool takes <= 8 files
    with tarfile.open(out / "gpu_check_steps.tar.gz") as tar:
        assert {f"gpu_check/{name}.json" for name in report.STEPS} <= set(tar.getnames())
    tmp_path = tmp_path / "res"
    s = json.loads((tmp_path / "gpu_check.json").read_text())
    assert s["dry_run"] is True and s["ok"] is True
    assert s["statuses"] == {name: "ok" for name in report.STEPS}
    steps = s["steps"]
    assert steps["install"]["missing"] == [] and set(steps["install"]["imports"].values()) == {"ok"}
    assert steps["environment"]["rows"][0]["tflops"] > 0
    t = steps["tests"]["tests"]
    assert t["total"] >= 5 and t["passed"] == t["total"] and t["skipped"] == 0  # VQGEN_TEST_DEVICE=cpu: none skipped
    rows = steps["sparse_attention"]["rows"]
    assert {(r["method"], r["L"]) for r in rows} == {(m, L) for L in (256, 512) for m in
                                                      ("dense causal", "strided factorised", "fixed factorised")}
    assert all(r["ms"] > 0 for r in rows) and set(steps["sparse_attention"]["vs_dense"]) == {
        f"{p} factorised @ {L}" for p in ("strided", "fixed") for L in (256, 512)}
    modes = {r["mode"]: r for r in steps["train_mfu"]["rows"]}
    assert set(modes) == {"eager", "loop"} and all(r["tokens_per_s"] > 0 and r["mfu_vs_measured"] > 0
                                                   for r in modes.values())
    samp = {r["batch"]: r for r in steps["sampling"]["rows"]}
    assert set(samp) == {1, 2} and all(v > 0 for r in samp.values() for v in r["tokens_per_s"].values())
    fsdp = {r["stage"]: r for r in steps["fsdp"]["rows"]}
    assert fsdp["resume"]["metrics"]["step"] == 9 and fsdp["load+sample"]["relative_difference"] < 0.03
    _check_tokenize(steps["tokenize"])
    for name in report.STEPS:  # each step's own record and log
        assert (tmp_path / "gpu_check" / f"{name}.json").is_file() and (tmp_path / "gpu_check" / f"{name}.log").is_file()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Dry run on the CPU" in md and "| 6. 1-GPU FSDP smoke run | ok |" in md
    assert "| 7. `vqgen tokenize` on the GPU and the CPU | ok |" in md
    # a dry run leaves the repository's results and docs alone
    assert (docs_md.read_text() if docs_md.is_file() else None) == docs_before
    assert (ROOT / "bench" / "results" / "gpu_check.json").is_file() == results_before


def _check_tokenize(d: dict) -> None:
    """Step 7's dry-run record: the "cuda" run (on the CPU) of the whole 64-image corpus, the cpu run of its first
    quarter of the training split plus the test split, identical grids on those (the same device twice)."""
    assert d["status"] == "ok" and d["dry_run"] is True and d["tokenizer"]["token_shape"] == [16, 16]
    assert "untrained" in d["tokenizer"]["weights"] and d["corpus"]["images"] == 64
    runs = {r["run"]: r for r in d["rows"]}
    assert set(runs) == {"cuda", "cpu"} and {r["device"] for r in runs.values()} == {"cpu"}
    gpu, cpu = runs["cuda"], runs["cpu"]
    assert gpu["images"] == 64 and cpu["limit"] == 14 and cpu["images"] == 14 + gpu["grids"]["test"]
    for r in (gpu, cpu):
        assert r["wall_s"] > 0 and r["stage_s"] > 0 and r["stage_tokens_per_s"] == pytest.approx(
            256 * r["stage_images_per_s"], rel=1e-3)
        assert "--device cpu --batch-size 16 --seed 0" in r["command"]
    assert cpu["vs_run_1"] == {"images_compared": cpu["images"], "grids_identical": 1.0, "tokens_identical": 1.0}
    assert d["cuda_over_cpu"]["per"] == "stage_images_per_s" and d["cuda_over_cpu"]["ratio"] > 0


@pytest.mark.slow
def test_dry_run_of_the_tokenize_step_alone(tmp_path):
    """Step 7 by itself (``--only tokenize``): three interpreter starts, about 30 s on the shared machine."""
    r = _run("--dry-run", "--only", "tokenize", "--results-dir", str(tmp_path), timeout=280,
             env={"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    s = json.loads((tmp_path / "gpu_check.json").read_text())
    assert s["statuses"] == {"tokenize": "ok"}
    _check_tokenize(s["steps"]["tokenize"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| 7. `vqgen tokenize` on the GPU and the CPU | ok |" in md
    assert "| cpu | cpu | 21 | 16 | 0 |" in md and "100.00% (100.0000%) of 21 |" in md


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_arguments_and_a_missing_interpreter_are_refused_with_the_fix():
    r = _run("--frobnicate")
    assert r.returncode == 2 and "unknown argument '--frobnicate' (try --help)" in r.stderr
    r = _run("--budget", "soon")
    assert r.returncode == 2 and "--budget must be whole seconds, got 'soon'" in r.stderr
    r = _run("--dry-run", env={"PYTHON": "/nonexistent/python"})
    assert r.returncode == 2 and "no python interpreter '/nonexistent/python'; set PYTHON=" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_gpu_run_without_cuda_fails_its_step_and_says_to_dry_run(tmp_path):
    r = _run("--only", "environment", "--results-dir", str(tmp_path), env={"PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 1, r.stdout[-3000:]
    env = json.loads((tmp_path / "gpu_check" / "environment.json").read_text())
    assert env["status"] == "failed" and env["rc"] == 1
    assert env["error"].startswith("RuntimeError: CUDA is not available to ") and "--dry-run" in env["error"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["statuses"] == {"environment": "failed"}


# ---------------------------------------------------------------------------------------------- bookkeeping
def _record(tmp_path, step: str, rc: int, log: str = "", junit: Path | None = None, dry_run: bool = False) -> dict:
    (tmp_path / f"{step}.log").write_text(log)
    report.record(Namespace(results=str(tmp_path), step=step, rc=rc, seconds=12.0, cap=60.0,
                            log=str(tmp_path / f"{step}.log"), junit=str(junit) if junit else None, dry_run=dry_run))
    return json.loads((tmp_path / f"{step}.json").read_text())


def test_a_step_killed_at_its_cap_is_a_timeout_that_keeps_its_rows(tmp_path):
    rows = [{"method": "dense causal", "L": 4096, "ms": 3.0}, {"method": "strided flex", "L": 4096, "ms": 1.0}]
    (tmp_path / "sparse_attention.json").write_text(json.dumps({"step": "sparse_attention", "status": "running",
                                                                "rows": rows}))
    d = _record(tmp_path, "sparse_attention", 124, log="compiling\nL=16384 fixed flex\n")
    assert d["status"] == "timeout" and d["error"] == "stopped at its time cap of 60 s" and d["rows"] == rows
    assert d["log_tail"][-1] == "L=16384 fixed flex" and d["wall_s"] == 12.0 and d["cap_s"] == 60.0


def test_a_step_that_died_before_writing_its_record_is_failed_with_its_last_words(tmp_path):
    d = _record(tmp_path, "sampling", 1, log="Traceback ...\nImportError: No module named 'transformers'\n")
    assert d["status"] == "failed"
    assert d["error"] == "exit status 1: ImportError: No module named 'transformers'"
    d = _record(tmp_path, "train_mfu", 0)
    assert d["status"] == "failed" and d["error"] == "the step exited without finishing its record"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_cuda" name="test_a"/>
<testcase classname="tests.test_cuda" name="test_b">{b}</testcase>
<testcase classname="tests.pipelines.test_cli" name="test_c"/>
</testsuite></testsuites>"""


def test_pytest_results_become_counts_and_a_skipped_cuda_test_fails_a_gpu_run(tmp_path):
    xml = tmp_path / "pytest.xml"
    xml.write_text(JUNIT.format(b='<failure message="assert 0.91 &gt;= 0.97">trace</failure>'))
    d = _record(tmp_path, "tests", 1, junit=xml)
    counts = {k: d["tests"][k] for k in ("total", "passed", "failed", "errors", "skipped")}
    assert d["status"] == "failed" and counts == {"total": 3, "passed": 2, "failed": 1, "errors": 0, "skipped": 0}
    assert d["tests"]["failures"] == [{"test": "tests.test_cuda::test_b", "message": "assert 0.91 >= 0.97"}]
    assert d["error"] == "1 test(s) failed, e.g. tests.test_cuda::test_b"
    xml.write_text(JUNIT.format(b='<skipped message="needs CUDA"/>'))
    d = _record(tmp_path, "tests", 0, junit=xml)
    assert d["status"] == "failed" and d["error"].startswith("1 CUDA test(s) skipped on the GPU run")
    assert _record(tmp_path, "tests", 0, junit=xml, dry_run=True)["status"] == "ok"
    xml.unlink()
    assert _record(tmp_path, "tests", 4, junit=xml)["error"] == "pytest wrote no report (exit status 4)"


def test_summary_joins_the_steps_and_fails_unless_every_step_is_ok(tmp_path):
    report.save(tmp_path / "environment.json", {"step": "environment", "status": "ok", "rows": [
        {"n": 8192, "dtype": "bfloat16", "reps": 10, "ms": 1.4, "tflops": 780.0}], "peak_tflops_measured": 780.0,
        "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "torch": "2.11.0", "cuda": "13.0"}})
    report.skip(Namespace(results=str(tmp_path), step="sampling", reason="not started: the run's 470 s budget was spent"))
    args = Namespace(results=str(tmp_path), json=str(tmp_path / "s.json"), md=str(tmp_path / "s.md"), seconds=400.0,
                     dry_run=False)
    assert report.summary(args) == 1
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["ok"] is False and s["statuses"] == {"environment": "ok", "sampling": "skipped"}
    md = (tmp_path / "s.md").read_text()
    assert "on NVIDIA H200 (139.8 GiB" in md and "8192^3 bfloat16, 780.0 TFLOP/s" in md
    assert "| 5. KV-cached sampling vs HF generate() | skipped | - (-) | not started: the run's 470 s budget" in md
    (tmp_path / "sampling.json").unlink()
    assert report.summary(args) == 0


def test_the_tokenize_table_shows_measured_failed_and_skipped_runs():
    d = {"tokenizer": {"config": {"autoencoder": "resnet"}, "token_shape": [16, 16], "vocab_size": 1000,
                       "parameters": 619280, "weights": "random (untrained, torch.manual_seed(0)): timing only"},
         "corpus": {"images": 4000}, "cuda_over_cpu": {"per": "stage_images_per_s", "ratio": 12.345},
         "rows": [{"run": "cuda", "device": "cuda", "images": 4000, "batch_size": 256, "num_workers": 0,
                   "wall_s": 9.5, "images_per_s": 421.1, "stage_s": 2.0, "stage_images_per_s": 2000.0,
                   "stage_tokens_per_s": 512000.0},
                  {"run": "cpu", "device": "cpu", "images": 760, "batch_size": 256, "num_workers": 0, "wall_s": 8.0,
                   "images_per_s": 95.0, "stage_s": None,
                   "vs_run_1": {"images_compared": 760, "grids_identical": 0.9875, "tokens_identical": 0.99995}},
                  {"run": "cuda, 8 workers", "device": "cuda", "skipped": "budget: 3 s left"}]}
    text = "\n".join(report._tokenize(d))
    assert "4000 synthetic 64x64 RGB PNGs; tokenizer resnet [16, 16] grid, 1000 codes, 619,280 parameters" in text
    assert "| cuda | cuda | 4000 | 256 | 0 | 9.50 | 421 | 2.00 | 2,000 | 512,000 | - |" in text
    assert "| cpu | cpu | 760 | 256 | 0 | 8.00 | 95 | - | - | - | 98.75% (99.9950%) of 760 |" in text
    assert "| cuda, 8 workers | cuda | budget: 3 s left |" in text and "cuda / cpu images/s (stage): 12.35x." in text


def test_the_section_before_a_gpu_run_says_so():
    text = report.markdown(None)
    assert "**No GPU run has happened yet.**" in text and 'carry: ["wheelhouse"]' in text
    assert (ROOT / "docs" / "benchmarks" / "gpu_check.md").read_text().startswith(report.markdown(None))


# ---------------------------------------------------------------------------------------------- the wheels
def test_the_pinned_wheels_satisfy_vqgen_requirements_and_bad_lines_are_named(tmp_path):
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pins = dict(install.pinned())
    assert len(pins) == len(install.pinned())  # one version of each: two would stop the whole install
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    checked = 0
    for dep in map(Requirement, deps):
        name = next((n for n in pins if install.norm(n) == install.norm(dep.name)), None)
        if name is not None:
            assert dep.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {dep}"
            checked += 1
    assert checked >= 4  # vector-quantize-pytorch, soundfile, mlxtend, constriction
    bad = tmp_path / "wheels.txt"
    bad.write_text("einx==0.4.3\nsoundfile>=0.12  # ranges cannot be downloaded reproducibly\n")
    with pytest.raises(ValueError, match=r"wheels.txt:2: expected 'name==version', got 'soundfile>=0.12'"):
        install.pinned(bad)
