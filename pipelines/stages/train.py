"""The two training stages: ``train_tokenizer`` (a discrete autoencoder on a dataset) and ``train_prior`` (an
autoregressive prior on a token folder, which then records the folder's codec, class names and sampling
defaults beside the model)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prior import PriorConfig, build_prior
from tokenizers_vq import AUTOENCODERS, QUANTIZERS, TokenizerConfig, build_tokenizer
from tokenizers_vq.discriminator import DiscriminatorConfig
from tokenizers_vq.modality import get_modality
from vqgen_io import atomic_write_text

from ..data import infer_modality, load_data, report_skips
from ..data.tokens import load_token_header, load_token_streams, load_tokens, row_chunks, take_rows
from ..likelihood.reference import reference_split
from ..training import accelerator
from ..training.config import TrainConfig, TrainResult
from ..training.loop import train
from ..training.tasks import (
    HeldOut,
    PriorTask,
    TokenGridDataset,
    TokenizerTask,
    TokenStreamDataset,
    evaluate_prior,
)
from .common import BPE_DIR, DEFAULT_CFG_SCALE, SamplingDefaults, make_spec, write_prior_records

log = logging.getLogger("vqgen.train")


def _refuse_other_model(saved: Any, wanted: Any, out: Path, kind: str) -> None:
    """--resume with model arguments that build another model than the run's: a ValueError naming each field."""
    a, b = saved.canonical_dict(), wanted.canonical_dict()  # whatever format the run's config.json is in
    diff = [f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        raise ValueError(f"--resume: the arguments give another {kind} than the one being trained in {out} ("
                         + "; ".join(diff) + "). The checkpoint cannot continue as a different model: resume with the "
                         "run's arguments, or train the new one into another --out")


def default_crop_samples(config: TokenizerConfig) -> int:
    """Audio training window in samples when none is given: the autoencoder family's ``train_crop_samples``
    (mu-law heads 2048, spectral codec 20 tokens), never more than a clip."""
    want = AUTOENCODERS.get(config.autoencoder).train_crop_samples(config)
    return min(want, config.clip_samples // config.downsample * config.downsample)


def _recorded(out: Path, resuming: bool) -> dict[str, Any] | None:
    """The training settings a resumed run recorded (``OUT/train_config.json``), or None (a new run, or none saved)."""
    path = out / "train_config.json"
    return json.loads(path.read_text()) if resuming and path.is_file() else None


def _family_lr(cfg: TrainConfig, family: str, recorded: dict[str, Any] | None) -> TrainConfig:
    """``cfg`` at the learning rate a run without --lr gets: a resumed run's own (``recorded``: its settings), else
    the autoencoder family's ``default_lr`` where it declares one, else ``cfg.lr``."""
    lr, why = getattr(AUTOENCODERS.get(family), "default_lr", None), f"the {family} family's default"
    if recorded is not None:
        lr, why = recorded.get("lr", lr), "the resumed run's"
    if lr is None or lr == cfg.lr:
        return cfg
    log.info("lr %g: %s (--lr to change)", lr, why)
    return dataclasses.replace(cfg, lr=lr)


def _family_precision(cfg: TrainConfig, config: TokenizerConfig, recorded: dict[str, Any] | None) -> TrainConfig:
    """``cfg`` with bf16 autocast where ``--mixed-precision auto`` would run fp32 on a CPU that has bf16 in hardware
    and the autoencoder family declares ``cpu_bf16`` (it trains faster so, and as well); else ``cfg``. A resumed run
    keeps the precision it recorded (``recorded``: its settings); the experimental harmonic source stays fp32 (its
    measurements were)."""
    if cfg.mixed_precision != "auto" or not getattr(AUTOENCODERS.get(config.autoencoder), "cpu_bf16", False):
        return cfg
    if getattr(config, "harmonics", 0):
        return cfg
    if recorded is not None:
        return dataclasses.replace(cfg, mixed_precision=recorded.get("mixed_precision", "auto"))
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # a launcher's setting wins, as in resolve_mixed_precision
        return cfg
    on_cpu = cfg.device == "cpu" or (cfg.device is None and not torch.cuda.is_available())
    if not on_cpu or not accelerator.cpu_has_native_bf16():
        return cfg
    log.info("bf16 autocast: this CPU has bf16 in hardware and the %s family trains faster so "
             "(--mixed-precision no for fp32)", config.autoencoder)
    return dataclasses.replace(cfg, mixed_precision="bf16")


def train_tokenizer(data: dict[str, Any], model: dict[str, Any], cfg: TrainConfig, *, crop_samples: int | None = None,
                    eval_limit: int | None = None, adversarial: DiscriminatorConfig | None = None,
                    family_lr: bool = False) -> TrainResult:
    """Train a tokenizer on the dataset ``data`` (``make_spec`` arguments) into ``cfg.out``.

    ``model``: ``TokenizerConfig`` fields (``modality`` may be None: taken from the data; sizes come from the
    data spec). ``crop_samples``: audio training windows (None: ``default_crop_samples``; 0: whole clips). ``--resume`` with other model fields is refused.
    ``adversarial``: train against a PatchGAN discriminator (images, resnet family) when it sets a weight.
    ``family_lr`` (the command line without --lr): the autoencoder family's ``default_lr`` replaces ``cfg.lr`` where
    it has one (the spectral codec: 1e-3).
    """
    out = Path(cfg.out)
    saved = TokenizerConfig.from_file(out / "config.json") if cfg.resume and (out / "config.json").is_file() else None
    if saved is not None and saved.modality == "audio" and data.get("sample_rate") is None:
        data = {**data, "sample_rate": saved.sample_rate}  # a resumed run keeps its rate (runs from before it followed the data)
    # No --sample-rate: the rate follows the data (8 kHz recordings give an 8 kHz codec, audio_io.follow_data_rate).
    spec = make_spec(modality=model.get("modality"), **data, rate_from_data=data.get("sample_rate") is None)
    modality = infer_modality(spec)
    if model.get("modality") and modality != model["modality"]:
        raise ValueError(f"--modality {model['modality']} but {spec.name} holds {modality} data")
    splits = load_data(spec)
    kind = get_modality(modality)
    fields = {k: v for k, v in model.items() if v is not None} | {"modality": modality}
    fields |= {k: getattr(spec, k) for k in kind.size_fields}  # image channels and size, audio rate and clip
    if kind.timed and splits.sample_rate and splits.input_shape:  # the rate and clip the data was loaded at
        fields |= kind.sizes(splits.input_shape, splits.sample_rate)
    selectors = {k: v for k, v in fields.items() if k in ("modality", "autoencoder", "audio_head", "quantizer")}
    quantizer = QUANTIZERS.config_class(TokenizerConfig(**selectors).quantizer)  # the family's when not given
    fields = quantizer().run_defaults(cfg.steps) | fields  # e.g. gumbel anneals over the whole run
    config = TokenizerConfig(**fields)
    if saved is not None:
        _refuse_other_model(saved, config, out, "tokenizer")
    recorded = _recorded(out, saved is not None)
    if family_lr:
        cfg = _family_lr(cfg, config.autoencoder, recorded)
    cfg = _family_precision(cfg, config, recorded)
    tokenizer = build_tokenizer(config)
    atomic_write_text(out / "config.json", config.to_json())  # lets `vqgen export` rebuild from any checkpoint
    if kind.timed and crop_samples is None:  # training windows cut along time
        crop_samples = default_crop_samples(config)
    task = TokenizerTask(tokenizer, spec.name, eval_limit=eval_limit,
                         crop_samples=crop_samples if kind.timed else None, adversarial=adversarial)
    result = train(task, splits.train, splits.test, cfg, hparams=config.to_dict())
    report_skips(splits)  # unreadable images met (and replaced by the next readable one) while training
    return result


def train_prior(tokens_dir: str | Path, model: dict[str, Any], cfg: TrainConfig, *, conditional: bool = False,
                cfg_scale: float | None = None, shift: int = 0, reference_fraction: float = 0.1,
                window: int | None = None) -> TrainResult:
    """Train a prior (``model``: ``PriorConfig`` fields, at least ``arch``) on a token folder into ``cfg.out``.

    The prior folder records the token folder's codec (``codec.json``), its class names and the sampling
    defaults: a conditional prior samples with classifier-free guidance ``cfg_scale`` (default 2) unless told
    otherwise. Count-based priors (histogram, ngram) are fitted by counting (closed-form maximum likelihood) instead
    of trained, reading the training grids block by block (``Prior.fit_chunks``). ``shift``: training grids rolled by up to this many positions along height and width
    (``TokenGridDataset``; image grids of trained priors only). ``reference_fraction``: this share of the training
    grids (at most 1,000 and about 2 million tokens, chosen per ``cfg.seed``) is held out of training; once
    trained, the prior's scores on them (and a local n-gram's, counted on the other training grids) are recorded in
    ``score_reference.json`` and ``score_local/`` (``pipelines.likelihood.reference``), what ``vqgen score``
    measures anomalies against. 0: no reference.

    A streams folder (``vqgen tokenize --streams``) needs ``window``: the prior models windows of that many frames,
    shape (window,) or (window, K), drawn from the recordings (``TokenStreamDataset``: in proportion to length,
    per seed and epoch; the test split as covering windows); it makes no score reference (``reference_fraction``
    must be 0: the command line defaults it to 0 for streams).
    """
    header = load_token_header(tokens_dir)
    if header.streams:
        data = _stream_data(tokens_dir, header, window, reference_fraction, cfg.seed)
    elif window is not None:
        raise ValueError(f"--window cuts windows from token streams, but {tokens_dir} holds token grids of shape "
                         f"{tuple(header.token_shape)}: drop --window (or tokenize with --streams)")
    else:
        data = _grid_data(tokens_dir, header, reference_fraction, cfg.seed, shift)
    tr_labels, token_shape = data.train_labels, data.token_shape
    num_classes = 0
    if conditional:
        if header.num_classes < 1 or (len(tr_labels) and tr_labels.min() < 0):
            raise ValueError(f"--conditional: the token folder {tokens_dir} has no labels for every example")
        num_classes = header.num_classes
    elif cfg_scale is not None:
        raise ValueError("--cfg-scale needs a conditional prior (--conditional)")
    fields = {k: v for k, v in model.items() if v is not None}
    num_codebooks = int(header.codec.get("num_codebooks") or 1)  # residual quantizers: trailing codebook axis
    if fields.get("codebook_pattern", "flatten") != "flatten" and num_codebooks == 1:
        raise ValueError(f"--codebook-pattern {fields['codebook_pattern']} needs tokens with a codebook axis, but the "
                         f"codec of {tokens_dir} has one codebook (token grid {tuple(header.token_shape)})")
    config = PriorConfig(**fields | {"vocab_size": header.vocab_size, "shape": token_shape,
                                     "num_classes": num_classes, "num_codebooks": num_codebooks})
    out = Path(cfg.out)
    if cfg.resume and (out / "config.json").is_file():
        _refuse_other_model(PriorConfig.from_file(out / "config.json"), config, out, "prior")
    prior = build_prior(config)
    sampling = SamplingDefaults(cfg_scale=(DEFAULT_CFG_SCALE if cfg_scale is None else cfg_scale) if num_classes else None)
    atomic_write_text(out / "config.json", config.to_json())
    write_prior_records(out, header.codec, header.class_names, sampling)
    if header.bpe:  # the prior models merged sequences: keep the merges beside it, so `vqgen sample` can decode
        bpe_src = Path(header.bpe["path"])
        if not (bpe_src / "bpe.json").is_file():
            raise FileNotFoundError(f"{tokens_dir} was merged with the BPE in {bpe_src}, which is gone: re-run "
                                    "`vqgen bpe train` and `vqgen tokenize --bpe`")
        shutil.copytree(bpe_src, out / BPE_DIR, dirs_exist_ok=True)
    if shift and (get_modality(header.modality).timed or prior.fitted_by_counting):
        raise ValueError(f"--shift {shift} rolls image token grids while a network trains; {tokens_dir} holds "
                         f"{header.modality} tokens" + (" and a count-based prior is not trained"
                                                        if prior.fitted_by_counting else ""))
    if not prior.fitted_by_counting:
        return train(PriorTask(prior, str(tokens_dir), data.dims, data.reference), data.train_set, data.test_set, cfg,
                     hparams=config.to_dict())
    return _fit_by_counting(prior, data, num_classes, out, tokens_dir)


@dataclass
class _PriorData:
    """What ``train_prior`` trains on: the datasets, the training tokens and labels as read (lazy views of a
    sharded folder; a streams folder's frames), the prior's shape, dimensions per input and score reference."""

    train_set: Any
    test_set: Any
    train_tokens: Any
    train_labels: Any
    token_shape: tuple[int, ...]
    dims: int
    reference: HeldOut | None = None


def _stream_data(tokens_dir: str | Path, header: Any, window: int | None, reference_fraction: float,
                 seed: int) -> _PriorData:
    """A streams folder (``vqgen tokenize --streams``): windows of ``window`` frames (``TokenStreamDataset``)."""
    if window is None:
        raise ValueError(f"{tokens_dir} is a token streams folder (`vqgen tokenize --streams`): give --window FRAMES, "
                         "the length of the windows the prior models (e.g. --window 250 for 5 s at 50 frames/s)")
    if window < 1:
        raise ValueError(f"--window must be at least 1 frame, got {window}")
    if reference_fraction:
        raise ValueError(f"--reference-fraction {reference_fraction}: a prior trained on token streams makes no "
                         "score reference (windows are drawn anew each epoch, so none are held out); pass 0")
    frames, offsets, labels = load_token_streams(tokens_dir, "train")
    train_set = TokenStreamDataset(frames, offsets, labels, window, train=True, seed=seed)
    if not len(train_set):
        raise ValueError(f"every training recording of {tokens_dir} is shorter than --window {window} frames "
                         f"(the longest has {int(np.diff(offsets).max(initial=0))}): use a shorter window")
    test_set = TokenStreamDataset(*load_token_streams(tokens_dir, "test"), window, train=False)
    for name, ds in (("training", train_set), ("test", test_set)):
        if ds.skipped:
            log.info("%d %s recording(s) of %s are shorter than --window %d frames: left out", ds.skipped, name,
                     tokens_dir, window)
    return _PriorData(train_set, test_set, frames, train_set.labels, (int(window), *header.token_shape),
                      int(window) * int(header.streams["hop"]))


def _grid_data(tokens_dir: str | Path, header: Any, reference_fraction: float, seed: int, shift: int) -> _PriorData:
    """A grid folder: its grids, less the ``reference_fraction`` held out for the score reference."""
    tr_tokens, tr_labels = load_tokens(tokens_dir, "train")
    keep, held = reference_split(len(tr_tokens), reference_fraction, seed, math.prod(header.token_shape))
    reference = None
    if len(held):  # held out of training: the prior's scores on them are its anomaly reference
        # lazy views of a sharded folder: nothing of the corpus is read here but the held-out grids
        held_grids = tr_tokens[torch.as_tensor(held)]
        tr_tokens, tr_labels = take_rows(tr_tokens, keep), take_rows(tr_labels, keep)
        reference = HeldOut(held_grids, tr_tokens, f"{len(held)} training grids of {tokens_dir} held out of "
                            f"training (--reference-fraction {reference_fraction}, --seed {seed})")
    te_tokens, te_labels = load_tokens(tokens_dir, "test")
    return _PriorData(TokenGridDataset(tr_tokens, tr_labels, shift=shift, seed=seed),
                      TokenGridDataset(te_tokens, te_labels), tr_tokens, tr_labels, tuple(header.token_shape),
                      header.dims_per_input, reference)


def _fit_by_counting(prior: Any, data: _PriorData, num_classes: int, out: Path,
                     tokens_dir: str | Path) -> TrainResult:
    """Fit a count-based prior (closed form), evaluate and save it with its metrics and score reference."""
    tokens, labels = data.train_tokens, data.train_labels
    if isinstance(data.train_set, TokenStreamDataset):  # epoch 0's windows, each with its recording's label
        windows = [data.train_set[j] for j in range(len(data.train_set))]
        tokens = torch.stack([t for t, _ in windows])
        labels = torch.stack([torch.as_tensor(y, dtype=torch.long) for _, y in windows])
    # counted block by block (a sharded folder is read a few million tokens at a time): the same tables as one fit
    prior.fit_chunks(row_chunks(tokens, labels if num_classes else None))
    metrics = evaluate_prior(prior, data.test_set, 512, data.dims, num_classes > 0)
    prior.save_pretrained(out, card_info={"tokens": str(tokens_dir), "metrics": metrics})
    if data.reference is not None:
        data.reference.record(prior, out)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return TrainResult(status="finished", step=0, metrics=metrics, checkpoint=None)
