"""Where a speech codec loses intelligibility: its STFT magnitudes against its phase, by oracle recombination.

Each held-out recording x of ``bench/real_speech.py`` (8 kHz, WORK/heldout) goes through a saved tokenizer whole
(``bench.real_speech.vqgen_outputs``) to y. Both are cut into STFT frames (``--n-fft``, ``--hop``, Hann,
``torch.stft`` / ``torch.istft``), and signals are rebuilt from one's magnitudes and the other's phase: the
original's magnitudes with the codec's phase says what the codec's phase costs; the codec's magnitudes with the
original's phase, what its magnitudes cost; random phase and Griffin-Lim (``--gl-iters`` from random phase, the
codec's magnitudes) say whether a phase estimate after decoding could recover anything. STOI (pystoi, 8 kHz, the
original as reference) per recording, mean over recordings. The first row, the original through the STFT and back,
checks the recombination (STOI 1).

Run: ``python -m bench.speech_phase_oracle --tokenizer runs/real_speech/run_0`` after ``python -m
bench.real_speech`` has built WORK (default runs/real_speech); writes bench/results/speech_phase_oracle.json and
docs/benchmarks/speech_phase_oracle.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, cpu_model, write_results
from bench.real_speech import _read, _shown, score, vqgen_outputs


def recombinations(x: torch.Tensor, y: torch.Tensor, n_fft: int, hop: int, gl_iters: int, seed: int
                   ) -> dict[str, torch.Tensor]:
    """The signals of one recording: x, y float [T] at 8 kHz -> name -> float [T]."""
    win = torch.hann_window(n_fft)

    def stft(a: torch.Tensor) -> torch.Tensor:
        return torch.stft(a, n_fft, hop, window=win, return_complex=True)

    def istft(z: torch.Tensor) -> torch.Tensor:
        return torch.istft(z, n_fft, hop, window=win, length=x.shape[0])

    X, Y = stft(x), stft(y)
    g = torch.Generator().manual_seed(seed)
    rnd = torch.exp(2j * np.pi * torch.rand(X.shape, generator=g))
    gl = istft(Y.abs() * rnd)
    for _ in range(gl_iters):  # Griffin-Lim: keep the codec's magnitudes, take the phase of the last estimate
        gl = istft(Y.abs() * torch.exp(1j * stft(gl).angle()))
    return {"original through the STFT and back": istft(X), "codec output": y,
            "codec magnitudes, original phase": istft(Y.abs() * torch.exp(1j * X.angle())),
            "original magnitudes, codec phase": istft(X.abs() * torch.exp(1j * Y.angle())),
            "original magnitudes, random phase": istft(X.abs() * rnd),
            f"codec magnitudes, Griffin-Lim ({gl_iters} iterations from random phase)": gl}


def markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = ["# Speech codec: magnitudes against phase (`bench/speech_phase_oracle.py`)", "",
             f"Tokenizer `{meta['tokenizer']}` ({res['tokenizer']['kbps']:g} kbit/s at {res['tokenizer']['sample_rate']}"
             f" Hz) on the {len(res['recordings'])} held-out recordings of `bench/real_speech.py` (8 kHz). STFT "
             f"n_fft {meta['n_fft']}, hop {meta['hop']}, Hann. STOI (pystoi, 8 kHz, the original as reference), "
             "mean over recordings.", "", "| signal | STOI |", "|---|---:|"]
    lines += [f"| {r['signal']} | {r['stoi_mean']:.3f} |" for r in res["rows"]]
    lines += ["", f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}. Command: `{meta['command']}`", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="a saved audio tokenizer folder")
    ap.add_argument("--work", default=str(ROOT / "runs" / "real_speech"), help="bench/real_speech's WORK (heldout/)")
    ap.add_argument("--n-fft", type=int, default=256)
    ap.add_argument("--hop", type=int, default=64)
    ap.add_argument("--gl-iters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="the first N recordings only")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--note", default=None, help="a paragraph for the markdown")
    args = ap.parse_args(argv)
    files = sorted((Path(args.work) / "heldout").glob("*.wav"))[: args.limit]
    if not files:
        raise SystemExit(f"no recordings in {Path(args.work) / 'heldout'}: run `python -m bench.real_speech` first")
    names = [f.stem for f in files]
    waves = [torch.from_numpy(_read(f)) for f in files]
    outs, tok = vqgen_outputs(Path(args.tokenizer), waves)
    signals = [recombinations(x, y, args.n_fft, args.hop, args.gl_iters, args.seed) for x, y in zip(waves, outs)]
    rows = []
    for key in signals[0]:
        rows.append({"signal": key, **score(names, waves, [s[key] for s in signals])})
        print(json.dumps({"signal": key, "stoi_mean": rows[-1]["stoi_mean"]}), flush=True)
    shown = _shown(argv if argv is not None else sys.argv[1:])  # without --note, recorded on its own
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "tokenizer": args.tokenizer,
            "n_fft": args.n_fft, "hop": args.hop, "gl_iters": args.gl_iters, "note": args.note,
            "command": "python -m bench.speech_phase_oracle " + " ".join(shown)}
    res = {"meta": meta, "tokenizer": tok, "recordings": names, "rows": rows}
    if not args.no_write:
        write_results("speech_phase_oracle", res, markdown(res))
    return res


if __name__ == "__main__":
    main()
