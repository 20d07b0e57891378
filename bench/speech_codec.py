"""The spectral speech codec from scratch on 2 CPU cores: rows at 10 and 30 minutes of training, a bitrate ladder
from one model, and (``--install``) the package's pretrained spoken-digits tokenizer.

Trains ``vqgen train-tokenizer``'s stage function with the recipe recipes/speech/spectral_rvq13.yaml
(``--recipe`` names another): the spectral codec (``audio_head="istft"``: 50 frames/s, residual VQ with 13
codebooks of 512 codes and quantizer dropout, dead-code threshold 0.1) on ``spoken-digits``, 12,000 steps of
16 at lr 1e-3 in bf16. The flags ``--dataset``, ``--num-quantizers``, ``--codebook-size``,
``--dead-code-threshold``, ``--waveform-loss-weight``, ``--causal``, ``--steps``, ``--batch-size``, ``--lr`` and
``--mixed-precision`` override the file's values. The snapshots are the bench's own: it stops at each
``--minutes`` mark (wall-clock training time, evaluation excluded; the last mark is the file's
``max_seconds``, 30 minutes), copies the model there to ``OUT/<m>min`` and continues (``--resume``) to the
next mark. Each snapshot is scored on the whole held-out split at ``--n-quantizers`` codebooks: STOI (the
clips joined, as bench/speech_quality.py), SI-SNR, log-mel L1, codebook usage per codebook, and the
spoken-digit classifier's accuracy on the reconstructions (``runs/speech_classifier``, trained by
bench/speech_quality.py on the training voices).

``--install`` writes the last snapshot, cut to ``--install-codebooks`` codebooks (the first n residual codebooks
of a quantizer-dropout model are exactly that model at n codebooks), into ``tokenizers_vq/pretrained/`` with its
fingerprint in ``index.json``: what ``vqgen demo --modality audio`` starts from.

Run (idle machine): ``python -m bench.speech_codec --minutes 10 30 --install`` (the recipe file is the shipped
tokenizer's; ``vqgen train-tokenizer --config recipes/speech/spectral_rvq13.yaml`` trains the same model in
one 30-minute run, without the snapshots); then ``python -m bench.speech_quality --tokenizer
runs/speech_codec/30min --n-quantizers 2 5 13 --classifier runs/speech_classifier --merge`` puts the ladder
beside Codec2 and Opus. ``--install-only`` ships a finished run judged first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, cpu_model, read_recipe, write_results
from pipelines.data import DataSpec, load_data
from pipelines.stages.train import train_tokenizer
from pipelines.training.loop import TrainConfig
from tokenizers_vq import TokenizerConfig, load_tokenizer
from tokenizers_vq import metrics as M
from tokenizers_vq.config import DEFAULT_SAMPLE_RATE

PRETRAINED_DIR = ROOT / "tokenizers_vq" / "pretrained"
RECIPE = "speech/spectral_rvq13"  # recipes/speech/spectral_rvq13.yaml: the shipped spoken-digits tokenizer's
# flags that override a recipe value: the model's (TokenizerConfig fields), the loop's (TrainConfig), data
MODEL_FLAGS = ("num_quantizers", "codebook_size", "dead_code_threshold", "waveform_loss_weight", "causal")
LOOP_FLAGS = ("steps", "batch_size", "lr", "mixed_precision")
# TrainConfig fields the bench sets itself: the snapshots' budgets and resuming, where the run goes, progress
BENCH_LOOP = ("out", "max_seconds", "resume", "seed", "progress")


def resolve_recipe(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """(data, model, loop, recipe file) of a run: ``args.recipe``'s file with the flags given (not None) on
    top, and the flags filled in with the values used (so the recorded command line names them). data:
    ``make_spec`` arguments; model: TokenizerConfig fields; loop: TrainConfig fields but those in
    ``BENCH_LOOP``."""
    from dataclasses import fields

    settings, file = read_recipe(args.recipe, "train-tokenizer")
    loop_keys = {f.name for f in fields(TrainConfig)}
    model_keys = TokenizerConfig.known_fields()
    unknown = set(settings) - loop_keys - model_keys - {"dataset"}
    if unknown:
        raise ValueError(f"recipe {file}: {', '.join(sorted(unknown))} not taken by this bench (it takes "
                         "TokenizerConfig and TrainConfig fields and dataset)")
    for key in (*MODEL_FLAGS, *LOOP_FLAGS, "dataset"):
        if getattr(args, key) is None:
            setattr(args, key, settings.get(key))
        settings[key] = getattr(args, key)
    if args.dataset is None:
        raise ValueError(f"recipe {file} names no dataset: pass --dataset")
    model = {k: v for k, v in settings.items() if k in model_keys and v is not None}
    loop = {k: v for k, v in settings.items() if k in loop_keys and k not in BENCH_LOOP and v is not None}
    # the rate the bench scores at (DataSpec's default): the stage would otherwise follow narrowband data down to 8 kHz
    return {"name": args.dataset, "seed": args.seed, "sample_rate": DEFAULT_SAMPLE_RATE}, model, loop, file


@torch.no_grad()
def score_snapshot(path: Path, n_quantizers: list[int], xs: torch.Tensor, ys: torch.Tensor | None,
                   classifier: Any, batch_size: int = 32) -> list[dict[str, Any]]:
    """One row per number of codebooks: kbit/s, STOI (clips joined), SI-SNR (dB, per clip mean), log-mel L1, usage
    of each codebook on the split (fraction of its codes seen) and classifier accuracy (when ``ys`` is given)."""
    tok = load_tokenizer(path).eval()
    sr = tok.sample_rate
    rows = []
    for n in n_quantizers:
        recon, codes = [], []
        for i in range(0, len(xs), batch_size):
            c = tok.encode(xs[i:i + batch_size], n_quantizers=n)
            codes.append(c)
            recon.append(tok.decode(c))
        recon, codes = torch.cat(recon), torch.cat(codes)
        flat = codes.reshape(-1, codes.shape[-1])
        usage = [round(len(torch.unique(flat[:, k])) / tok.vocab_size, 3) for k in range(flat.shape[1])]
        row = {"codebooks": n, "kbps": round(tok.frame_rate * n * tok.bits_per_token / 1000, 3),
               "stoi": round(M.stoi(recon, xs, sr), 4), "si_snr_db": round(float(M.si_snr(recon, xs)), 2),
               "log_mel_l1": round(float(M.log_mel_l1(recon, xs, sr)), 4), "usage_min": min(usage),
               "usage": usage}
        if classifier is not None and ys is not None:
            from pipelines.demo.speech_judge import predict_audio

            row["accuracy"] = round((predict_audio(classifier, recon) == ys).float().mean().item(), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def install(src: Path, codebooks: int, name: str, meta: dict[str, Any]) -> Path:
    """Copy ``src`` cut to its first ``codebooks`` residual codebooks into ``tokenizers_vq/pretrained/<name>`` and
    record its fingerprint in ``index.json``."""
    from tokenizers_vq.tokenizer import truncate_codebooks

    tok = load_tokenizer(src)
    small = truncate_codebooks(tok, codebooks)
    folder = name.replace("-", "_")
    dest = PRETRAINED_DIR / folder
    if dest.exists():
        shutil.rmtree(dest)
    small.save_pretrained(dest)
    # Half the package size: float32 tensors stored as float16 (loaded back as float32); the fingerprint is the
    # loaded model's, so it checks exactly what users get.
    from safetensors.torch import load_file, save_file

    weights = dest / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v.half() if v.dtype == torch.float32 and v.abs().max() < 6e4 else v for k, v in tensors.items()},
              str(weights), metadata={"format": "pt"})
    shipped = load_tokenizer(dest)
    index_path = PRETRAINED_DIR / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[name] = {"folder": folder, "fingerprint": shipped.fingerprint,
                   "trained_by": meta["command"], "data": meta["dataset"],
                   "train_seconds": meta["train_seconds"], "codebooks": codebooks,
                   "kbps": round(small.frame_rate * codebooks * small.bits_per_token / 1000, 3),
                   "stored_as": "float16 (loaded as float32)"}
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return dest


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=RECIPE, metavar="NAME_OR_FILE",
                    help=f"the train-tokenizer recipe (default {RECIPE}: recipes/{RECIPE}.yaml); the flags "
                         "below that say 'the recipe's' override its values")
    ap.add_argument("--dataset", default=None, choices=("spoken-digits", "tones"),
                    help="default: the recipe's (spoken-digits)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 30],
                    help="snapshots at these training minutes (default 10 30: the last is the recipe's "
                         "max_seconds)")
    ap.add_argument("--num-quantizers", type=int, default=None,
                    help="residual codebooks trained (default: the recipe's, 13: 5.85 kbit/s)")
    ap.add_argument("--n-quantizers", type=int, nargs="+", default=[2, 5, 13], help="codebooks scored per snapshot")
    ap.add_argument("--waveform-loss-weight", type=float, default=None,
                    help="default: the recipe's, else the config's (1 for istft)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (16)")
    ap.add_argument("--steps", type=int, default=None,
                    help="the cosine schedule's length; the run stops at the last --minutes mark or here, "
                         "whichever comes first (default: the recipe's, 12,000: about 30 minutes on the "
                         "2-core machine of docs/BENCHMARKS.md)")
    ap.add_argument("--codebook-size", type=int, default=None,
                    help="codes per residual codebook (default: the recipe's, 512: 9 bits; with 1,024 the "
                         "first codebook used under half its codes on the two held-out voices)")
    # A batch holds 16 x 20 = 320 frames for 1,024 codes (0.3 per code per step): vqgen's default of 2 would
    # expire nearly every code at every step; the recipe's 0.1 expires codes used less than about once in ten
    # batches.
    ap.add_argument("--dead-code-threshold", type=float, default=None, help="default: the recipe's (0.1)")
    ap.add_argument("--causal", action="store_true", default=None,
                    help="the streaming codec: no lookahead (default: the recipe's, offline)")
    ap.add_argument("--lr", type=float, default=None, help="default: the recipe's (1e-3)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "speech_codec"))
    ap.add_argument("--classifier", default=str(ROOT / "runs" / "speech_classifier"))
    ap.add_argument("--install", action="store_true", help="ship the last snapshot as the pretrained tokenizer")
    ap.add_argument("--install-only", action="store_true",
                    help="train nothing: install the last snapshot of the run recorded in bench/results/"
                         "<--results-name>.json (a run judged first, then shipped)")
    ap.add_argument("--install-name", default=None,
                    help="the name it is shipped under (default: the dataset's, which replaces that tokenizer)")
    ap.add_argument("--install-codebooks", type=int, default=5, help="codebooks kept when installing (5: 2.25 kbit/s with 512 codes)")
    ap.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "auto"),
                    help="training autocast (default: the recipe's, bf16: runs on a CPU with AVX-512 BF16; "
                         "the scores are computed in fp32)")
    ap.add_argument("--results-name", default=None,
                    help="bench/results/NAME.json + docs/benchmarks/NAME.md (default speech_codec_<dataset>, the "
                         "shipped tokenizer's record: give another name for a run that does not --install)")
    ap.add_argument("--note", default=None, help="a paragraph for the markdown (what the run was beside, why it ran)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run: every option given (not --out, --classifier, --note), with
    OMP_NUM_THREADS in front when it is set (it decides how far a time budget goes)."""
    cmd = "python -m bench.speech_codec " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items()
        if k not in ("out", "classifier", "install", "install_only", "install_name", "results_name", "note")
        and v is not None
        and v is not False)
    if os.environ.get("OMP_NUM_THREADS"):
        cmd = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {cmd}"
    cmd += " --install" if args.install else ""
    cmd += f" --results-name {args.results_name}" if args.results_name else ""
    return cmd


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data, model, loop, recipe_file = resolve_recipe(args)
    name = args.results_name or f"speech_codec_{args.dataset.replace('-', '_')}"
    if args.install_only:
        install_recorded(name, args.install_codebooks, args.install_name)
        return
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    run_dir = out / "run"
    cmd = command_line(args)
    meta: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "dataset": args.dataset, "command": cmd,
                            "recipe": recipe_file, "model": model, "loop": loop,
                            "load_average_start": [round(v, 2) for v in os.getloadavg()], "note": args.note}
    splits = load_data(DataSpec(args.dataset, seed=args.seed))
    test = [splits.test[i] for i in range(len(splits.test))]
    xs = torch.stack([x for x, _ in test]).float()
    ys = torch.stack([torch.as_tensor(y) for _, y in test]) if splits.num_classes else None
    classifier = None
    if args.dataset == "spoken-digits" and ys is not None and (Path(args.classifier) / "config.json").is_file():
        from pipelines.demo.speech_judge import load_audio_classifier

        classifier = load_audio_classifier(args.classifier)
    snapshots, spent, steps = [], 0.0, 0
    for i, minutes in enumerate(sorted(args.minutes)):
        budget = minutes * 60 - spent
        # the recipe's loop (its eval_every / save_every of 10^9: no evaluation or checkpoint inside the
        # budget but the last), up to this snapshot's minutes
        cfg = TrainConfig(**loop, out=str(run_dir), max_seconds=budget, seed=args.seed, resume=i > 0,
                          progress=True)
        result = train_tokenizer(data, model, cfg)
        spent += float(result.metrics.get("train_seconds", budget))
        steps = result.step
        snap = out / f"{minutes:g}min"
        shutil.copytree(run_dir, snap, ignore=shutil.ignore_patterns("checkpoints", "logs"))
        rows = score_snapshot(snap, [n for n in args.n_quantizers if n <= args.num_quantizers], xs, ys, classifier)
        snapshots.append({"minutes": minutes, "train_seconds": round(spent, 1), "steps": steps, "path": str(snap),
                          "rows": rows})
    meta["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    meta["train_seconds"] = round(spent, 1)
    if args.install:
        dest = install(Path(snapshots[-1]["path"]), args.install_codebooks, args.install_name or args.dataset, meta)
        meta["installed"] = os.path.relpath(dest, ROOT)
    write_results(name, {"meta": meta, "snapshots": snapshots}, markdown(snapshots, meta, classifier is not None))


def install_recorded(name: str, codebooks: int, install_name: str | None = None) -> None:
    """``--install-only``: ship the last snapshot of the run recorded in bench/results/NAME.json (under
    ``install_name``, default its dataset's name) and note it there."""
    res_path = ROOT / "bench" / "results" / f"{name}.json"
    if not res_path.is_file():
        raise SystemExit(f"{res_path} does not exist: run `python -m bench.speech_codec` with --results-name {name} first")
    results = json.loads(res_path.read_text())
    meta, snapshots = results["meta"], results["snapshots"]
    src = Path(snapshots[-1]["path"])
    if not (src / "config.json").is_file():
        raise SystemExit(f"{src} (the run's last snapshot) is gone: rerun the bench with --install")
    dest = install(src, codebooks, install_name or meta["dataset"], meta)
    meta["installed"] = os.path.relpath(dest, ROOT)
    write_results(name, results, markdown(snapshots, meta, any("accuracy" in r for s in snapshots for r in s["rows"])))


def markdown(snapshots: list[dict[str, Any]], meta: dict[str, Any], with_classifier: bool) -> str:
    head = "| minutes | steps | codebooks | kbit/s | STOI | SI-SNR dB | log-mel L1 | min usage per codebook |"
    head += " classifier accuracy |" if with_classifier else ""
    model = meta.get("model", {})
    causal = "causal " if model.get("causal") else ""  # the streaming codec (--causal)
    size = (f", {model['istft_dim']}x{model['istft_layers']}," if model.get("istft_dim") and model.get("istft_layers")
            else "")  # a recipe that sets the ConvNeXt width x depth names it
    lines = [f"# {causal.capitalize() or 'Spectral '}{'spectral ' if causal else ''}codec{size} from scratch on "
             f"{meta['dataset']} (`bench/speech_codec.py`)", "",
             "The spectral codec (`--audio-head istft`: STFT features of the mu-law input, ConvNeXt stacks at 50 "
             "frames/s, inverse-STFT synthesis at 5 ms hops, multi-resolution mel + STFT-magnitude losses) with residual "
             "VQ and quantizer dropout, trained from scratch; one model, scored at several numbers of codebooks on the "
             "whole held-out split (STOI on the clips joined, as `bench/speech_quality.py`). A row counts only with "
             "every codebook's usage >= 50%.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for s in snapshots:
        for r in s["rows"]:
            line = (f"| {s['minutes']:g} | {s['steps']} | {r['codebooks']} | {r['kbps']:g} | {r['stoi']:.3f} | "
                    f"{r['si_snr_db']:.2f} | {r['log_mel_l1']:.3f} | {r['usage_min']:.0%} |")
            if with_classifier:
                line += f" {r.get('accuracy', float('nan')):.1%} |"
            lines.append(line)
    lines += ["", f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}; load average "
              f"{meta['load_average_start']} at the start, {meta['load_average_end']} at the end; "
              f"{meta['train_seconds']:.0f} s of training in all.", "", f"Command: `{meta['command']}`", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    if meta.get("installed"):
        lines += [f"Installed as the package's pretrained `{meta['dataset']}` tokenizer: `{meta['installed']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
