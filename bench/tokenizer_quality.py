"""Tokenizer quality on CPU: each quantizer trained for a fixed wall-clock budget, scored on the test split.

Every row goes through the product path: ``build_tokenizer`` -> ``pipelines.training.loop.train`` with a
``TokenizerTask`` and ``TrainConfig(max_seconds=budget)`` -> ``evaluate_tokenizer`` on the whole test
split. Before each run a throwaway copy of the model is timed for a few steps, so that ``steps`` (and with
it the cosine LR schedule and, for ``gumbel``, the temperature annealing) ends close to the budget instead
of being cut off at full learning rate.

Targets (mnist5k, 32x32 -> 8x8 tokens, 5 CPU-minutes each): test PSNR >= 27 dB for fsq and vq, >= 24 dB
for gumbel; codebook usage >= 80% for vq and fsq. Audio at <= 2.5 kbit/s: tones SI-SNR >= 10 dB;
spoken-digits log-mel L1 at most half that of the decoder fed all-zero codes; an audio row counts only with
every codebook at least 50% used (a collapsed codebook that passes a spectral threshold is a failure).

``--recipe NAME`` reproduces the row of a train-tokenizer recipe of recipes/ (the file ``vqgen train-tokenizer
--config`` reads): its dataset, quantizer, model fields, budget (``max_seconds``) and loop (autocast, batch,
lr where it sets them) replace the defaults of the flags, which still override them; the steps are planned
from the timing as for every row (the file's ``steps`` is what the recorded row planned), with one evaluation
at the end. The README's tones row: ``OMP_NUM_THREADS=2 python -m bench.tokenizer_quality --recipe
tones/mulaw_fsq16-8-8 --merge``.

Run: ``OMP_NUM_THREADS=2 python -m bench.tokenizer_quality`` (writes bench/results/tokenizer_quality.json
and docs/benchmarks/tokenizer_quality.md); ``--quick`` for a short smoke run that only prints.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bench.common import ROOT, cpu_model, parse_overrides, read_recipe, write_results
from pipelines.data import DataSpec, load_data
from pipelines.training.loop import TrainConfig, train
from pipelines.training.tasks import AUDIO_CROP_SAMPLES, TokenizerTask, evaluate_tokenizer
from tokenizers_vq import TokenizerConfig, build_tokenizer
from tokenizers_vq import metrics as M
from tokenizers_vq.modality import get_modality

IMAGE_DATASETS = ("mnist5k",)
AUDIO_DATASETS = ("tones", "spoken-digits")
DEFAULT_QUANTIZERS = ["fsq", "vq", "gumbel"]
DEFAULT_BUDGET_S = 300.0
# A recipe's TrainConfig fields: those a row takes, and those it does not use (it plans its steps from a
# timing so that the cosine schedule ends at the budget, evaluates once at the end and logs every 50 steps)
RECIPE_LOOP = ("max_seconds", "mixed_precision", "batch_size", "lr")
RECIPE_UNUSED = ("steps", "eval_every", "save_every", "log_every")
# Loop settings per modality (the CLI's train-tokenizer defaults should match these for images).
# Small batches win on a CPU budget: at a fixed number of seconds, batch 16 did ~1.7x the steps of batch 32 and
# ended ~1.7 dB higher on mnist5k (fsq, 90 s); batch 64 was another 2.5 dB behind.
LOOP = {"image": {"batch_size": 16, "lr": 2e-3}, "audio": {"batch_size": 16, "lr": 2e-3}}
TARGETS = {
    ("mnist5k", "fsq"): {"psnr": 27.0, "codebook_usage": 0.8},
    ("mnist5k", "vq"): {"psnr": 27.0, "codebook_usage": 0.8},
    ("mnist5k", "gumbel"): {"psnr": 24.0},
    ("tones", "*"): {"si_snr": 10.0, "kbps_max": 2.5, "codebook_usage": 0.5},
    ("spoken-digits", "*"): {"log_mel_ratio_max": 0.5, "kbps_max": 2.5, "codebook_usage": 0.5},
}




def from_recipe(name: str) -> dict[str, Any]:
    """What a row takes from a train-tokenizer recipe (``--recipe``): {"file": the file read, "dataset",
    "quantizer" (TokenizerConfig's default when the file names none), "model": the other TokenizerConfig
    fields, "loop": the ``RECIPE_LOOP`` fields it sets (``max_seconds``: the row's budget), "crop_samples": or
    None}. A key that is neither those nor ``RECIPE_UNUSED`` is a ValueError naming it (the row would silently
    differ)."""
    settings, file = read_recipe(name, "train-tokenizer")
    model_keys = TokenizerConfig.known_fields()
    unknown = set(settings) - model_keys - set(RECIPE_LOOP) - set(RECIPE_UNUSED) - {"dataset", "crop_samples"}
    if unknown:
        raise ValueError(f"recipe {file}: {', '.join(sorted(unknown))} not taken by bench.tokenizer_quality "
                         "(it takes TokenizerConfig fields, dataset, crop_samples and "
                         f"{', '.join(RECIPE_LOOP)})")
    if "dataset" not in settings:
        raise ValueError(f"recipe {file} names no dataset")
    return {"file": file, "dataset": settings["dataset"],
            "quantizer": settings.get("quantizer", TokenizerConfig.__dataclass_fields__["quantizer"].default),
            "model": {k: v for k, v in settings.items() if k in model_keys and k != "quantizer"},
            "loop": {k: settings[k] for k in RECIPE_LOOP if k in settings},
            "crop_samples": settings.get("crop_samples")}


def apply_recipe(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Fill the flags left unset (None) from ``--recipe``'s file, then the defaults; returns the model fields
    the recipe gives (the ``--set`` overrides go on top of them) and the file read ({}, None without a
    recipe)."""
    model: dict[str, Any] = {}
    file = None
    if args.recipe:
        rec = from_recipe(args.recipe)
        model, loop, file = rec["model"], rec["loop"], rec["file"]
        args.datasets = args.datasets or [rec["dataset"]]
        args.quantizers = args.quantizers or [rec["quantizer"]]
        budget = "budget" if rec["dataset"] in IMAGE_DATASETS else "audio_budget"
        if getattr(args, budget) is None:
            setattr(args, budget, loop.get("max_seconds"))
        for key in ("mixed_precision", "batch_size", "lr"):
            if getattr(args, key) is None:
                setattr(args, key, loop.get(key))
        if args.crop_samples is None:
            args.crop_samples = rec["crop_samples"]
    args.datasets = args.datasets or ["mnist5k", "tones", "spoken-digits"]
    args.quantizers = args.quantizers or list(DEFAULT_QUANTIZERS)
    args.budget = args.budget if args.budget is not None else DEFAULT_BUDGET_S
    args.mixed_precision = args.mixed_precision or "auto"
    args.crop_samples = args.crop_samples if args.crop_samples is not None else AUDIO_CROP_SAMPLES
    return model, file


def machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()}


def steps_per_second(tokenizer: torch.nn.Module, task: Any, dataset: Any, batch_size: int, lr: float, n: int = 20,
                     bf16: bool = False) -> float:
    """Training steps per second of a throwaway copy (forward, backward, AdamW), after 2 warm-up steps.

    Other processes on a shared machine make single steps up to ~50x slower in bursts; the planned step count
    uses the 25th percentile of the step times (the machine's own speed), since planning too few steps ends
    the run early with budget left, while planning too many only stops the cosine schedule before its end.
    """
    model = copy.deepcopy(tokenizer).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    batches = [b[0] for _, b in zip(range(n + 2), itertools.cycle(loader))]
    times = []
    for i, x in enumerate(batches):
        x = task.crop(x.float())  # the same training windows the run will use
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the run will train
            loss = model(x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1.0 / times[len(times) // 4]


@torch.no_grad()
def zero_code_log_mel(tokenizer: Any, dataset: Any, batch_size: int = 16) -> float:
    """Log-mel L1 of the decoder fed all-zero codes: the trivial baseline a useful code must beat."""
    tokenizer.eval()
    total, n = 0.0, 0
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        tokens = tokenizer.encode(x.float())
        est = tokenizer.decode(torch.zeros_like(tokens))[..., : x.shape[-1]]
        total += M.log_mel_l1(est, x.float(), tokenizer.config.sample_rate).item() * len(x)
        n += len(x)
    return total / max(n, 1)


def run_one(dataset: str, quantizer: str, budget: float, overrides: dict[str, Any], loop: dict[str, Any],
            splits: Any, seed: int, crop_samples: int | None = None) -> dict[str, Any]:
    modality = splits.modality
    kind = get_modality(modality)
    fields: dict[str, Any] = {"modality": modality, "quantizer": quantizer}
    if modality == "audio":  # this table's audio rows are the mu-law heads' (the tokenizer default until issue 24)
        fields["audio_head"] = "logistic"
    fields |= kind.sizes(splits.input_shape, splits.sample_rate)  # image channels and size, audio rate and clip
    fields |= {k: v for k, v in overrides.items() if k in TokenizerConfig.known_fields()}
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TokenizerConfig(**fields))
    crop = crop_samples if kind.timed else None
    precision = loop.get("mixed_precision", "auto")
    rate = steps_per_second(tokenizer, TokenizerTask(tokenizer, dataset, crop_samples=crop), splits.train,
                            loop["batch_size"], loop["lr"], bf16=precision == "bf16")
    steps = max(20, int(rate * budget))
    if quantizer == "gumbel":  # anneal over the whole run, as `vqgen train-tokenizer` does
        fields["gumbel_anneal_steps"] = steps
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(TokenizerConfig(**fields))
    out = Path(tempfile.mkdtemp(prefix=f"tq-{dataset}-{quantizer}-"))
    try:
        cfg = TrainConfig(out=str(out), steps=steps, batch_size=loop["batch_size"], lr=loop["lr"], max_seconds=budget,
                          eval_every=10**9, save_every=10**9, log_every=50, seed=seed, progress=False,
                          mixed_precision=precision)
        t0 = time.time()
        result = train(TokenizerTask(tokenizer, dataset, crop_samples=crop), splits.train, None, cfg,
                       hparams=tokenizer.config.to_dict())
        train_s = time.time() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    metrics = evaluate_tokenizer(tokenizer, splits.test, batch_size=kind.eval_batch_size)
    row: dict[str, Any] = {"dataset": dataset, "modality": modality, "quantizer": quantizer, "budget_s": budget,
                           "steps": result.step, "planned_steps": steps, "calibrated_steps_per_s": round(rate, 3),
                           "train_s": round(train_s, 1), "stopped_by": result.status,
                           "params": sum(p.numel() for p in tokenizer.parameters()),
                           "vocab_size": tokenizer.vocab_size,
                           "token_shape": list(tokenizer.token_shape(tokenizer.input_shape)),
                           "batch_size": loop["batch_size"], "lr": loop["lr"], "crop_samples": crop,
                           "mixed_precision": precision,
                           "config": {k: v for k, v in tokenizer.config.to_dict().items()
                                      if k in ("hidden_channels", "num_res_blocks", "latent_res_blocks", "latent_dim",
                                               "codebook_size", "audio_head", "waveform_loss_weight",
                                               "fsq_levels", "downsample", "commitment_weight",
                                               "dead_code_threshold", "gumbel_kl_weight")},
                           **{k: round(v, 4) for k, v in metrics.items()}}
    if dataset == "spoken-digits":
        row["zero_code_log_mel_l1"] = round(zero_code_log_mel(tokenizer, splits.test), 4)
    row["meets_target"] = meets_target(row)
    return row


def meets_target(row: dict[str, Any]) -> bool | None:
    t = TARGETS.get((row["dataset"], row["quantizer"])) or TARGETS.get((row["dataset"], "*"))
    if t is None:
        return None
    ok = True
    if "psnr" in t:
        ok &= row["psnr"] >= t["psnr"]
    if "codebook_usage" in t:
        ok &= row["codebook_usage"] >= t["codebook_usage"]
    if "si_snr" in t:
        ok &= row["si_snr"] >= t["si_snr"]
    if "kbps_max" in t:
        ok &= row["kbps"] <= t["kbps_max"]
    if "log_mel_ratio_max" in t:
        ok &= row["log_mel_l1"] <= t["log_mel_ratio_max"] * row["zero_code_log_mel_l1"]
    return bool(ok)


def recipe(r: dict[str, Any]) -> str:
    """An audio row's settings that differ from the defaults its table assumes (mu-law heads: FSQ levels
    8,5,5,5, waveform loss x30; fp32), e.g. "fsq_levels 16,8,8; waveform x100; bf16"; "" for the defaults."""
    c, parts = r.get("config", {}), []
    if c.get("fsq_levels") not in (None, [8, 5, 5, 5]) and r["quantizer"] in ("fsq", "rfsq"):
        parts.append("fsq_levels " + ",".join(map(str, c["fsq_levels"])))
    if c.get("audio_head", "categorical") != "istft" and c.get("waveform_loss_weight", 30.0) != 30.0:
        parts.append(f"waveform x{c['waveform_loss_weight']:g}")
    if r.get("mixed_precision") == "bf16":
        parts.append("bf16")
    return "; ".join(parts)


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two result rows the same experiment (a rerun replaces the old row)."""
    return r["dataset"], r["quantizer"], r.get("budget_s"), r.get("config", {}).get("audio_head"), recipe(r)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| quantizer | dataset | budget s | steps | test PSNR dB | SSIM | codebook usage | perplexity | "
             "bits/image | target |", "|---|---|---|---|---|---|---|---|---|---|"]
    audio = ["| quantizer | dataset | decoder head | budget s | steps | test SI-SNR dB | log-mel L1 | "
             "zero-code log-mel L1 | kbit/s | codebook usage | perplexity | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            if not get_modality(r["modality"]).timed:
                lines.append(f"| {r['quantizer']} | {r['dataset']} | - | - | skipped: {r['skipped']} |")
            else:  # one more leading column (decoder head)
                audio.append(f"| {r['quantizer']} | {r['dataset']} | - | - | - | skipped: {r['skipped']} |")
            continue
        # judged by today's targets, so a row recorded before a rule (e.g. usage >= 50% for audio) obeys it too
        ok = {True: "met", False: "missed", None: "-"}[meets_target(r)]
        if not get_modality(r["modality"]).timed:  # the image table; timed inputs: the audio table
            lines.append(f"| {r['quantizer']} | {r['dataset']} | {r['budget_s']:.0f} | {r['steps']} | {r['psnr']:.2f} | "
                         f"{r['ssim']:.3f} | {r['codebook_usage']:.1%} | {r['perplexity']:.0f} | "
                         f"{r['bits_per_image']:.0f} | {ok} |")
        else:
            zero = f"{r['zero_code_log_mel_l1']:.3f}" if "zero_code_log_mel_l1" in r else "-"
            head = r.get("config", {}).get("audio_head", "categorical")  # rows from before the head existed
            head += f" ({recipe(r)})" if recipe(r) else ""
            audio.append(f"| {r['quantizer']} | {r['dataset']} | {head} | {r['budget_s']:.0f} | {r['steps']} | "
                         f"{r['si_snr']:.2f} | "
                         f"{r['log_mel_l1']:.3f} | {zero} | {r['kbps']:.2f} | {r['codebook_usage']:.1%} | "
                         f"{r['perplexity']:.0f} | {ok} |")
    out = lines if len(lines) > 2 else []
    if len(audio) > 2:
        out += ([""] if out else []) + audio
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Tokenizer quality on CPU at a fixed wall-clock budget", "",
             "`bench/tokenizer_quality.py`: each quantizer is trained through the product path "
             "(`pipelines.training.loop.train` + `TokenizerTask`, `max_seconds` = the budget) and scored on the whole "
             "test split. `steps` is what the budget allowed; the cosine schedule (and gumbel's temperature "
             "annealing) is planned from a short timing of the model so that it ends near the budget.", "",
             *table(rows), "",
             "Targets: mnist5k (32x32 -> 8x8 tokens) test PSNR >= 27 dB for fsq and vq, >= 24 dB for gumbel, "
             "codebook usage >= 80% for fsq and vq; audio at <= 2.5 kbit/s: tones SI-SNR >= 10 dB, "
             "spoken-digits log-mel L1 at most half the zero-code baseline (the decoder fed all-zero codes); an audio row "
             "counts only with every codebook at least 50% used. "
             "Bits per image = tokens x log2(vocabulary), the fixed-length code before any prior.", "",
             f"Model settings: {meta['settings']}.", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, {meta['threads']} threads "
             f"(OMP_NUM_THREADS={meta['omp_num_threads']}).", "",
             *[f"- run of {', '.join(r['datasets'])}: load average (1, 5, 15 min) {r['load_average_start']} at the "
               f"start, {r['load_average_end']} at the end. {r['note']}" for r in meta["runs"]], "",
             "Reproduce: `OMP_NUM_THREADS=2 python -m bench.tokenizer_quality --datasets mnist5k --budget 300` (image "
             "rows); `OMP_NUM_THREADS=1 python -m bench.tokenizer_quality --datasets tones --audio-budget 300 --merge` "
             "and the same with `--datasets spoken-digits`, side by side (audio rows). Add "
             "`--set audio_head=categorical` for the paper's free-logit decoder head. A recipe's row (its "
             "file of recipes/ gives the model, budget and autocast): `OMP_NUM_THREADS=2 python -m "
             "bench.tokenizer_quality --recipe tones/mulaw_fsq16-8-8 --merge` (the tones row at 10 dB).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None, metavar="NAME_OR_FILE",
                    help="reproduce a train-tokenizer recipe's row (e.g. tones/mulaw_fsq16-8-8: "
                         "recipes/tones/mulaw_fsq16-8-8.yaml): its dataset, quantizer, model fields, "
                         "max_seconds as the budget, autocast / batch / lr where it sets them; the flags "
                         "below override them")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"training seconds per image row (default {DEFAULT_BUDGET_S:g}, or an image "
                         "recipe's max_seconds)")
    ap.add_argument("--audio-budget", type=float, default=None,
                    help="training seconds per audio row (default --budget, or an audio recipe's "
                         "max_seconds)")
    ap.add_argument("--quantizers", nargs="+", default=None, choices=["fsq", "vq", "gumbel", "rvq", "rfsq"],
                    help="default fsq vq gumbel (a recipe's: its quantizer); rvq / rfsq: residual codebooks "
                         "(--set num_quantizers=N downsample=D; the bitrate counts them all)")
    ap.add_argument("--datasets", nargs="+", default=None,
                    help="default mnist5k tones spoken-digits (a recipe's: its dataset)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="TokenizerConfig overrides (all rows; on top of a recipe's), YAML values: "
                         "fsq_levels=[16,8,8] waveform_loss_weight=100")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 images / 16 audio clips")
    ap.add_argument("--lr", type=float, default=None, help="default 2e-3")
    ap.add_argument("--crop-samples", type=int, default=None,
                    help=f"audio: train on random windows of this many samples (default {AUDIO_CROP_SAMPLES}, as `vqgen "
                         "train-tokenizer`; 0 = whole clips); evaluation uses whole clips")
    ap.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "auto"),
                    help="training autocast (default auto, or a recipe's; auto: bf16 on CUDA, fp32 on a CPU; "
                         "bf16 also runs on CPUs with AVX-512 BF16); evaluation is fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10-second budgets and a data subset; print only")
    ap.add_argument("--no-write", action="store_true", help="print only (experiments)")
    ap.add_argument("--note", default="", help="a sentence for the markdown (e.g. about machine load)")
    ap.add_argument("--merge", action="store_true", help="keep rows of the existing results file that this run "
                    "does not redo (e.g. audio rows run separately)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = parse_overrides(args.set, known=TokenizerConfig.known_fields())
    recipe_model, recipe_file = apply_recipe(args)
    overrides = recipe_model | overrides
    budget = 10.0 if args.quick else args.budget
    audio_budget = 10.0 if args.quick else (args.audio_budget or budget)
    meta = machine()
    run_info = {"recipe": recipe_file,
                "datasets": args.datasets, "quantizers": args.quantizers, "budget_s": budget,
                "audio_budget_s": audio_budget, "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        modality = "image" if dataset in IMAGE_DATASETS else "audio" if dataset in AUDIO_DATASETS else None
        try:
            # audio clip length follows a clip_samples override, so shorter training clips really are cheaper
            clip = int(overrides.get("clip_samples", 16000))
            splits = load_data(DataSpec(dataset, limit=256 if args.quick else None, clip_samples=clip))
            modality = splits.modality
        except Exception as e:  # e.g. espeak-ng missing for spoken-digits: skip the row, say why
            for q in args.quantizers:
                rows.append({"dataset": dataset, "modality": modality or "audio", "quantizer": q,
                             "skipped": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
                print(json.dumps(rows[-1]), flush=True)
            continue
        loop = dict(LOOP[modality])
        if args.batch_size:
            loop["batch_size"] = args.batch_size
        if args.lr:
            loop["lr"] = args.lr
        loop["mixed_precision"] = args.mixed_precision
        for q in args.quantizers:
            row = run_one(dataset, q, {"image": budget, "audio": audio_budget}[modality], overrides, loop, splits, args.seed,
                          crop_samples=args.crop_samples or None)
            if run_info["recipe"]:
                row["recipe_file"] = run_info["recipe"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    run_info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    run_info["note"] = args.note
    meta["runs"] = [run_info]
    meta["settings"] = ((f"recipe {run_info['recipe']}: " if run_info["recipe"] else "")
                        + f"TokenizerConfig defaults{' + ' + json.dumps(overrides) if overrides else ''}; "
                        f"image loop batch {args.batch_size or LOOP['image']['batch_size']}, "
                        f"lr {args.lr or LOOP['image']['lr']}; audio loop batch "
                        f"{args.batch_size or LOOP['audio']['batch_size']}, lr {args.lr or LOOP['audio']['lr']}, "
                        f"training windows {args.crop_samples or 'whole clips'} samples")
    print("\n".join(table(rows)))
    if args.quick or args.no_write:
        return
    res_path = ROOT / "bench/results/tokenizer_quality.json"
    if args.merge and res_path.is_file():
        old = json.loads(res_path.read_text())
        done = {row_key(r) for r in rows}  # a longer budget or another audio head adds a row
        rows = [r for r in old["results"] if row_key(r) not in done] + rows
        meta["runs"] = old.get("meta", {}).get("runs", []) + meta["runs"]
    order = {d: i for i, d in enumerate(IMAGE_DATASETS + AUDIO_DATASETS)}
    rows.sort(key=lambda r: (order.get(r["dataset"], 99), ["fsq", "vq", "gumbel"].index(r["quantizer"]),
                             r.get("budget_s", 0), str(r.get("config", {}).get("audio_head", ""))))
    write_results("tokenizer_quality", {"meta": meta, "results": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
