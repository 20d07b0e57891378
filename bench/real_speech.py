"""vqgen's default audio tokenizer trained for 10 minutes on a few long real recordings at 8 kHz, scored against
Codec2 on whole recordings of other speakers.

Issue 24's last target: "by default (no flags), 10 minutes [of training] on a folder of a few long real recordings
at 8 kHz reaches STOI at least Codec2 2400's on held-out recordings of other speakers". Everything comes from
Debian packages of real (not synthesised) speech:

- **training folder** (``WORK/train``): one long WAV per professional IVR voice and language of the Asterisk
  prompt sets (asterisk-core-sounds-*-wav, 8 kHz): Allison (US English), Allison (Mexican Spanish), June
  (Canadian French), Carlo (Italian, male). Each is the voice's prompts (every subfolder) sorted by path and
  joined with 0.25 s of silence between them, capped at ``--train-minutes`` (default 15: one hour in all).
  Non-speech prompts are left out by name (``NON_SPEECH``: beeps, tones, the silence/ folder, tt-monkeys).
- **held-out folder** (``WORK/heldout``): speakers never in training: the Russian voice (asterisk-core-sounds-ru:
  her prompts joined the same way, capped at ``--heldout-minutes``, default 3) and the speech recordings that
  codec2-examples ships in /usr/share/codec2 (``CODEC2_HELDOUT``, whole files at 8 kHz, 1.6-112 s: radio amateurs,
  the classic hts/mmt/orig codec test sentences). Left out (``CODEC2_EXCLUDED``): files that are not speech
  (sines, modem frames, the FreeDV modem recordings david4, vk2tpm_004, 700d_end_over), Codec2 or another codec's
  output (f2400/m2400: the forig/morig sentences through a 2,400 bit/s coder), files that repeat others (all.wav,
  hts.raw, hts1a/hts2a: the first half of hts1/hts2, ve9qrp_10s) and the 16 kHz files.

Training is vqgen's command line with its defaults (``vqgen train-tokenizer --modality audio --dataset WORK/train
--out WORK/run_S --max-seconds 600 --seed S``, a separate process): the spectral codec, residual VQ with 5
codebooks of 512 codes at 50 frames/s (2.25 kbit/s), at 8 kHz: with no ``--sample-rate`` the codec's rate follows
training data recorded at 8 kHz or less (``pipelines.data.audio_io.follow_data_rate``; until 2026-12-07 it was 16
kHz, the files resampled up). Each held-out recording is then coded whole by the saved tokenizer (resampled to its
rate if another) and by Codec2 at 8 kHz (``bench.speech_peers.codec2_roundtrip``,
its constant delay removed: the one that maximises STOI on 4 s of every recording, ``best_delay``; vqgen's
decoder is aligned by construction). STOI (``tokenizers_vq.metrics.stoi``, pystoi) is computed at 8 kHz per
recording against the original; the table gives each recording and the mean over recordings.

Run: ``OMP_NUM_THREADS=1 python -m bench.real_speech [--seeds 0 1]`` (writes bench/results/real_speech.json,
docs/benchmarks/real_speech.md and .png). ``--quick`` (the test): 20 s per training voice, 2 steps, print only.
Missing packages: ``sudo apt-get install codec2 codec2-examples asterisk-core-sounds-en-wav
asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

from bench.common import ROOT, cpu_model, write_results
from bench.speech_peers import MissingTool, advance, best_delay, codec2_kbps, codec2_roundtrip

RATE = 8000
ASTERISK = Path("/usr/share/asterisk/sounds")
CODEC2_DIR = Path("/usr/share/codec2")
INSTALL = ("sudo apt-get install codec2 codec2-examples asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav "
           "asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav")
TRAIN_VOICES = {  # name -> Asterisk folder: one long training recording each
    "allison_en": "en_US_f_Allison", "allison_es": "es_MX_f_Allison", "june_fr": "fr_CA_f_June",
    "carlo_it": "it_IT_m_Carlo"}
HELDOUT_VOICE = ("ivrvoice_ru", "ru_RU_f_IvrvoiceRU")  # the held-out Asterisk speaker
# Codec2's example recordings of speakers not in training, whole (8 kHz; .raw = 16-bit signed mono)
CODEC2_HELDOUT = ["raw/hts1.raw", "raw/hts2.raw", "raw/kristoff.raw", "wav/mmt1.wav", "wav/morig.wav",
                  "wav/forig.wav", "wav/vk5qi.wav", "raw/cq_ref.raw", "wav/big_dog.wav", "wav/cross.wav",
                  "raw/g3plx.raw", "wav/ve9qrp.wav"]
CODEC2_EXCLUDED = {
    "f2400, m2400": "the forig/morig sentences after a 2,400 bit/s codec (a coded output, not an original)",
    "all.wav": "a compilation of hts1a, hts2a, morig, forig, vk5qi, ... (repeats the files kept)",
    "hts.raw, hts1a, hts2a": "hts1a/hts2a are the first 3 s of hts1/hts2, hts.raw contains them again",
    "ve9qrp_10s": "the first 10 s of ve9qrp",
    "david4.wav, vk2tpm_004.wav, 700d_end_over": "modem signals, not speech: no pauses (the 5th percentile of the "
    "20 ms frame level is within 3 dB of the median) and 64-98% of the energy at 1-2 kHz (FreeDV test recordings)",
    "sine*, test_data*, testframes*": "not speech (sines, modem frames)",
    "speech_orig_16k.wav, wia_16kHz.wav": "16 kHz (the bench is about 8 kHz recordings)"}
NON_SPEECH = re.compile(r"(^|/)(silence/.*|beep|beeperr|ascending-2tone|descending-2tone|tt-monkeys)\.wav$")
GAP_S = 0.25  # silence between two joined prompts
DELAY_WINDOW_S = 4.0  # seconds of each held-out recording the Codec2 delay search uses
CODEC2_MODES = ("3200", "2400", "1300", "700C")
MAX_SECONDS = 600  # the 10 minutes of training


class MissingData(RuntimeError):
    """A Debian package of recordings (or Codec2's tools) is not installed; the message has the install command."""


def _read(path: Path) -> np.ndarray:
    """float32 [T] in [-1, 1] at 8 kHz from a WAV or a 16-bit raw file."""
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != RATE:
        raise ValueError(f"{path} is at {sr} Hz, not {RATE}")
    return x.mean(1)


def speech_prompts(folder: Path) -> list[Path]:
    """The speech prompts of an Asterisk voice folder, sorted by path (non-speech left out by name)."""
    files = sorted(folder.rglob("*.wav"))
    return [f for f in files if not NON_SPEECH.search(f.relative_to(folder).as_posix())]


def join_prompts(files: list[Path], cap_s: float) -> tuple[np.ndarray, list[str]]:
    """The prompts joined with ``GAP_S`` of silence, stopping before ``cap_s`` seconds; and the files used."""
    parts, used, n = [], [], 0
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    for f in files:
        x = _read(f)
        if n + len(x) > cap_s * RATE:
            break
        parts += [x, gap]
        used.append(f.name if f.parent.name == files[0].parent.name else f"{f.parent.name}/{f.name}")
        n += len(x) + len(gap)
    return np.concatenate(parts[:-1]), used


def check_packages(codec2_modes: tuple[str, ...]) -> None:
    missing = [str(ASTERISK / d) for d in [*TRAIN_VOICES.values(), HELDOUT_VOICE[1]] if not (ASTERISK / d).is_dir()]
    missing += [str(CODEC2_DIR / f) for f in CODEC2_HELDOUT if not (CODEC2_DIR / f).is_file()]
    missing += [t for t in ("c2enc", "c2dec") if codec2_modes and shutil.which(t) is None]
    if missing:
        raise MissingData(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: install them with "
                          f"`{INSTALL}` (Debian/Ubuntu)")


def build_folders(work: Path, train_minutes: float, heldout_minutes: float,
                  codec2_files: list[str] = CODEC2_HELDOUT) -> dict[str, Any]:
    """WORK/train (one WAV per training voice) and WORK/heldout (one WAV per held-out recording), 16-bit at 8 kHz;
    returns what each holds: {"train": [...], "heldout": [...]} with name, source, seconds and (joined) files.
    The folders are rebuilt from the packages each time (the same files for the same caps)."""
    import soundfile as sf

    out: dict[str, Any] = {"train": [], "heldout": []}
    for split in ("train", "heldout"):
        if (work / split).exists():
            shutil.rmtree(work / split)
        (work / split).mkdir(parents=True)
    jobs = [("train", n, d, train_minutes) for n, d in TRAIN_VOICES.items()]
    jobs.append(("heldout", *HELDOUT_VOICE, heldout_minutes))
    for split, name, folder, minutes in jobs:
        x, used = join_prompts(speech_prompts(ASTERISK / folder), minutes * 60)
        sf.write(str(work / split / f"{name}.wav"), x, RATE, subtype="PCM_16")
        out[split].append({"name": name, "source": str(ASTERISK / folder), "seconds": round(len(x) / RATE, 2),
                           "prompts": len(used), "files": used})
    for rel in codec2_files:
        x = _read(CODEC2_DIR / rel)
        name = Path(rel).stem
        sf.write(str(work / "heldout" / f"{name}.wav"), x, RATE, subtype="PCM_16")
        out["heldout"].append({"name": name, "source": str(CODEC2_DIR / rel), "seconds": round(len(x) / RATE, 2)})
    train_names = {n for n in TRAIN_VOICES} | {d for d in TRAIN_VOICES.values()}
    assert not train_names & {h["name"] for h in out["heldout"]}, "a held-out recording is also in training"
    return out


def train_command(train_dir: Path, run: Path, seed: int, max_seconds: float, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train-tokenizer", "--modality", "audio", "--dataset",
            str(train_dir), "--out", str(run), "--max-seconds", f"{max_seconds:g}", "--seed", str(seed), *extra]


def train(train_dir: Path, run: Path, seed: int, max_seconds: float, extra: list[str]) -> dict[str, Any]:
    """``vqgen train-tokenizer`` with its defaults in a process (its log in RUN.log); wall time, load average, and
    what the run recorded (steps, stop reason, final evaluation)."""
    if run.exists():
        shutil.rmtree(run)
    cmd = train_command(train_dir, run, seed, max_seconds, extra)
    load0 = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    log = run.with_suffix(".log")
    with open(log, "w") as fh:
        res = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"training failed ({res.returncode}); its log {log}:\n{log.read_text()[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    shown = ["python", *cmd[1:]]
    shown[shown.index("--dataset") + 1] = "WORK/train"
    shown[shown.index("--out") + 1] = f"WORK/run_{seed}"
    info = {"seed": seed, "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)") + " "
            + " ".join(shown), "wall_s": round(wall, 1), "load_average_start": load0,
            "load_average_end": [round(v, 2) for v in os.getloadavg()], "steps": metrics.get("step"),
            "train_seconds": metrics.get("train_seconds"), "stopped_by": metrics.get("stopped_by"),
            "train_eval": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "log": str(log)}
    (run / "bench_train.json").write_text(json.dumps(info, indent=2) + "\n")  # what --reuse reads back
    return info


