"""Shared by the benchmarks: what they record about the machine, how they time a call, where they write their
results, how ``key=value`` overrides on their command lines are read, how they read the recipe files of
recipes/ (the settings behind each README number, which ``vqgen train-prior --config`` and ``vqgen
train-tokenizer --config`` read too), and how bench/compression.py and bench/ood.py train a prior recipe
(PriorConfig + TrainConfig fields) through the CLI's stage functions."""

from __future__ import annotations

import contextlib
import platform
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(fn):
    """(seconds, result) of one call of ``fn()``, by ``time.perf_counter``."""
    import time

    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def write_results(name: str, results: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``bench/results/<name>.json`` and ``docs/benchmarks/<name>.md`` (assembled into
    docs/BENCHMARKS.md by ``python -m bench.assemble_docs``); returns both paths."""
    import json

    out = ROOT / "bench" / "results" / f"{name}.json"
    md = ROOT / "docs" / "benchmarks" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    md.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    md.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(f"wrote {out.relative_to(ROOT)} and {md.relative_to(ROOT)}")
    return out, md


# YAML 1.2's float syntax: PyYAML reads YAML 1.1, where a float needs a dot, so "2e-3" would stay a string
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def parse_value(text: str) -> Any:
    """One override value as a YAML recipe file would hold it: ``8`` -> 8, ``2e-3`` -> 0.002, ``true`` -> True,
    ``[500, 500]`` -> [500, 500], ``{a: 1}`` -> {"a": 1}, ``null`` -> None; a bare word (``fixed``) or anything
    YAML cannot read stays the string it is."""
    import yaml  # PyYAML: a dependency of accelerate and huggingface_hub, so installed with vqgen

    if _FLOAT.fullmatch(text.strip()):
        return float(text) if any(c in text for c in ".eE") else int(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | None, *, flag: str = "--set",
                    known: Collection[str] | None = None) -> dict[str, Any]:
    """``key=value`` strings -> {key: value}, values read by ``parse_value`` (YAML); dashes in keys become
    underscores (``max-seconds=600`` -> max_seconds). ``known``: the keys allowed (None: any). A malformed item or
    an unknown key is a ValueError naming ``flag`` and the fix."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{flag}: {item!r} is not key=value (e.g. {flag} steps=2000 lr=2e-3)")
        if known is not None and key not in known:
            raise ValueError(f"{key!r} is not a field {flag} may set; known: {', '.join(sorted(known))}")
        out[key] = parse_value(text)
    return out


# ---------------------------------------------------------------------------------------------- prior recipes
# A recipe (bench/compression.py, bench/ood.py, bench/speech_compress.py) is PriorConfig fields + TrainConfig
# fields in one dict, read from a file of recipes/ and trained by the CLI's stage functions; ``steps`` sets
# the cosine schedule's length, ``max_seconds`` caps the wall clock.
MAX_TRAIN_S = 600  # the issues' cap: at most 10 CPU-minutes of training per prior
FIXED_BY_DATA = {"vocab_size", "shape", "num_classes", "num_codebooks", "format_version"}  # train_prior sets them
TRAIN_NOT_SETTABLE = {"out", "resume", "progress", "stop_after_step"}


def read_recipe(name: str, command: str) -> tuple[dict[str, Any], str]:
    """A shipped recipe (``compression/pixelcnn16``) or a YAML file -> (its settings without ``command``, the
    file as the results record it: relative to the repository, e.g. ``recipes/compression/pixelcnn16.yaml``).
    A recipe for another command than ``command`` (``train-prior`` / ``train-tokenizer``) is a ValueError."""
    from recipes import load_recipe, recipe_path

    path = recipe_path(name).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return load_recipe(path, command=command), str(shown)


def recipe_keys() -> set[str]:
    """The keys a recipe (and a ``--...-args`` override of one) may set."""
    from dataclasses import fields

    from pipelines.training.loop import TrainConfig
    from prior import PriorConfig

    return (PriorConfig.known_fields() | {f.name for f in fields(TrainConfig)} | STAGE_KEYS) - FIXED_BY_DATA \
        - TRAIN_NOT_SETTABLE


STAGE_KEYS = {"shift", "reference_fraction"}  # `vqgen train-prior` flags of the stage itself (``train_prior``'s)


def split_recipe(recipe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A recipe (less its ``STAGE_KEYS``) -> (PriorConfig fields, TrainConfig fields)."""
    from dataclasses import fields

    from pipelines.training.loop import TrainConfig

    train_keys = {f.name for f in fields(TrainConfig)}
    return ({k: v for k, v in recipe.items() if k not in train_keys},
            {k: v for k, v in recipe.items() if k in train_keys})


def tokenize_mnist(work: Path, levels: int, limit: int | None) -> Path:
    """``vqgen tokenize --raw --levels L --dataset mnist5k`` into work/tokens_L (``limit``: training digits)."""
    from pipelines.stages.tokenize import tokenize

    out = work / (f"tokens_{levels}" + ("" if limit is None else f"_limit{limit}"))
    tokenize({"name": "mnist5k", "limit": limit}, out, raw_levels=levels, progress=False, device="cpu")
    return out


def train_row(tokens_dir: Path, out: Path, recipe: dict[str, Any], seed: int,
              recipe_file: str | None = None) -> dict[str, Any]:
    """``vqgen train-prior`` with a recipe (its stage function) into ``out`` (a fresh run: an old ``out`` is
    removed); the budget actually used: steps done, what stopped training, wall and CPU seconds;
    ``recipe_file`` (the file the recipe was read from, before any override) is recorded beside it."""
    import shutil
    import time

    from pipelines.stages.train import train_prior
    from pipelines.training.loop import TrainConfig

    stage = {k: v for k, v in recipe.items() if k in STAGE_KEYS}
    model, loop = split_recipe({k: v for k, v in recipe.items() if k not in STAGE_KEYS})
    if loop.get("max_seconds") and loop["max_seconds"] > MAX_TRAIN_S:
        print(f"warning: max_seconds={loop['max_seconds']} is over the issue's {MAX_TRAIN_S} s cap per prior", flush=True)
    steps = loop.pop("steps", 1)
    loop.setdefault("eval_every", steps)  # one held-out evaluation, at the end: the budget goes to training
    loop.setdefault("save_every", steps)
    cfg = TrainConfig(out=str(out), steps=steps, progress=False, device="cpu", seed=seed, **loop)
    if out.exists():
        shutil.rmtree(out)  # a fresh run, never a resumed one
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = train_prior(tokens_dir, model, cfg, **stage)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if result.status == "preempted":  # a signal: no final model to code with, and no honest row
        raise SystemExit(f"training into {out} was interrupted at step {result.step}; rerun the bench")
    m = result.metrics
    return {"recipe_file": recipe_file, "recipe": recipe, "steps_done": m.get("step", 0),
            "stopped_by": m.get("stopped_by", "fitted by counting"), "train_wall_s": wall, "train_cpu_s": cpu,
            "train_eval": {k: v for k, v in m.items() if k != "step"}}
