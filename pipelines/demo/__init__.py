"""`vqgen demo`: the whole two-stage pipeline on built-in data, within minutes on a laptop CPU.

Image: an FSQ tokenizer on mnist5k (32x32 -> 8x8 tokens), a sparse-Transformer prior conditioned on the
digit, reconstructions, ten samples of each digit in a grid, and an automatic check that a separately trained
digit classifier agrees with the requested digit. Audio: spoken-digits through the package's pretrained
spectral speech codec (50 frames/s x 5 residual codebooks of 512 codes, 2.25 kbit/s; ``--from-scratch`` trains one), a
delay-pattern Transformer prior conditioned on the digit, ten clips of each digit (WAV + spectrograms) and the
same check with a spoken-digit classifier; without espeak-ng, the `tones` melodies instead.

The two judges live beside the demo: ``digit_judge`` (images) and ``speech_judge`` (spoken digits); the benches
use them too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recipes import load_recipe
from tokenizers_vq import load_codec
from tokenizers_vq.config import DEFAULT_CLIP_SAMPLES, DEFAULT_IMAGE_SIZE, DEFAULT_SAMPLE_RATE
from tokenizers_vq.modality import get_modality

from ..data import load_data
from ..stages.common import make_spec, set_sampling_defaults
from ..stages.generate import sample
from ..stages.reconstruct import reconstruct
from ..stages.tokenize import tokenize_splits, with_placements
from ..stages.train import train_prior, train_tokenizer
from ..training.config import TrainConfig

log = logging.getLogger("vqgen.demo")

# What the demos train, with their budgets (seconds, chosen so the image demo fits in 10 minutes on 2 CPU cores):
# the recipe files recipes/demo/*.yaml, which `vqgen train-tokenizer / train-prior --config` run the same way.
IMAGE_RECIPES = ("demo/image_tokenizer", "demo/image_prior")
AUDIO_RECIPES = ("demo/audio_tokenizer", "demo/audio_prior")  # the tokenizer: --from-scratch and tones only
# ``placements``: the audio training split is tokenized this many times, each word at other random offsets in its
# padded second. With one placement a 420 s prior memorised the 540 training clips' tokens (held-out code length
# 10.2 bits per token, worse than the fixed 9) while its samples still read as digits: copies, not a model.
AUDIO_PLACEMENTS = 8
PRETRAINED_AUDIO = "spoken-digits"  # tokenizers_vq.pretrained name the audio demo starts from
CFG_CANDIDATES = (1.5, 2.0, 3.0, 4.0)  # guidance scales the demos try before recording one for `vqgen sample`
AUDIO_TEMPERATURES = (1.0, 0.85, 0.7)  # the audio demo's selection also tries cooler sampling
# --quick (smoke tests): the recipes with these settings on top (the plumbing, not the quality)
QUICK_LOOP = {"steps": 6, "max_seconds": 30, "batch_size": 16}
QUICK_MODEL = {"n_layer": 1, "d_model": 16, "dropout": 0.0, "istft_dim": 16, "istft_layers": 1}


def _say(msg: str) -> None:
    print(f"[vqgen demo] {msg}", flush=True)


def run_demo(modality: str = "image", out: str | Path = "runs/demo", seed: int = 0, quick: bool = False,
             progress: bool = True, from_scratch: bool = False) -> dict[str, Any]:
    """Run the demo into ``out`` and return the summary (also written to ``out/summary.json``).
    ``from_scratch``: audio only, train the tokenizer instead of starting from the shipped one."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    t0 = time.time()
    # One demo per modality: each is its own pipeline (data, models, checks), named by the modality.
    demos = {"image": lambda: _image_demo(out, seed, quick, progress),
             "audio": lambda: _audio_demo(out, seed, quick, progress, from_scratch)}
    summary = demos[str(get_modality(modality))]()
    summary["total_seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _say(f"done in {summary['total_seconds']:.0f} s. Summary: {out / 'summary.json'}")
    for k, v in summary.items():
        if isinstance(v, (int, float, str)):
            print(f"  {k:>28}: {v}")
    return summary


@dataclass
class Plan:
    """One stage of a demo from its recipe: the model's fields, the loop's, and whether the prior is conditional."""

    model: dict[str, Any]
    loop: dict[str, Any]

    @classmethod
    def from_recipe(cls, name: str, quick: bool) -> Plan:
        settings = load_recipe(name)
        settings.pop("dataset", None)  # the demo picks the data (and its sizes) itself
        settings.pop("conditional", None)  # the demo's priors are conditional whenever the data has labels
        loop_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        loop = {k: v for k, v in settings.items() if k in loop_fields}
        model = {k: v for k, v in settings.items() if k not in loop_fields}
        if quick:
            loop |= QUICK_LOOP
            spectral = model.get("audio_head") == "istft"
            model |= {k: v for k, v in QUICK_MODEL.items() if k in model or (spectral and k.startswith("istft"))}
        return cls(model, loop)

    def train_config(self, out: Path, seed: int, progress: bool) -> TrainConfig:
        return TrainConfig(out=str(out), seed=seed, progress=progress, **self.loop)


def _pipeline(out: Path, data: dict[str, Any], tokenizer: Plan, prior: Plan, eval_limit: int | None, n_recon: int,
              seed: int, progress: bool, pretrained: str | None = None, placements: int = 1
              ) -> tuple[Any, Any, dict[str, Any], Any]:
    """Steps 1-4, the same stage functions the CLI calls: train a tokenizer (or copy the shipped ``pretrained``
    one), reconstruct, tokenize, train a conditional prior (which records its codec and a guidance scale for
    `vqgen sample`)."""
    splits = load_data(make_spec(**data))
    name = data["name"]
    if pretrained is not None:
        from tokenizers_vq.pretrained import load_pretrained, pretrained_path

        _say(f"1/5 the shipped {pretrained} tokenizer ({pretrained_path(pretrained)}; `--from-scratch` trains one)")
        load_pretrained(pretrained)  # checks the fingerprint before anything is built on it
        shutil.copytree(pretrained_path(pretrained), out / "tokenizer")
    else:
        kind = tokenizer.model.get("quantizer", "fsq").upper()
        _say(f"1/5 training an {kind} tokenizer on {name} ({len(splits.train)} examples), up to "
             f"{tokenizer.loop['max_seconds']} s")
        train_tokenizer(data, tokenizer.model, tokenizer.train_config(out / "tokenizer", seed, progress),
                        eval_limit=eval_limit)
    tok = load_codec(out / "tokenizer")
    _say("2/5 reconstructions")
    rec_out = tok.modality.preview_path(out, "reconstructions")  # reconstructions.png, or a folder of WAVs
    rec = reconstruct(tok, splits, rec_out, n=n_recon, seed=seed, progress=progress)
    placed = with_placements(splits, placements)  # unchanged for images and tones
    times = len(placed.train) // len(splits.train)
    _say(f"3/5 tokenizing both splits ({tuple(tok.token_shape())} tokens per input"
         + (f"; the training split {times} times, at other random offsets" if times > 1 else "") + ")")
    tokenize_splits(placed, out / "tokens", name, tok, out / "tokenizer", progress=progress)
    arch = prior.model["arch"].replace("_", "-") + (" (delay pattern)" if prior.model.get("codebook_pattern") == "delay"
                                                     else "")
    _say(f"4/5 training a {arch} prior p(tokens | label), up to {prior.loop['max_seconds']} s")
    pres = train_prior(out / "tokens", prior.model, prior.train_config(out / "prior", seed, progress),
                       conditional=splits.num_classes > 0)
    return splits, tok, rec, pres


def _guided_agreement(out: Path, predict: Any, seed: int, quick: bool, temperatures: tuple[float, ...] = (1.0,)
                      ) -> tuple[float, dict[str, Any], dict[str, float]]:
    """Ten samples of each class; the guidance scale (and, with several ``temperatures``, the temperature) `vqgen
    sample` will use, chosen on a selection run with other seeds than the reported one and recorded in the prior
    folder; the fraction ``predict`` (decoded inputs -> labels) hears / sees as the class asked for. Returns
    (agreement, the final sample summary, selection scores by setting)."""
    labels = [d for d in range(10) for _ in range(10)]

    def agreement(dest: Path, seed_: int, **kw: Any) -> tuple[float, dict[str, Any]]:
        gen = sample(out / "prior", dest, len(labels), labels=labels, seed=seed_, progress=False, **kw)
        return (predict(gen["decoded"]) == torch.tensor(labels)).float().mean().item(), gen

    def name(cfg: float, temp: float) -> str:
        return f"{cfg:g}" if len(temperatures) == 1 else f"cfg {cfg:g} T {temp:g}"

    grid = [(c, t) for c in (CFG_CANDIDATES[:1] if quick else CFG_CANDIDATES) for t in temperatures]
    scores = {(c, t): agreement(out / "cfg_selection" / name(c, t).replace(" ", "_"), seed + 1000, cfg_scale=c,
                                temperature=t)[0] for c, t in grid}
    shutil.rmtree(out / "cfg_selection", ignore_errors=True)
    best = max(scores.values())
    # the gentlest setting within 1 point of the best: least guidance, then the highest temperature
    cfg, temp = min((k for k, v in scores.items() if v >= best - 0.01), key=lambda k: (k[0], -k[1]))
    set_sampling_defaults(out / "prior", cfg_scale=cfg, temperature=temp)
    _say("    selection run, agreement by setting: " + ", ".join(f"{name(*k)}: {v:.0%}" for k, v in scores.items())
         + f"; the prior folder now samples with {name(cfg, temp)}")
    agree, gen = agreement(out / "samples", seed)
    return agree, gen, {name(*k): v for k, v in scores.items()}


def _image_demo(out: Path, seed: int, quick: bool, progress: bool) -> dict[str, Any]:
    data = {"name": "mnist5k", "channels": 1, "image_size": DEFAULT_IMAGE_SIZE, "seed": seed,
            "limit": 256 if quick else None}
    tokenizer, prior = (Plan.from_recipe(name, quick) for name in IMAGE_RECIPES)
    splits, tok, rec, pres = _pipeline(out, data, tokenizer, prior, 100 if quick else None, 16, seed, progress)
    _say(f"    test PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}, codebook usage {rec['codebook_usage']:.0%}")
    from .digit_judge import predict, save_classifier, train_classifier

    _say("5/5 a digit classifier; the guidance scale `vqgen sample` will use, chosen on a selection run; ten samples "
         "of each digit with the prior folder's default settings")
    clf, clf_acc = train_classifier(splits.train, splits.test, epochs=1 if quick else 6, seed=seed, progress=progress)
    save_classifier(clf, out / "classifier")
    agree, gen, scores = _guided_agreement(out, lambda x: predict(clf, x), seed, quick)
    _say(f"    classifier (test accuracy {clf_acc:.1%}) agrees with the requested digit on {agree:.1%} of samples")
    return {
        "modality": "image", "dataset": "mnist5k", "tokenizer": str(out / "tokenizer"), "prior": str(out / "prior"),
        "tokenizer_psnr_db": round(rec["psnr"], 3), "tokenizer_ssim": round(rec["ssim"], 4),
        "codebook_usage": round(rec["codebook_usage"], 4), "prior_bits_per_token": round(pres.metrics.get("bits_per_token", float("nan")), 4),
        "prior_bits_per_dim": round(pres.metrics.get("bits_per_dim", float("nan")), 4),
        "classifier_test_accuracy": round(clf_acc, 4), "samples_label_agreement": round(agree, 4),
        "samples_grid": str(out / "samples" / "grid.png"), "reconstructions": str(out / "reconstructions.png"),
        "cfg_scale": gen["summary"]["cfg_scale"], "cfg_selection": {k: round(v, 3) for k, v in scores.items()},
        "classifier": str(out / "classifier"),
    }


def _audio_demo(out: Path, seed: int, quick: bool, progress: bool, from_scratch: bool = False) -> dict[str, Any]:
    name = "spoken-digits" if shutil.which("espeak-ng") else "tones"
    if name == "tones":
        _say("espeak-ng is not installed, so the audio demo uses the built-in `tones` melodies instead of "
             "spoken digits (install it with `apt-get install espeak-ng` or `brew install espeak-ng`)")
    data = {"name": name, "sample_rate": DEFAULT_SAMPLE_RATE, "clip_seconds": DEFAULT_CLIP_SAMPLES / DEFAULT_SAMPLE_RATE,
            "seed": seed, "limit": 64 if quick else None}
    from tokenizers_vq.pretrained import available

    pretrained = (PRETRAINED_AUDIO if name == "spoken-digits" and not from_scratch and not quick
                  and PRETRAINED_AUDIO in available() else None)
    tokenizer, prior = (Plan.from_recipe(name, quick) for name in AUDIO_RECIPES)
    splits, tok, rec, pres = _pipeline(out, data, tokenizer, prior, 16 if quick else None, 4, seed, progress,
                                       pretrained=pretrained, placements=1 if quick else AUDIO_PLACEMENTS)
    _say(f"    held-out STOI {rec.get('stoi', float('nan')):.3f} at {rec.get('kbps', 0.0):.2f} kbit/s, codebook usage "
         f"{rec.get('codebook_usage', float('nan')):.0%}")
    summary = {
        "modality": "audio", "dataset": name, "tokenizer": str(out / "tokenizer"), "prior": str(out / "prior"),
        "tokenizer_source": f"pretrained:{pretrained}" if pretrained else "trained",
        "tokenizer_stoi": round(rec.get("stoi", float("nan")), 4),
        "tokenizer_si_snr_db": round(rec.get("si_snr", float("nan")), 3),
        "tokenizer_log_mel_l1": round(rec.get("log_mel_l1", float("nan")), 4), "kbps": round(rec.get("kbps", 0.0), 3),
        "codebook_usage": round(rec.get("codebook_usage", float("nan")), 4),
        "prior_bits_per_token": round(pres.metrics.get("bits_per_token", float("nan")), 4),
        "samples": str(out / "samples"), "reconstructions": str(out / "reconstructions"),
    }
    if name != "spoken-digits":
        _say("5/5 sampling clips (the prior folder's default settings)")
        k = max(1, splits.num_classes)
        labels = [i % k for i in range(min(10, 2 * k))] if splits.num_classes else None
        sample(out / "prior", out / "samples", len(labels) if labels else 8, labels=labels, seed=seed, progress=progress)
        return summary
    from .speech_judge import predict_audio, save_audio_classifier, train_audio_classifier

    _say("5/5 a spoken-digit classifier (trained on the training voices' original clips); the guidance scale, "
         "chosen on a selection run; ten clips of each digit with the prior folder's default settings")
    clf, clf_acc = train_audio_classifier(splits.train, splits.test, epochs=1 if quick else 20, seed=seed,
                                          progress=progress)
    save_audio_classifier(clf, out / "classifier")
    # Audio samples also babble after the word at temperature 1, so the selection tries cooler sampling too.
    agree, gen, scores = _guided_agreement(out, lambda x: predict_audio(clf, x), seed, quick,
                                           temperatures=(1.0,) if quick else AUDIO_TEMPERATURES)
    _say(f"    classifier (held-out voices accuracy {clf_acc:.1%}) hears the requested digit in {agree:.1%} of clips")
    return summary | {
        "classifier_test_accuracy": round(clf_acc, 4), "samples_label_agreement": round(agree, 4),
        "cfg_scale": gen["summary"]["cfg_scale"], "temperature": gen["summary"]["temperature"],
        "cfg_selection": {k: round(v, 3) for k, v in scores.items()},
        "classifier": str(out / "classifier"), "samples_spectrograms": str(out / "samples" / "spectrograms.png"),
    }