def _stoi(est: torch.Tensor, ref: torch.Tensor) -> float:
    from tokenizers_vq import metrics as M

    return M.stoi(est, ref, RATE)


@torch.no_grad()
def vqgen_outputs(run: Path, waves: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Each recording (float [T] at 8 kHz) through the saved tokenizer whole: resampled to its rate, encoded,
    decoded, resampled back, cut to T. Also its bitrate and per-codebook usage over all held-out tokens."""
    from tokenizers_vq import load_tokenizer

    tok = load_tokenizer(run).eval()
    rate, hop = tok.sample_rate, tok.config.downsample
    outs, codes, t0 = [], [], time.perf_counter()
    for x in waves:
        xin = AF.resample(x, RATE, rate) if rate != RATE else x
        t = xin.shape[-1]
        xin = torch.nn.functional.pad(xin, (0, -t % hop))  # whole frames: silence after the end
        # the resampler can overshoot a full-scale 8 kHz file: scaled to peak 1 as the data loader does, and back
        gain = max(1.0, float(xin.abs().max()))
        tokens = tok.encode(xin[None] / gain)
        codes.append(tokens.reshape(-1, tokens.shape[-1]) if tokens.dim() == 3 else tokens.reshape(-1, 1))
        y = gain * tok.decode(tokens)[0].reshape(-1)[:t]
        y = AF.resample(y, rate, RATE) if rate != RATE else y
        outs.append(torch.cat([y, y.new_zeros(max(0, x.shape[0] - y.shape[0]))])[: x.shape[0]].clamp(-1, 1))
    flat = torch.cat(codes)
    books = flat.shape[1]
    usage = [round(len(torch.unique(flat[:, k])) / tok.vocab_size, 3) for k in range(books)]
    return outs, {"kbps": round(tok.frame_rate * books * tok.bits_per_token / 1000, 3), "codebooks": books,
                  "codebook_size": tok.vocab_size, "sample_rate": rate, "frame_rate": tok.frame_rate,
                  "usage": usage, "coding_s": round(time.perf_counter() - t0, 1), "fingerprint": tok.fingerprint}


def delay_windows(waves: list[torch.Tensor]) -> tuple[slice, ...]:
    """One ``DELAY_WINDOW_S`` window from the middle of each recording (the whole of a shorter one)."""
    n = int(DELAY_WINDOW_S * RATE)
    return tuple(slice(max(0, (len(x) - n) // 2), max(0, (len(x) - n) // 2) + n) for x in waves)


def codec2_outputs(mode: str, waves: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """Each recording through Codec2 ``mode`` at 8 kHz, with the one delay (ms) that maximises STOI on the
    ``delay_windows`` of all of them removed."""
    raw = [codec2_roundtrip(x, RATE, mode, delay=0) for x in waves]
    wins = delay_windows(waves)
    n = int(DELAY_WINDOW_S * RATE)
    pad = lambda w: torch.cat([w, w.new_zeros(max(0, n - len(w)))])  # noqa: E731
    out_w = torch.stack([pad(y[s]) for y, s in zip(raw, wins)])
    ref_w = torch.stack([pad(x[s]) for x, s in zip(waves, wins)])
    delay = best_delay(out_w, ref_w, _stoi, RATE)
    return [advance(y, delay) for y in raw], 1000 * delay / RATE


def score(names: list[str], waves: list[torch.Tensor], outs: list[torch.Tensor]) -> dict[str, Any]:
    per = {n: round(_stoi(y, x), 4) for n, x, y in zip(names, waves, outs)}
    return {"stoi": per, "stoi_mean": round(float(np.mean(list(per.values()))), 4)}


def spectrogram_png(path: Path, x: torch.Tensor, rows: list[tuple[str, torch.Tensor]], label: str) -> None:
    """Log-mel spectrograms of ``x`` and its codings, stacked (``tokenizers_vq.modality.audio.spectrogram_image``)."""
    from pipelines.outputs import spectrogram_image

    img = spectrogram_image([x, *[y for _, y in rows]], RATE, labels=[f"{label}: original", *[n for n, _ in rows]],
                            ncol=1, scale=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _shown(argv: list[str]) -> list[str]:
    """The command line as recorded: without ``--note`` and its paragraph (recorded on its own) and quoting
    ``--train-flags``' value."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(shlex.quote(a) if i and argv[i - 1] == "--train-flags" else a)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per seed (default 0)")
    ap.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="training budget (default 600)")
    ap.add_argument("--train-minutes", type=float, default=15, help="cap per training voice (default 15)")
    ap.add_argument("--heldout-minutes", type=float, default=3, help="cap of the held-out Russian voice (default 3)")
    ap.add_argument("--codec2-modes", nargs="*", default=list(CODEC2_MODES))
    ap.add_argument("--work", default=str(ROOT / "runs" / "real_speech"))
    ap.add_argument("--train-flags", default="", help="more flags for train-tokenizer, one string (an experiment "
                    "beside the defaults, e.g. --train-flags=\"--sample-rate 8000\"); recorded in each run's command")
    ap.add_argument("--reuse", action="store_true", help="score a seed's run already in WORK (trained by this bench) instead of training it again")
    ap.add_argument("--quick", action="store_true",
                    help="20 s per training voice, 10 s held out from the Russian voice plus 2 Codec2 files, 2 "
                         "training steps; print only (the test)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--note", default=None, help="a paragraph for the markdown (what was seen, what the run was beside)")
    ap.add_argument("--markdown-only", action="store_true",
                    help="measure nothing: re-render docs/benchmarks/real_speech.md from bench/results/real_speech.json "
                         "(with --note, recorded there)")
    return ap


