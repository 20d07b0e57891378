"""Speech intelligibility per bitrate: vqgen audio tokenizers against Codec2 and Opus on held-out voices.

For the ``spoken-digits`` test split (2 voices never seen in training, 180 one-second clips) each codec codes
and decodes every clip; a row reports its bitrate (kbit/s), STOI against the original (``tokenizers_vq.metrics
.stoi``: the clips joined end to end) and the accuracy of a spoken-digit classifier on its output. The
classifier (``pipelines.demo.speech_judge``) is trained on the training voices' original clips only, with
gain / shift / noise augmentation, and the ``original`` row gives its accuracy on the untouched held-out clips:
the ceiling a codec's row can reach.

Peers (``bench/speech_peers.py``): Codec2 3200/2400/1300/700C (8 kHz) and Opus at 6 kbit/s (VBR; the payload
bitrate opusenc reports is given too). Their fixed delay is removed first (one delay per codec, the one that
maximises STOI, see ``speech_peers.best_delay``); vqgen decoders are aligned by construction.

Plug in trained tokenizers with ``--tokenizer DIR`` (repeatable) and, for residual tokenizers, a bitrate
ladder with ``--n-quantizers 1 2 4 8`` (``encode(x, n_quantizers=n)``; rows at each n). Bitrate of a
tokenizer row = token positions per second x codebooks used x log2(vocabulary) (fixed-length code).

Run: ``OMP_NUM_THREADS=1 python -m bench.speech_quality [--tokenizer DIR ...] [--n-quantizers N ...]``
(writes bench/results/speech_quality.json, docs/benchmarks/speech_quality.md and .png); ``--quick`` uses 60
clips and prints only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torchaudio.functional as AF

from bench.common import ROOT, cpu_model, write_results
from bench.speech_peers import (
    CODEC2_MODES,
    MissingTool,
    advance,
    best_delay,
    codec2_kbps,
    codec2_roundtrip,
    opus_roundtrip,
)
from pipelines.data import DataSpec, load_data
from pipelines.demo.speech_judge import (
    audio_accuracy,
    load_audio_classifier,
    predict_audio,
    save_audio_classifier,
    train_audio_classifier,
)
from tokenizers_vq import load_tokenizer
from tokenizers_vq import metrics as M
from tokenizers_vq.modality import AUDIO

DATASET = "spoken-digits"
PNG = ROOT / "docs" / "benchmarks" / "speech_quality.png"
DELAY_CLIPS = 60  # clips used to find a peer's delay (STOI over all 180 at ~40 candidate delays is minutes)


def score(name: str, family: str, recon: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, sr: int,
          classifier: Any, kbps: float, **extra: Any) -> dict[str, Any]:
    """One result row: STOI of recon [B, T] against ref [B, T] and the classifier's accuracy on recon."""
    pred = predict_audio(classifier, recon)
    return {"codec": name, "family": family, "kbps": round(kbps, 3), "stoi": round(M.stoi(recon, ref, sr), 4),
            "accuracy": round((pred == labels).float().mean().item(), 4), "clips": len(ref), **extra}


