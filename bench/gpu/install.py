"""Step 0 of bench/gpu_check.sh: make this interpreter able to import vqgen, without a network and without touching
torch; and, on a machine with a network, fetch the wheels for that.

``install``: for each pinned package of ``bench/gpu/wheels.txt`` that is not installed, ``pip install --no-deps`` it
from ``--wheelhouse`` (``--no-index --find-links``) when that folder holds wheels, else from the package index. Then
imports vqgen's packages in a fresh interpreter (the repository on ``PYTHONPATH``, as the later steps run) and records
the versions found. ``--dry-run`` installs nothing: it reports what would be installed.

``prepare``: ``pip download --no-deps --only-binary=:all:`` of every pinned package for CPython 3.12 on x86-64 Linux
(the GPU image's interpreter) into ``--wheelhouse``, and prints the folder's size (the device tool carries at most
64 MiB of working tree in all).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.gpu import stepkit

WHEELS_TXT = Path(__file__).with_name("wheels.txt")
IMPORTS = ("torch", "accelerate", "safetensors", "einops", "vector_quantize_pytorch", "constriction", "soundfile",
           "tokenizers_vq", "prior", "pipelines.cli", "pipelines.likelihood.compress")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any")


def pinned(path: Path = WHEELS_TXT) -> list[tuple[str, str]]:
    """[(name, version)] from ``name==version`` lines (``#`` starts a comment); ``ValueError`` naming a bad line."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if m is None:
            raise ValueError(f"{path}:{i}: expected 'name==version', got {line!r}")
        out.append((m.group(1), m.group(2)))
    return out


def norm(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 503 normalised, with underscores)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def installed(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def import_check() -> dict[str, str]:
    """{module: "ok" | the error's last line}, imported in a fresh interpreter with the repository on PYTHONPATH."""
    code = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
            "        importlib.import_module(m)\n        out[m] = 'ok'\n    except Exception as e:\n"
            "        out[m] = f'{type(e).__name__}: {e}'[:300]\nprint(json.dumps(out))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stepkit.ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code, *IMPORTS], capture_output=True, text=True, env=env, cwd=stepkit.ROOT)
    if r.returncode != 0:
        return {"python": (r.stderr.strip().splitlines() or ["no output"])[-1]}
    import json

    return json.loads(r.stdout.strip().splitlines()[-1])


def install(args: argparse.Namespace) -> None:
    with stepkit.Record("install", args) as rec:
        wheels = pinned()
        found = {n: installed(n) for n, _ in wheels}
        missing = [(n, v) for n, v in wheels if found[n] is None]
        house = Path(args.wheelhouse)
        have = sorted(p.name for p in house.glob("*.whl")) if house.is_dir() else []
        rec.data |= {"python": sys.executable, "found": found, "missing": [f"{n}=={v}" for n, v in missing],
                     "wheelhouse": str(house), "wheelhouse_files": have}
        for n, v in wheels:
            note = "" if found[n] in (None, v) else f" (pinned {v}; kept)"
            print(f"{n:>26}: {found[n] or 'missing'}{note}")
        if missing and not args.dry_run:
            specs = [f"{n}=={v}" for n, v in missing]
            source = ["--no-index", "--find-links", str(house)] if have else []
            r = pip(["install", "--no-deps", "--quiet", *source, *specs])
            rec.data["pip"] = {"source": "wheelhouse" if have else "package index", "rc": r.returncode,
                               "output": (r.stdout + r.stderr)[-3000:]}
            print(r.stdout + r.stderr, flush=True)
            if r.returncode != 0:
                hint = (f"the wheelhouse {house} lacks one of them: run `bash bench/gpu_check.sh --prepare-wheels` on a "
                        "machine with a network and carry the folder" if have else
                        f"no wheelhouse at {house} and no package index reachable: run `bash bench/gpu_check.sh "
                        "--prepare-wheels` on a machine with a network and carry the folder")
                raise RuntimeError(f"pip could not install {' '.join(specs)}; {hint}")
            rec.data["installed"] = specs
        elif missing:
            rec.data["would_install"] = [f"{n}=={v}" for n, v in missing]
        rec.data["imports"] = imports = import_check()
        for m, status in imports.items():
            print(f"import {m:>30}: {status}")
        bad = {m: s for m, s in imports.items() if s != "ok"}
        if bad:
            raise RuntimeError(f"{len(bad)} module(s) do not import: " + "; ".join(f"{m}: {s}" for m, s in bad.items()))


def prepare(args: argparse.Namespace) -> None:
    house = Path(args.wheelhouse)
    house.mkdir(parents=True, exist_ok=True)
    wheels = pinned()
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    r = pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
             *plat, "--dest", str(house), *[f"{n}=={v}" for n, v in wheels]])
    print(r.stdout[-3000:] + r.stderr[-3000:])
    if r.returncode != 0:
        sys.exit(f"pip download failed (exit {r.returncode}); is the package index reachable from here?")
    want = {(norm(n), v) for n, v in wheels}
    for p in sorted(house.glob("*.whl")):  # two versions of one package would stop the whole install there
        name, version = p.name.split("-")[:2]
        if (norm(name), version) not in want:
            p.unlink()
            print(f"removed {p.name} (not pinned in {WHEELS_TXT.name})")
    files = sorted(house.glob("*.whl"))
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.name}")
    print(f"{len(files)} wheels, {total / 2**20:.1f} MiB in {house} (carry it: the device tool's limit is 64 MiB of "
          "working tree in all)")


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("action", choices=["install", "prepare"])
    ap.add_argument("--wheelhouse", default=str(stepkit.ROOT / "wheelhouse"))
    ap.add_argument("--results", default=None, help="install: folder for install.json")
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--dry-run", action="store_true", help="install: report only")
    args = ap.parse_args()
    if args.action == "prepare":
        prepare(args)
    else:
        if args.results is None:
            ap.error("install needs --results DIR")
        install(args)


if __name__ == "__main__":
    main()
