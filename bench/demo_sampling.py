"""Does `vqgen sample` with no flags give digits that read as asked? Samples the demo's prior with
`vqgen sample --prior DIR --label k --n 20` (no other flags: the prior folder's recorded defaults) for every
digit, and reads them with the demo's own digit classifier (``DIR/../classifier``, written by `vqgen demo`).

    python -m bench.demo_sampling --demo runs/demo          # after `vqgen demo --out runs/demo`

Writes bench/results/demo_sampling.json and docs/benchmarks/demo_sampling.md. Target: >= 95% read as asked.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import cpu_model, timed, write_results
from pipelines.cli import main as vqgen
from pipelines.demo.digit_judge import load_classifier, predict


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="runs/demo", help="the --out folder of a finished `vqgen demo` run")
    ap.add_argument("--n", type=int, default=20, help="samples per digit (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    demo = Path(a.demo)
    clf = load_classifier(demo / "classifier")
    per_digit, settings, seconds = {}, None, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(10):
            out = Path(tmp) / str(k)
            argv = ["sample", "--prior", str(demo / "prior"), "--label", str(k), "--n", str(a.n), "--out", str(out),
                    "--seed", str(a.seed + k), "--quiet"]
            dt, rc = timed(lambda argv=argv: vqgen(argv))
            assert rc == 0, f"vqgen {' '.join(argv)} exited {rc}"
            seconds += dt
            x = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0)[None]
                             for f in sorted(out.glob("sample_*.png"))])
            per_digit[k] = int((predict(clf, x) == k).sum())
            settings = json.loads((out / "samples.json").read_text())
    agree = sum(per_digit.values()) / (10 * a.n)
    results = {"command": f"vqgen sample --prior {demo / 'prior'} --label k --n {a.n} (k = 0..9, seeds {a.seed}..{a.seed + 9})",
               "read_as_asked": agree, "per_digit": per_digit, "settings_used": {
                   k: settings[k] for k in ("temperature", "top_k", "top_p", "cfg_scale", "settings_from_prior_folder")},
               "sampling_seconds": round(seconds, 1), "machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
                                                                  "torch": torch.__version__}}
    md = ["## `vqgen sample` with no flags on the demo's prior", "",
          f"`{results['command']}`, read by the demo's own digit classifier (`{demo / 'classifier'}`). Settings taken "
          f"from the prior folder's `sampling.json`: cfg_scale {settings['cfg_scale']}, temperature "
          f"{settings['temperature']}. Command: `python -m bench.demo_sampling --demo {demo}`.", "",
          f"**{agree:.1%}** of {10 * a.n} samples read as the digit asked for (target >= 95%); per digit: "
          + ", ".join(f"{k}: {v}/{a.n}" for k, v in per_digit.items()) + f". Sampling took {seconds:.0f} s on "
          f"{results['machine']['cpu']}."]
    write_results("demo_sampling", results, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
