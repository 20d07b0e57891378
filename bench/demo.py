"""The README's main job, measured: runs `vqgen demo` (or reads a finished run's summary.json) and writes
the numbers the issue asks for — wall time, tokenizer quality, prior bits/dim and how often a separately
trained digit classifier agrees with the requested digit — to bench/results/demo.json and
docs/benchmarks/demo.md.

    OMP_NUM_THREADS=2 python -m bench.demo                       # runs the demo (about 7-10 minutes on 2 cores)
    python -m bench.demo --from-summary runs/demo/summary.json   # formats a run made with `vqgen demo`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from bench.common import ROOT, cpu_model


def _image_note(summary: dict) -> list[str]:
    sel = ", ".join(f"{k}: {v:.0%}" for k, v in (summary.get("cfg_selection") or {}).items())
    return ["", "`samples_label_agreement` is the fraction of the 100 samples (ten per digit, drawn by the "
              "`sample` stage with the prior folder's defaults) that a small CNN trained on the mnist5k training "
              "split (its test accuracy is `classifier_test_accuracy`) classifies as the digit that was asked "
              "for. Target: >= 0.90. The guidance scale the prior folder records (`cfg_scale`) is chosen by the "
              f"demo on a selection run with other seeds (agreement by scale: {sel or 'not recorded'}): the "
              "gentlest scale within one point of the best. `prior_bits_per_dim` is the code length of the tokens "
              "per pixel, not a pixel likelihood."]


def _audio_note(summary: dict) -> list[str]:
    sel = ", ".join(f"{k}: {v:.0%}" for k, v in (summary.get("cfg_selection") or {}).items())
    return ["", f"Tokenizer: `{summary.get('tokenizer_source', 'trained')}` (`pretrained:spoken-digits` = the "
              "package's shipped spectral codec, `python -m bench.speech_codec --install`; `trained` = trained by the "
              "demo). `tokenizer_stoi`, `tokenizer_si_snr_db` and `tokenizer_log_mel_l1` are its reconstructions "
              "of the held-out voices (STOI on the clips joined); `kbps` = tokens per second x codebooks x "
              "log2(vocabulary); `codebook_usage` is the worst codebook's. `prior_bits_per_token` is the prior's "
              "held-out code length per token. `samples_label_agreement` is the fraction of the 100 clips (ten "
              "per digit, drawn by the `sample` stage with the prior folder's defaults) that the spoken-digit "
              "classifier (`pipelines.demo.speech_judge`, trained on the training voices' original clips; "
              "`classifier_test_accuracy` on the held-out voices' originals) hears as the digit asked for. "
              f"Target: >= 0.80. Guidance scale chosen on a selection run with other seeds ({sel or 'none'})."]


NOTES = {"image": _image_note, "audio": _audio_note}  # what each demo's numbers mean, by its modality


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-summary", default=None, help="summary.json of a finished `vqgen demo` run")
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--modality", choices=("image", "audio"), default="image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="a paragraph about this run for the markdown (what you saw and heard)")
    a = ap.parse_args()
    if a.from_summary:
        summary = json.loads(Path(a.from_summary).read_text())
    else:
        from pipelines.demo import run_demo

        summary = run_demo(modality=a.modality, out=a.out, seed=a.seed)
    machine = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "python": platform.python_version()}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / f"demo_{summary['modality']}.json").write_text(
        json.dumps({"summary": summary, "machine": machine}, indent=2))
    rows = [(k, v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = [f"## `vqgen demo --modality {summary['modality']}` (the main job)", "",
             f"Command: `OMP_NUM_THREADS={machine['omp_num_threads'] or '(unset)'} vqgen demo --modality "
             f"{summary['modality']}` (formatted by `bench/demo.py`). "
             f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}.", "",
             "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += NOTES[summary["modality"]](summary)
    if a.note:
        lines += ["", a.note]
    (ROOT / "docs" / "benchmarks" / f"demo_{summary['modality']}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