def peer_rows(xs: torch.Tensor, ys: torch.Tensor, sr: int, classifier: Any,
              codec2_modes: tuple[str, ...] = CODEC2_MODES, opus_kbps: tuple[float, ...] = (6.0,)) -> list[dict[str, Any]]:
    """Codec2 (each of ``codec2_modes``) and Opus (each of ``opus_kbps``) rows on clips xs float [N, T] with labels
    ys int64 [N]: STOI and the classifier's accuracy after the peer's STOI-maximising delay is removed, ``roundtrip_s``
    (the round trips alone) and ``seconds`` (with the delay search); a missing tool gives a row with ``skipped``
    and the install command."""
    rows = []
    peers = [(f"Codec2 {m}", "codec2", m) for m in codec2_modes] + [(f"Opus {k:g}k", "opus", k) for k in opus_kbps]
    sub = slice(None, None, max(1, len(xs) // DELAY_CLIPS))
    for name, family, setting in peers:
        t0 = time.time()
        try:
            if family == "codec2":
                raw = torch.stack([codec2_roundtrip(x, sr, setting, delay=0) for x in xs])
                kbps, extra = codec2_kbps(setting), {}
            else:
                outs = [opus_roundtrip(x, sr, setting, delay=0, return_stats=True) for x in xs]
                raw = torch.stack([o for o, _ in outs])
                # opusenc's "Bitrate ... (without overhead)": the Opus packets, not the Ogg pages around them
                measured = sum(s["kbps"] for _, s in outs) / len(outs)
                kbps, extra = float(setting), {"measured_kbps": round(measured, 3)}
        except MissingTool as e:
            rows.append({"codec": name, "family": family, "skipped": str(e)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        roundtrip_s = time.time() - t0
        delay = best_delay(raw[sub], xs[sub], lambda a, b: M.stoi(a, b, sr), sr)
        rows.append(score(name, family, advance(raw, delay), xs, ys, sr, classifier, kbps,
                          delay_ms=round(1000 * delay / sr, 2), roundtrip_s=round(roundtrip_s, 3),
                          seconds=round(time.time() - t0, 1), **extra))
        print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def tokenizer_rows(path: str, n_quantizers: list[int] | None, xs: torch.Tensor, ys: torch.Tensor, sr: int,
                   classifier: Any, batch_size: int = 16) -> list[dict[str, Any]]:
    """Rows of a vqgen tokenizer folder: one per ``n_quantizers`` value (residual tokenizers), else one.

    Clips are resampled to the tokenizer's rate when it differs, and back for scoring.
    """
    tok = load_tokenizer(path).eval()
    if tok.modality != AUDIO:
        raise ValueError(f"{path} is an {tok.modality} tokenizer; speech rows need an audio one")
    rate = tok.sample_rate
    x_in = AF.resample(xs, sr, rate) if rate != sr else xs
    rows = []
    for n in n_quantizers or [None]:
        t0 = time.time()
        recon, books = [], 1
        for i in range(0, len(x_in), batch_size):
            x = x_in[i:i + batch_size]
            tokens = tok.encode(x) if n is None else tok.encode(x, n_quantizers=n)
            books = tokens.shape[-1] if tokens.dim() == 3 else 1  # residual audio tokens: [B, t, q]
            recon.append(tok.decode(tokens)[..., : x.shape[-1]])
        recon = torch.cat(recon)
        if rate != sr:
            recon = AF.resample(recon, rate, sr)[..., : xs.shape[-1]]
        kbps = tok.frame_rate * books * tok.bits_per_token / 1000
        cfg = tok.config
        name = f"vqgen {run_label(path)}" + (f" q={books}" if n is not None else "")
        rows.append(score(name, "vqgen", recon, xs, ys, sr, classifier, kbps, tokenizer=str(path),
                          quantizer=cfg.quantizer, codebooks=books, seconds=round(time.time() - t0, 1)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_label(path: str) -> str:
    """"<run folder>/<snapshot>" of a tokenizer folder: two models' "30min" snapshots stay apart in a merged table."""
    folder = Path(path).resolve()
    return f"{folder.parent.name}/{folder.name}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| codec | kbit/s | STOI | classifier accuracy | delay removed ms |", "|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['codec']} | - | skipped: {r['skipped']} | - | - |")
            continue
        kbps = f"{r['kbps']:g}" + (f" (payload {r['measured_kbps']:.2f})" if "measured_kbps" in r else "")
        delay = f"{r['delay_ms']:.2f}" if "delay_ms" in r else "-"
        lines.append(f"| {r['codec']} | {kbps} | {r['stoi']:.3f} | {r['accuracy']:.1%} | {delay} |")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """STOI and classifier accuracy against kbit/s (log axis), one marker per codec; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    scored = [r for r in rows if "skipped" not in r and r["family"] != "original"]
    if not scored:
        return False
    orig = next((r for r in rows if r.get("family") == "original"), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    style = {"codec2": ("o", "tab:blue"), "opus": ("s", "tab:green"), "vqgen": ("^", "tab:red")}
    # one line per codec family, and per tokenizer folder for vqgen (a bitrate ladder is one model)
    series = {}
    for r in scored:
        series.setdefault((r["family"], r.get("tokenizer", "")), []).append(r)
    shades = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    for ax, key, label in ((axes[0], "stoi", "STOI"), (axes[1], "accuracy", "classifier accuracy")):
        vq = 0
        for (fam, tok), members in series.items():
            marker, color = style.get(fam, ("x", "black"))
            if fam == "vqgen":
                color, vq = shades[vq % len(shades)], vq + 1
            pts = sorted((r["kbps"], r[key], r["codec"]) for r in members)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                    label=f"vqgen {run_label(tok)}" if fam == "vqgen" else fam,
                    linestyle="-" if fam != "opus" else "none")
            for k, v, name in pts:  # the legend names the series: a point says its mode or codebooks only
                ax.annotate(name.split()[-1] if fam != "opus" else name, (k, v), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
        if orig is not None:
            ax.axhline(orig[key], color="gray", linestyle="--", label=f"original ({orig[key]:.3g})")
        ax.set_xscale("log")
        ticks = [t for t in (0.5, 0.7, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32) if any(
            0.8 * r["kbps"] <= t <= 1.25 * r["kbps"] for r in scored) or t in (1, 2, 4, 8, 16, 32)]
        lo, hi = min(r["kbps"] for r in scored), max(r["kbps"] for r in scored)
        ax.set_xticks([t for t in ticks if 0.8 * lo <= t <= 1.25 * hi], minor=False)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(0.8 * lo, 1.25 * hi)
        ax.margins(y=0.1)  # room for the point labels
        ax.set_xlabel("kbit/s")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("spoken-digits, held-out voices: intelligibility vs bitrate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], png: bool) -> str:
    c = meta["classifier"]
    lines = ["# Speech intelligibility per bitrate (spoken-digits, held-out voices)", "",
             "`bench/speech_quality.py`: every codec codes and decodes the 180 one-second test clips of "
             "`spoken-digits` (2 espeak-ng voices not in the training split). STOI (Taal et al. 2011, via pystoi) is "
             "scored on the clips joined end to end (single digits are often under the 0.4 s of speech pystoi needs "
             "per signal). Classifier accuracy is that of a small log-mel conv net (`pipelines.demo.speech_judge`, "
             f"0-4 kHz) trained on the 6 training voices' original clips only, with gain, shift and 5-40 dB noise "
             f"augmentation ({c['epochs']} epochs, {c['train_s']:.0f} s of training; later runs may load it from "
             f"`{c.get('saved', 'runs/speech_classifier')}` with `--classifier`); "
             "the `original` row is its accuracy on the untouched held-out clips. It is a coarse check (ten words, "
             "clean synthetic voices): it saturates near 100% for any codec that keeps the word, and separates only "
             "codecs that lose it; STOI ranks the rest.", "",
             *table(rows), "",
             "Bitrates: Codec2 modes are fixed-rate; Opus is `opusenc --bitrate 6` (VBR; in brackets the mean "
             "payload rate opusenc reports, without the Ogg container: on these clips, mostly silence around a word, "
             "it spends less than asked); vqgen rows are the fixed-length code (token positions/s x codebooks x "
             "log2 vocabulary). `original` is 16-bit PCM at 16 kHz. Codec2 runs at 8 kHz (resampled there and back); "
             "each peer's constant delay is removed (the delay, searched on 60 clips, that maximises STOI: an "
             "alignment in the codec's favour).", ""]
    if png:
        lines += ["![STOI and classifier accuracy against kbit/s](benchmarks/speech_quality.png)", ""]
    lines += [f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, {meta['threads']} thread(s) "
              "(other jobs were running: timings are slow and noisy, the scores are not affected).", "",
              *[f"- `{r['command']}`: load average (1, 5, 15 min) {r['load_average_start']} at the start, "
                f"{r['load_average_end']} at the end." for r in meta["runs"]], "",
              "Add a trained tokenizer with `--tokenizer DIR` (repeatable; `--classifier runs/speech_classifier "
              "--no-peers --merge` reuses the listener and keeps the rows above) and, for residual tokenizers, a "
              "bitrate ladder with `--n-quantizers 1 2 4 8`.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", action="append", default=[], metavar="DIR", help="a trained vqgen audio tokenizer "
                    "folder (repeatable)")
    ap.add_argument("--n-quantizers", type=int, nargs="+", default=None, metavar="N",
                    help="residual tokenizers: one row per number of codebooks decoded (bitrate ladder)")
    ap.add_argument("--no-peers", action="store_true", help="skip the Codec2 / Opus rows")
    ap.add_argument("--classifier", default=None, metavar="DIR", help="load this classifier folder instead of training one")
    ap.add_argument("--save-classifier", default=str(ROOT / "runs" / "speech_classifier"), metavar="DIR",
                    help="where a freshly trained classifier is saved (default runs/speech_classifier)")
    ap.add_argument("--epochs", type=int, default=30, help="classifier training epochs (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="60 test clips, 5 classifier epochs; print only")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--merge", action="store_true", help="keep earlier rows this run does not redo (by codec name)")
    ap.add_argument("--forget", nargs="+", default=[], metavar="CODEC",
                    help="with --merge: drop these earlier rows (by codec name), e.g. a superseded model's")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    meta: dict[str, Any] = {"cpu": cpu_model(), "cores": cores, "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "python": platform.python_version()}
    run = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python -m bench.speech_quality"
                      + "".join(f" --tokenizer {t}" for t in args.tokenizer)
                      + (" --n-quantizers " + " ".join(map(str, args.n_quantizers)) if args.n_quantizers else "")
                      + (" --no-peers" if args.no_peers else "") + (" --merge" if args.merge else "")
                      + (" --forget " + " ".join(f'"{c}"' for c in args.forget) if args.forget else ""),
           "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    splits = load_data(DataSpec(DATASET))  # espeak-ng missing: the loader's error says how to install it
    sr = 16000
    test = [splits.test[i] for i in range(len(splits.test))]
    if args.quick:
        test = test[::3]
    xs, ys = torch.stack([x for x, _ in test]).float(), torch.stack([y for _, y in test])
    t0 = time.time()
    if args.classifier:
        classifier, info = load_audio_classifier(args.classifier), {"loaded": args.classifier, "epochs": 0}
    else:
        epochs = 5 if args.quick else args.epochs
        classifier, _ = train_audio_classifier(splits.train, None, splits.num_classes, sr, epochs=epochs,
                                               seed=args.seed)
        info = {"epochs": epochs}
        if not args.quick:
            save_audio_classifier(classifier, args.save_classifier)
            info["saved"] = os.path.relpath(args.save_classifier, ROOT)
    info["train_s"] = round(time.time() - t0, 1)
    info["train_accuracy"] = round(audio_accuracy(classifier, splits.train), 4)
    meta["classifier"] = info
    print(json.dumps({"classifier": info}), flush=True)
    rows = [score("original", "original", xs, xs, ys, sr, classifier, sr * 16 / 1000)]
    print(json.dumps(rows[-1]), flush=True)
    if not args.no_peers:
        rows += peer_rows(xs, ys, sr, classifier)
    for path in args.tokenizer:
        rows += tokenizer_rows(path, args.n_quantizers, xs, ys, sr, classifier)
    run["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    meta["runs"] = [run]
    print("\n".join(table(rows)))
    if args.quick or args.no_write:
        return
    res_path = ROOT / "bench" / "results" / "speech_quality.json"
    if args.merge and res_path.is_file():
        old = json.loads(res_path.read_text())
        done = {r["codec"] for r in rows} | set(args.forget)
        rows = [r for r in old["results"] if r["codec"] not in done] + rows
        meta["runs"] = old["meta"].get("runs", []) + meta["runs"]
        if "loaded" in info and "train_s" in old["meta"].get("classifier", {}):  # how the loaded one was trained
            meta["classifier"] = {**old["meta"]["classifier"], "loaded": info["loaded"]}
    order = {"original": 0, "codec2": 1, "opus": 2, "vqgen": 3}
    rows.sort(key=lambda r: (order.get(r.get("family"), 9), -r.get("kbps", 0)))
    png = plot(rows, PNG)
    write_results("speech_quality", {"meta": meta, "results": rows}, markdown(rows, meta, png))


if __name__ == "__main__":
    main()
