"""`vqgen demo`: the whole two-stage pipeline on built-in data, within minutes on a laptop CPU.

Image: an FSQ tokenizer on mnist5k (32x32 -> 8x8 tokens), a sparse-Transformer prior conditioned on the
digit, reconstructions, ten samples of each digit in a grid, and an automatic check that a separately trained
digit classifier agrees with the requested digit. Audio: the same on spoken-digits (or tones without
espeak-ng), writing WAV clips and spectrograms.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from prior import PriorConfig, build_prior
from tokenizers_vq import TokenizerConfig, build_tokenizer

from .data import DataSpec, load_data
from .data.tokens import load_tokens
from .stages.generate import generate
from .stages.reconstruct import reconstruct
from .stages.tokenize import tokenize_splits
from .training.loop import TrainConfig, train
from .training.tasks import AUDIO_CROP_SAMPLES, PriorTask, TokenGridDataset, TokenizerTask

log = logging.getLogger("vqgen.demo")

# Budgets (seconds of training) chosen so the whole image demo fits in 10 minutes on 2 CPU cores.
IMAGE_PLAN = {"tok_steps": 6000, "tok_seconds": 200, "tok_batch": 16, "prior_steps": 4000, "prior_seconds": 230, "batch": 64}
AUDIO_PLAN = {"tok_steps": 1500, "tok_seconds": 200, "tok_batch": 16, "prior_steps": 3000, "prior_seconds": 200, "batch": 16}
QUICK_PLAN = {"tok_steps": 6, "tok_seconds": 30, "tok_batch": 16, "prior_steps": 6, "prior_seconds": 30, "batch": 16}


def _say(msg: str) -> None:
    print(f"[vqgen demo] {msg}", flush=True)


def run_demo(modality: str = "image", out: str | Path = "runs/demo", seed: int = 0, quick: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out`` and return the summary (also written to ``out/summary.json``)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    t0 = time.time()
    if modality == "image":
        summary = _image_demo(out, seed, QUICK_PLAN if quick else IMAGE_PLAN, quick, progress)
    else:
        summary = _audio_demo(out, seed, QUICK_PLAN if quick else AUDIO_PLAN, quick, progress)
    summary["total_seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _say(f"done in {summary['total_seconds']:.0f} s. Summary: {out / 'summary.json'}")
    for k, v in summary.items():
        if isinstance(v, (int, float, str)):
            print(f"  {k:>28}: {v}")
    return summary


def _train_cfg(out: Path, steps: int, seconds: float, batch: int, lr: float, seed: int, progress: bool) -> TrainConfig:
    return TrainConfig(out=str(out), steps=steps, batch_size=batch, lr=lr, max_seconds=seconds, seed=seed,
                       eval_every=10**9, save_every=10**9, progress=progress, log_every=20)


def _image_demo(out: Path, seed: int, plan: dict[str, Any], quick: bool, progress: bool) -> dict[str, Any]:
    spec = DataSpec("mnist5k", channels=1, image_size=32, seed=seed, limit=256 if quick else None)
    splits = load_data(spec)
    _say(f"1/5 training an FSQ tokenizer on mnist5k ({len(splits.train)} digits, 32x32 -> 8x8 tokens), "
         f"up to {plan['tok_seconds']} s")
    tok = build_tokenizer(TokenizerConfig(modality="image", quantizer="fsq", channels=1, image_size=32))
    train(TokenizerTask(tok, "mnist5k", eval_limit=100 if quick else None), splits.train, splits.test,
          _train_cfg(out / "tokenizer", plan["tok_steps"], plan["tok_seconds"], plan["tok_batch"], 2e-3, seed, progress))
    tok.eval()
    _say("2/5 reconstructions")
    rec = reconstruct(tok, splits, out / "reconstructions.png", n=16, seed=seed, progress=progress)
    _say(f"    test PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}, codebook usage {rec['codebook_usage']:.0%}")
    _say("3/5 tokenizing both splits")
    tokenize_splits(splits, out / "tokens", "mnist5k", tokenizer=tok, tokenizer_path=str(out / "tokenizer"),
                    progress=progress)
    tr, trl = load_tokens(out / "tokens", "train")
    te, tel = load_tokens(out / "tokens", "test")
    _say(f"4/5 training a sparse-Transformer prior p(tokens | digit), up to {plan['prior_seconds']} s")
    pcfg = PriorConfig(arch="sparse_transformer", vocab_size=tok.vocab_size, shape=(8, 8), num_classes=10,
                       n_layer=4 if not quick else 1, n_head=4, d_model=128 if not quick else 16, attention="strided",
                       stride=8, label_dropout=0.1)
    prior = build_prior(pcfg)
    pres = train(PriorTask(prior, str(out / "tokens"), dims_per_grid=32 * 32), TokenGridDataset(tr, trl),
                 TokenGridDataset(te, tel),
                 _train_cfg(out / "prior", plan["prior_steps"], plan["prior_seconds"], plan["batch"], 1e-3, seed, progress))
    (out / "prior" / "class_names.json").write_text(json.dumps(splits.class_names))
    _say("5/5 sampling ten of each digit and checking them with a digit classifier")
    labels = [d for d in range(10) for _ in range(10)]
    gen = generate(prior, tok, len(labels), out / "samples", labels=labels, temperature=1.0, top_k=None,
                   cfg_scale=2.0, seed=seed, progress=progress, class_names=splits.class_names)
    from .classifier import predict, train_classifier

    clf, clf_acc = train_classifier(splits.train, splits.test, epochs=1 if quick else 6, seed=seed, progress=progress)
    pred = predict(clf, gen["decoded"])
    agree = (pred == torch.tensor(labels)).float().mean().item()
    _say(f"    classifier (test accuracy {clf_acc:.1%}) agrees with the requested digit on {agree:.1%} of samples")
    return {
        "modality": "image", "dataset": "mnist5k", "tokenizer": str(out / "tokenizer"), "prior": str(out / "prior"),
        "tokenizer_psnr_db": round(rec["psnr"], 3), "tokenizer_ssim": round(rec["ssim"], 4),
        "codebook_usage": round(rec["codebook_usage"], 4), "prior_bits_per_token": round(pres.metrics.get("bits_per_token", float("nan")), 4),
        "prior_bits_per_dim": round(pres.metrics.get("bits_per_dim", float("nan")), 4),
        "classifier_test_accuracy": round(clf_acc, 4), "samples_label_agreement": round(agree, 4),
        "samples_grid": str(out / "samples" / "grid.png"), "reconstructions": str(out / "reconstructions.png"),
        "cfg_scale": 2.0,
    }


def _audio_demo(out: Path, seed: int, plan: dict[str, Any], quick: bool, progress: bool) -> dict[str, Any]:
    name = "spoken-digits" if shutil.which("espeak-ng") else "tones"
    if name == "tones":
        _say("espeak-ng is not installed, so the audio demo uses the built-in `tones` melodies instead of "
             "spoken digits (install it with `apt-get install espeak-ng` or `brew install espeak-ng`)")
    spec = DataSpec(name, modality="audio", sample_rate=16000, clip_samples=16000, seed=seed, limit=64 if quick else None)
    splits = load_data(spec)
    _say(f"1/5 training an FSQ audio tokenizer on {name} ({len(splits.train)} clips of 1 s, 250 tokens/s), "
         f"up to {plan['tok_seconds']} s")
    tok = build_tokenizer(TokenizerConfig(modality="audio", quantizer="fsq", sample_rate=16000, clip_samples=16000))
    train(TokenizerTask(tok, name, eval_limit=16 if quick else 64, crop_samples=AUDIO_CROP_SAMPLES), splits.train, splits.test,
          _train_cfg(out / "tokenizer", plan["tok_steps"], plan["tok_seconds"], plan["tok_batch"], 2e-3, seed, progress))
    tok.eval()
    _say("2/5 reconstructions (WAV pairs and spectrograms)")
    rec = reconstruct(tok, splits, out / "reconstructions", n=4, seed=seed, progress=progress)
    _say("3/5 tokenizing both splits")
    tokenize_splits(splits, out / "tokens", name, tokenizer=tok, tokenizer_path=str(out / "tokenizer"), progress=progress)
    tr, trl = load_tokens(out / "tokens", "train")
    te, tel = load_tokens(out / "tokens", "test")
    shape = tuple(tr.shape[1:])
    _say(f"4/5 training a sparse-Transformer prior over {shape[0]} tokens per clip, up to {plan['prior_seconds']} s")
    pcfg = PriorConfig(arch="sparse_transformer", vocab_size=tok.vocab_size, shape=shape, num_classes=splits.num_classes,
                       n_layer=4 if not quick else 1, n_head=4, d_model=128 if not quick else 16, attention="strided",
                       label_dropout=0.1)
    prior = build_prior(pcfg)
    pres = train(PriorTask(prior, str(out / "tokens"), dims_per_grid=spec.clip_samples), TokenGridDataset(tr, trl),
                 TokenGridDataset(te, tel),
                 _train_cfg(out / "prior", plan["prior_steps"], plan["prior_seconds"], plan["batch"], 1e-3, seed, progress))
    (out / "prior" / "class_names.json").write_text(json.dumps(splits.class_names))
    _say("5/5 sampling clips")
    k = max(1, splits.num_classes)
    labels = [i % k for i in range(min(10, 2 * k))] if splits.num_classes else None
    n = len(labels) if labels else 8
    generate(prior, tok, n, out / "samples", labels=labels, cfg_scale=2.0 if labels else None, seed=seed,
             progress=progress, class_names=splits.class_names)
    return {
        "modality": "audio", "dataset": name, "tokenizer": str(out / "tokenizer"), "prior": str(out / "prior"),
        "tokenizer_si_snr_db": round(rec.get("si_snr", float("nan")), 3),
        "tokenizer_log_mel_l1": round(rec.get("log_mel_l1", float("nan")), 4), "kbps": round(rec.get("kbps", 0.0), 3),
        "prior_bits_per_token": round(pres.metrics.get("bits_per_token", float("nan")), 4),
        "samples": str(out / "samples"), "reconstructions": str(out / "reconstructions"),
    }