def score_codec2(modes: tuple[str, ...], names: list[str], waves: list[torch.Tensor]
                 ) -> tuple[list[dict[str, Any]], dict[str, list[torch.Tensor]]]:
    """(a row per Codec2 mode: kbit/s, delay, STOI per recording and mean; a skipped row without the tool,
    the decoded recordings of each mode)."""
    peers: list[dict[str, Any]] = []
    codec2_out: dict[str, list[torch.Tensor]] = {}
    for mode in modes:
        t0 = time.perf_counter()
        try:
            outs, delay_ms = codec2_outputs(mode, waves)
        except MissingTool as e:
            peers.append({"codec": f"Codec2 {mode}", "skipped": str(e)})
            continue
        codec2_out[mode] = outs
        peers.append({"codec": f"Codec2 {mode}", "kbps": codec2_kbps(mode), "delay_ms": round(delay_ms, 2),
                      **score(names, waves, outs), "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(peers[-1]), flush=True)
    return peers, codec2_out


def score_vqgen(args: argparse.Namespace, work: Path, names: list[str], waves: list[torch.Tensor],
                extra: list[str]) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """(a row per seed: training (or the reused run's record), the tokenizer, STOI per recording and mean; the
    first seed's decoded recordings)."""
    runs, first = [], []
    for seed in args.seeds:
        run = work / f"run_{seed}"
        reuse = args.reuse and (run / "bench_train.json").is_file()
        info = ({**json.loads((run / "bench_train.json").read_text()), "reused": True} if reuse else
                train(work / "train", run, seed, args.max_seconds, extra))
        outs, tok = vqgen_outputs(run, waves)
        runs.append({**info, "tokenizer": tok, **score(names, waves, outs)})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "train_eval"}), flush=True)
        if seed == args.seeds[0]:
            first = outs
    return runs, first


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.markdown_only:
        res_path = ROOT / "bench" / "results" / "real_speech.json"
        results = json.loads(res_path.read_text())
        if args.note is not None:
            results["meta"]["note"] = args.note
        write_results("real_speech", results, markdown(results))
        return results
    modes = tuple(args.codec2_modes)
    check_packages(modes)
    work = Path(args.work)
    extra: list[str] = shlex.split(args.train_flags)
    codec2_files = CODEC2_HELDOUT
    if args.quick:
        args.train_minutes, args.heldout_minutes, args.max_seconds = 20 / 60, 10 / 60, 60
        codec2_files, extra = CODEC2_HELDOUT[:2], [*extra, "--steps", "2"]
    t_start = time.perf_counter()
    meta: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                            "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)")
                            + " python -m bench.real_speech" + (" " + " ".join(_shown(argv if argv is not None
                                                                                       else sys.argv[1:]))).rstrip(),
                            "codec2_excluded": CODEC2_EXCLUDED, "non_speech_pattern": NON_SPEECH.pattern,
                            "gap_s": GAP_S, "note": args.note}
    data = build_folders(work, args.train_minutes, args.heldout_minutes, codec2_files)
    print(json.dumps({s: [(d["name"], d["seconds"]) for d in data[s]] for s in data}), flush=True)
    names = [d["name"] for d in data["heldout"]]
    waves = [torch.from_numpy(_read(work / "heldout" / f"{n}.wav")) for n in names]
    peers, codec2_out = score_codec2(modes, names, waves)
    runs, vq_first = score_vqgen(args, work, names, waves, extra)
    mean = float(np.mean([r["stoi_mean"] for r in runs]))
    c2400 = next((p for p in peers if p["codec"] == "Codec2 2400" and "skipped" not in p), None)
    results = {"meta": {**meta, "total_s": round(time.perf_counter() - t_start, 1)}, "data": data, "codec2": peers,
               "vqgen": runs, "vqgen_stoi_mean_over_seeds": round(mean, 4),
               "target_met": None if c2400 is None else all(r["stoi_mean"] >= c2400["stoi_mean"] for r in runs)}
    if args.quick or args.no_write:
        return results
    png = ROOT / "docs" / "benchmarks" / "real_speech.png"
    show = names.index("hts1") if "hts1" in names else 0
    if "2400" in codec2_out:
        spectrogram_png(png, waves[show], [(f"vqgen {runs[0]['tokenizer']['kbps']:g} kbit/s (seed "
                                            f"{runs[0]['seed']})", vq_first[show]),
                                           ("Codec2 2400", codec2_out["2400"][show])], names[show])
        results["spectrogram"] = {"png": str(png.relative_to(ROOT)), "recording": names[show]}
    write_results("real_speech", results, markdown(results))
    return results


def markdown(res: dict[str, Any]) -> str:
    meta, data, runs, peers = res["meta"], res["data"], res["vqgen"], res["codec2"]
    names = [d["name"] for d in data["heldout"]]
    secs = {d["name"]: d["seconds"] for d in data["heldout"]}
    scored = [p for p in peers if "skipped" not in p]
    c2400 = next((p for p in scored if p["codec"] == "Codec2 2400"), None)
    cols = [(f"vqgen seed {r['seed']} ({r['tokenizer']['kbps']:g} kbit/s)", r) for r in runs]
    cols += [(f"{p['codec']} ({p['kbps']:g} kbit/s)", p) for p in scored]
    head = "| held-out recording | seconds | " + " | ".join(c for c, _ in cols) + " |"
    lines = ["# Real speech at 8 kHz: vqgen's default codec after 10 minutes vs Codec2 (`bench/real_speech.py`)", ""]
    if c2400 is not None:
        verdict = ("**met**" if res["target_met"] else "**not met**")
        lines += [f"Target (issue 24): with no flags but a time budget and a seed, 10 minutes of training on a few "
                  f"long real recordings at 8 kHz reach STOI >= Codec2 2400's on held-out recordings of other "
                  f"speakers: {verdict}. Mean STOI over the {len(names)} held-out recordings: vqgen "
                  + ", ".join(f"{r['stoi_mean']:.3f} (seed {r['seed']})" for r in runs)
                  + f"; Codec2 2400 {c2400['stoi_mean']:.3f}.", ""]
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for n in names:
        lines.append(f"| {n} | {secs[n]:g} | " + " | ".join(f"{c['stoi'][n]:.3f}" for _, c in cols) + " |")
    lines.append("| **mean** | " + f"{sum(secs.values()):.0f} | " + " | ".join(f"**{c['stoi_mean']:.3f}**"
                                                                            for _, c in cols) + " |")
    lines += [""]
    for p in peers:
        if "skipped" in p:
            lines += [f"- {p['codec']}: skipped ({p['skipped']})"]
    lines += ["Training folder (one long recording per voice and language, Asterisk IVR prompts joined, 8 kHz): "
              + ", ".join(f"{d['name']} {d['seconds'] / 60:.1f} min ({d['prompts']} prompts)" for d in data["train"])
              + ". Held out (speakers never in training, whole recordings at 8 kHz): the Russian Asterisk voice ("
              + ", ".join(f"{d['name']} {d['seconds'] / 60:.1f} min, {d['prompts']} prompts" for d in data["heldout"]
                          if "prompts" in d)
              + ") and Codec2's example recordings (" + ", ".join(d["name"] for d in data["heldout"]
                                                                  if "prompts" not in d)
              + "). Left out of /usr/share/codec2: " + "; ".join(f"{k} ({v})" for k, v in meta["codec2_excluded"].items())
              + ". The file lists are in `bench/results/real_speech.json`.", ""]
    tok = runs[0]["tokenizer"]
    rate = (f"{tok['sample_rate']} Hz, the recordings' own rate (no `--sample-rate`: the default follows data "
            "recorded at 8 kHz or less), so nothing is resampled" if tok["sample_rate"] == RATE else
            f"{tok['sample_rate']} Hz (the 8 kHz files are resampled to {tok['sample_rate']} Hz when loaded, and "
            "the held-out recordings before coding; the output is resampled back to 8 kHz)")
    lines += [f"vqgen: the default `train-tokenizer --modality audio` model, the spectral codec at {rate}, residual VQ of "
              f"{tok['codebooks']} codebooks x {tok['codebook_size']} codes at {tok['frame_rate']:g} frames/s = "
              f"{tok['kbps']:g} kbit/s; each recording coded whole. Codec2: `c2enc`/`c2dec` at 8 kHz, its constant "
              "delay removed (the one maximising STOI on 4 s of every recording: in its favour). STOI: pystoi at 8 "
              "kHz, per recording; the mean is over recordings (unweighted).", ""]
    lines += ["| seed | steps | stopped by | training wall s | load average start -> end | codebook usage "
              "(held-out) | coding s |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r.get('steps')} | {r.get('stopped_by')} | {r.get('wall_s')} | "
                     f"{r.get('load_average_start')} -> {r.get('load_average_end')} | "
                     f"{', '.join(f'{u:.0%}' for u in r['tokenizer']['usage'])} | {r['tokenizer']['coding_s']} |")
    if len(runs) > 1:
        vals = [r["stoi_mean"] for r in runs]
        lines += ["", f"Spread over {len(runs)} seeds: mean STOI {np.mean(vals):.3f}, range {min(vals):.3f}-"
                  f"{max(vals):.3f}."]
    lines += ["", f"Machine: {meta['cpu']}, {meta['cores']} cores (shared with other jobs), torch {meta['torch']}, "
              f"OMP_NUM_THREADS={meta['omp_num_threads']}. Training command (each seed): `{runs[0].get('command')}`; "
              f"the bench: `{meta['command']}`.", ""]
    if res.get("spectrogram"):
        lines += [f"![log-mel spectrograms of {res['spectrogram']['recording']}: original, vqgen, Codec2 2400]"
                  "(benchmarks/real_speech.png)", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except MissingData as e:
        raise SystemExit(f"skipped: {e}") from None
