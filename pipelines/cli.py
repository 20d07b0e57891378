"""The `vqgen` command. All command-line parsing lives here; the work is done by library functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

DATA_HELP = ("a built-in name (mnist5k, shapes, tones, spoken-digits), a local folder of images or audio files "
             "(subfolder names become labels), or a Hugging Face Hub dataset id")


# ---------------------------------------------------------------------------- argument groups
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same machine, same result (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="where models run: cpu, cuda, cuda:1, ... (default: cuda if available, "
                                                   "else cpu)")


def _data(p: argparse.ArgumentParser, required: bool = True) -> None:
    from tokenizers_vq.config import DEFAULT_CLIP_SAMPLES, DEFAULT_IMAGE_SIZE, DEFAULT_SAMPLE_RATE

    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=required, help=DATA_HELP)
    g.add_argument("--image-size", type=int, default=None, help=f"images: square side (default: the tokenizer's, else {DEFAULT_IMAGE_SIZE})")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="images: 1 (grayscale) or 3 (RGB) (default: the tokenizer's, else 1 for mnist5k, 3 otherwise)")
    g.add_argument("--sample-rate", type=int, default=None, help=f"audio: sample rate in Hz (default: the tokenizer's, else {DEFAULT_SAMPLE_RATE})")
    g.add_argument("--clip-seconds", type=float, default=None, help="audio: clip length in seconds (default: the tokenizer's, else "
                   f"{DEFAULT_CLIP_SAMPLES / DEFAULT_SAMPLE_RATE:g})")
    g.add_argument("--image-column", default="image", help="Hub datasets: image column (default image)")
    g.add_argument("--audio-column", default="audio", help="Hub datasets: audio column (default audio)")
    g.add_argument("--label-column", default="label", help="Hub datasets: label column (default label; none = no labels)")
    g.add_argument("--limit", type=int, default=None, help="use at most this many training examples")
    g.add_argument("--strict", action="store_true", help="an unreadable file is an error instead of a counted skip")
    g.add_argument("--cache-dir", default=None, help="where generated data (spoken-digits) is cached")


def _loop(p: argparse.ArgumentParser, steps: int, batch: int, lr: float) -> None:
    g = p.add_argument_group("training loop")
    g.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    g.add_argument("--batch-size", type=int, default=batch, help=f"per-process batch size (default {batch})")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate of AdamW (default {lr:g})")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay on matrices (default 0)")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default min(100, steps/10))")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 to disable (default 1)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                   help="auto: the launcher's setting, else bf16 on CUDA, else fp32 (bf16 also runs on a CPU with "
                        "AVX-512 BF16, where it trains convolutional priors faster)")
    g.add_argument("--eval-every", type=int, default=500, help="evaluate on the test split every N steps")
    g.add_argument("--save-every", type=int, default=500, help="write a resumable checkpoint every N steps")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="keep the last K checkpoints (default 2)")
    g.add_argument("--max-seconds", type=float, default=None, help="stop after this wall-clock budget and save")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under OUT/checkpoints")
    g.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N for a one-process run (default: cuda if "
                                                  "available, else cpu; under a launcher, each process's own GPU)")


def _train_config(a: argparse.Namespace) -> Any:
    from .training.loop import TrainConfig

    return TrainConfig(
        out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        warmup_steps=a.warmup_steps, grad_clip=a.grad_clip or None, grad_accum=a.grad_accum,
        mixed_precision=a.mixed_precision, eval_every=a.eval_every, save_every=a.save_every,
        keep_checkpoints=a.keep_checkpoints, seed=a.seed, resume=a.resume, max_seconds=a.max_seconds,
        num_workers=a.num_workers, progress=not a.quiet, compile=a.compile, device=a.device,
    )


def _data_args(a: argparse.Namespace) -> dict[str, Any]:
    """The data options as ``make_spec`` takes them (sizes left None are filled from the codec or defaults)."""
    label_column = None if (a.label_column or "").lower() == "none" else a.label_column
    return dict(name=a.dataset, image_size=a.image_size, channels=a.channels, sample_rate=a.sample_rate,
                clip_seconds=a.clip_seconds, image_column=a.image_column, audio_column=a.audio_column,
                label_column=label_column, limit=a.limit, seed=a.seed, strict=a.strict, cache_dir=a.cache_dir)


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    print(title)
    for k, v in metrics.items():
        print(f"  {k:>18}: {v:.4f}" if isinstance(v, float) else f"  {k:>18}: {v}")


def _report_result(result: Any, out: str) -> None:
    if result.status == "preempted":
        print(f"stopped at step {result.step}; checkpoint: {result.checkpoint}. Re-run with --resume to continue.")
        return
    _print_metrics(f"finished at step {result.step}; saved to {out}", result.metrics)


def _model_fields(a: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(a, n) for n in names if getattr(a, n, None) is not None}


# ---------------------------------------------------------------------------- commands
TOKENIZER_FIELDS = ("quantizer", "downsample", "hidden_channels", "num_res_blocks", "latent_dim", "codebook_size",
                    "audio_head", "gumbel_kl_weight", "num_quantizers", "quantizer_dropout")
PRIOR_FIELDS = ("arch", "n_layer", "n_head", "d_model", "dropout", "attention", "stride", "summary", "label_dropout",
                "residual_channels", "dilation_cycle", "n_cycles", "pixelcnn_layers", "pixelcnn_channels",
                "lstm_hidden", "lstm_layers", "ngram_order", "ngram_template", "ngram_smoothing", "ngram_alpha",
                "ngram_discount", "ngram_position", "made_hidden", "made_order", "made_seed", "made_ensemble",
                "made_connectivity_agnostic", "made_num_masks", "output", "logistic_mixtures", "codebook_pattern")


def cmd_train_tokenizer(a: argparse.Namespace) -> int:
    from .stages.train import train_tokenizer

    model = _model_fields(a, TOKENIZER_FIELDS) | {"modality": a.modality}
    if a.fsq_levels:
        model["fsq_levels"] = [int(v) for v in a.fsq_levels.split(",")]
    result = train_tokenizer(_data_args(a), model, _train_config(a), crop_samples=a.crop_samples, eval_limit=a.eval_limit)
    _report_result(result, a.out)
    return 0  # a pre-empted run exits cleanly too: it wrote a checkpoint to resume from


def cmd_reconstruct(a: argparse.Namespace) -> int:
    from .stages.reconstruct import reconstruct_dataset

    metrics = reconstruct_dataset(a.tokenizer, _data_args(a), a.out, n=a.n, seed=a.seed, device=a.device,
                                  progress=not a.quiet)
    _print_metrics(f"test-split metrics of {a.tokenizer} on {a.dataset}:", metrics)
    return 0


def cmd_tokenize(a: argparse.Namespace) -> int:
    from .stages.tokenize import tokenize

    if a.levels is not None and not a.raw:
        raise ValueError("--levels goes with --raw")
    header = tokenize(_data_args(a), a.out, codec_dir=a.tokenizer, raw_levels=(a.levels or 256) if a.raw else None,
                      batch_size=a.batch_size, progress=not a.quiet, device=a.device)
    print(f"wrote {a.out}: {header.counts} grids of shape {tuple(header.token_shape)}, vocabulary {header.vocab_size}")
    if a.bpe:
        from .data.bpe import write_bpe_token_folder

        stats = write_bpe_token_folder(a.out, a.bpe, a.out)
        print(f"merged with {a.bpe}: {stats['original_length']} tokens -> {stats['mean_merged_length']:.1f} on average "
              f"({stats['reduction']:.2f}x shorter), padded to {stats['max_len']} with an end token; vocabulary "
              f"{stats['merged_vocab'] + 1}")
    return 0


def cmd_bpe(a: argparse.Namespace) -> int:
    from .data.bpe import BPE
    from .data.tokens import load_token_header, load_tokens

    header = load_token_header(a.tokens)
    if header.bpe:
        raise ValueError(f"{a.tokens} already holds merged (BPE) sequences; train on the codec's token folder")
    tokens, _ = load_tokens(a.tokens, "train")
    bpe = BPE.train(tokens, a.vocab, header.vocab_size, codec=header.codec)
    bpe.save(a.out)
    print(f"wrote {a.out}: {bpe.info.merged_vocab} ids ({bpe.info.merged_vocab - header.vocab_size} merges over "
          f"{header.vocab_size} codes)")
    return 0


def cmd_train_prior(a: argparse.Namespace) -> int:
    from .stages.train import train_prior

    result = train_prior(a.tokens, _model_fields(a, PRIOR_FIELDS), _train_config(a), conditional=a.conditional,
                         cfg_scale=a.cfg_scale)
    _report_result(result, a.out)
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from .stages.generate import sample

    res = sample(a.prior, a.out, a.n, label=a.label, codec_dir=a.tokenizer, temperature=a.temperature, top_k=a.top_k,
                 top_p=a.top_p, cfg_scale=a.cfg_scale, batch_size=a.batch_size, seed=a.seed, device=a.device,
                 progress=not a.quiet)
    s = res["summary"]
    print(f"wrote {a.n} samples to {a.out} ({', '.join(s['files'][:3])}, ...); temperature {s['temperature']}, "
          f"top_k {s['top_k']}, top_p {s['top_p']}, cfg_scale {s['cfg_scale']}")
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from .stages.score import score

    summary = score(a.prior, _data_args(a), a.out, codec_dir=a.tokenizer, split=a.split, batch_size=a.batch_size,
                    device=a.device, progress=not a.quiet, ood=a.ood)
    _print_metrics(f"scored {a.dataset} ({a.split}) -> {a.out}", summary)
    return 0


def cmd_compress(a: argparse.Namespace) -> int:
    from .stages.score import compress

    stats = compress(a.prior, a.inputs, a.out, codec_dir=a.tokenizer, device=a.device, progress=not a.quiet)
    _print_metrics(f"compressed {len(a.inputs)} file(s) -> {a.out}", stats.to_dict())
    return 0


def cmd_decompress(a: argparse.Namespace) -> int:
    from .stages.score import decompress

    paths = decompress(a.prior, a.file, a.out, codec_dir=a.tokenizer, device=a.device, progress=not a.quiet)
    print(f"decompressed {a.file} -> {len(paths)} file(s) in {a.out}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .stages.export import export_model

    if bool(a.tokenizer) == bool(a.prior):
        raise ValueError("pass exactly one of --tokenizer DIR or --prior DIR")
    path = export_model(a.tokenizer or a.prior, a.out, kind="tokenizer" if a.tokenizer else "prior", fmt=a.format,
                        push_to_hub=a.push_to_hub)
    files = "config.json, encoder.onnx, decoder.onnx, README.md" if a.format == "onnx" else \
        "config.json, model.safetensors, README.md"
    print(f"exported to {path} ({files})" + (f"; pushed to the Hub as {a.push_to_hub}" if a.push_to_hub else ""))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(modality=a.modality, out=a.out, seed=a.seed, quick=a.quick, progress=not a.quiet,
             from_scratch=a.from_scratch)
    return 0


# ---------------------------------------------------------------------------- parser
OVR = "the codec folder to use instead of the one the prior records (it must be the same codec)"


def build_parser() -> argparse.ArgumentParser:
    from prior.config import ARCHS
    from tokenizers_vq.config import AUDIO_HEADS, QUANTIZERS

    from .training.tasks import AUDIO_CROP_SAMPLES

    p = argparse.ArgumentParser(prog="vqgen", description="Tokenize images and audio, model the tokens, generate.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="train a tokenizer and a prior on built-in data and generate samples")
    s.add_argument("--modality", choices=("image", "audio"), default="image")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    s.add_argument("--from-scratch", action="store_true",
                   help="audio: train the speech tokenizer too instead of starting from the one shipped in the package")
    _common(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train-tokenizer", help="train a discrete autoencoder (vq, fsq, gumbel, or residual rvq / rfsq)")
    s.add_argument("--modality", choices=("image", "audio"), default=None, help="default: from the dataset")
    s.add_argument("--quantizer", choices=QUANTIZERS, default="fsq",
                   help="rvq / rfsq: residual vq / fsq, q codebooks per token (tokens [.., q]) (default fsq)")
    s.add_argument("--out", required=True, help="run folder: becomes a save_pretrained folder")
    _data(s)
    m = s.add_argument_group("model")
    m.add_argument("--downsample", type=int, default=None, help="input-to-token factor per axis (default 4 image, 64 audio)")
    m.add_argument("--hidden-channels", type=int, default=None, help="width of the first conv stage (default 32 image, 16 audio)")
    m.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per stage (default 2 image, 1 audio)")
    m.add_argument("--audio-head", choices=AUDIO_HEADS, default=None,
                   help="audio decoder output: discretised logistic mixture over the mu-law classes (default) or "
                        "256 free logits per sample (the VQ-VAE paper's; ~4x fewer steps per CPU-second)")
    m.add_argument("--latent-dim", type=int, default=None, help="channels entering the quantizer (default 64)")
    m.add_argument("--codebook-size", type=int, default=None, help="vq/gumbel codes, rvq codes per codebook (default 512)")
    m.add_argument("--fsq-levels", default=None, help="comma-separated FSQ levels, per codebook for rfsq (default 8,5,5,5)")
    m.add_argument("--num-quantizers", type=int, default=None, help="rvq/rfsq: codebooks q per token (default 4)")
    m.add_argument("--no-quantizer-dropout", dest="quantizer_dropout", action="store_const", const=False, default=None,
                   help="rvq/rfsq: train every batch with all q codebooks (default: a random 1..q per batch, so the "
                        "model decodes at every bitrate, as in SoundStream)")
    m.add_argument("--gumbel-kl-weight", type=float, default=None,
                   help="gumbel: weight of KL(codes || uniform) (default 0.01 image, 0.1 audio; for speech 0.3 keeps "
                        "more codes in use, see README)")
    m.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N test examples")
    m.add_argument("--crop-samples", type=int, default=None,
                   help="audio: train on a random window of this many samples per clip, a multiple of --downsample "
                        f"(default {AUDIO_CROP_SAMPLES} for the mu-law heads, 20 tokens for --audio-head istft; "
                        "0 = whole clips); evaluation uses whole clips")
    _loop(s, steps=3000, batch=16, lr=2e-3)
    _common(s)
    s.set_defaults(func=cmd_train_tokenizer)

    s = sub.add_parser("reconstruct", help="write originals and reconstructions and print test metrics")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--out", required=True, help="a .png file or a folder")
    s.add_argument("--n", type=int, default=16, help="how many examples to show (default 16)")
    _data(s)
    _device(s)
    _common(s)
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("tokenize", help="encode a dataset's splits into a token folder (the prior's input)")
    s.add_argument("--tokenizer", default=None, help="the codec folder (a trained tokenizer); or --raw")
    s.add_argument("--raw", action="store_true", help="use raw pixels / mu-law samples as the grid")
    s.add_argument("--levels", type=int, choices=(2, 256), default=None, help="--raw images: 2 (binarised) or 256")
    s.add_argument("--bpe", default=None, help="a folder from `vqgen bpe train`: write merged variable-length "
                                               "sequences (end token, padding, lengths) instead of the grids")
    s.add_argument("--out", required=True)
    s.add_argument("--batch-size", type=int, default=256)
    _data(s)
    _device(s)
    _common(s)
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser("train-prior", help="train an autoregressive prior on a token folder")
    s.add_argument("--tokens", required=True, help="a folder written by `vqgen tokenize`")
    s.add_argument("--arch", required=True, choices=ARCHS)
    s.add_argument("--out", required=True)
    s.add_argument("--conditional", action="store_true", help="model p(tokens | label) (needs labels)")
    m = s.add_argument_group("model")
    for name, typ, text in (
            ("n-layer", int, "transformers: layers (default 4)"), ("n-head", int, "transformers: heads (default 4)"),
            ("d-model", int, "transformers: width (default 128)"), ("dropout", float, "transformers: dropout (default 0)"),
            ("stride", int, "sparse_transformer: the paper's l (default: row width, or sqrt(L) for 1-D)"),
            ("summary", int, "sparse_transformer fixed: the paper's c (default 1)"),
            ("label-dropout", float, "conditional: P(label -> null label) for classifier-free guidance (default 0.1)"),
            ("residual-channels", int, "wavenet: channels (default 64)"),
            ("dilation-cycle", int, "wavenet: layers per cycle, dilations 1..2**(cycle-1) (default 10)"),
            ("n-cycles", int, "wavenet: cycles (default 1)"), ("pixelcnn-layers", int, "pixelcnn: layers (default 6)"),
            ("pixelcnn-channels", int, "pixelcnn: channels (default 64)"), ("lstm-hidden", int, "lstm: width (default 128)"),
            ("lstm-layers", int, "lstm: layers (default 2)")):
        m.add_argument(f"--{name}", type=typ, default=None, help=text)
    m.add_argument("--attention", choices=("strided", "fixed"), default=None, help="sparse_transformer pattern")
    m.add_argument("--ngram-order", type=int, default=None,
                   help="ngram: parents per position (1-D: previous tokens; grids: cells of the template) (default 3)")
    m.add_argument("--ngram-template", choices=("jbig", "raster"), default=None,
                   help="ngram on grids: JBIG-like causal neighbourhood (default) or the previous tokens in raster order")
    m.add_argument("--ngram-smoothing", choices=("kneser_ney", "witten_bell", "add_alpha"), default=None,
                   help="ngram: smoothing and back-off (default kneser_ney)")
    m.add_argument("--ngram-alpha", type=float, default=None, help="ngram add_alpha: the alpha (default 0.5)")
    m.add_argument("--ngram-discount", type=float, default=None, help="ngram kneser_ney: a fixed discount (default: estimated)")
    m.add_argument("--ngram-position", action=argparse.BooleanOptionalAction, default=None,
                   help="ngram: the position is a parent too (default off)")
    m.add_argument("--made-hidden", type=int, nargs="+", default=None, help="made: hidden widths (default 256 256)")
    m.add_argument("--made-order", choices=("raster", "random", "agnostic"), default=None,
                   help="made: raster (default), one random ordering, or order-agnostic training (Germain et al. 2015)")
    m.add_argument("--made-seed", type=int, default=None, help="made random/agnostic: the orderings' seed (default 0)")
    m.add_argument("--made-ensemble", type=int, default=None,
                   help="made agnostic: likelihood = mean over K orderings (default 1; sampling uses the first)")
    m.add_argument("--made-connectivity-agnostic", action=argparse.BooleanOptionalAction, default=None,
                   help="made agnostic: draw the hidden connectivity with each ordering too (default off)")
    m.add_argument("--made-num-masks", type=int, default=None,
                   help="made agnostic: train on N fixed orderings in turn (default 0: a new one every update)")
    m.add_argument("--output", choices=("softmax", "logistic_mixture"), default=None,
                   help="transformers, pixelcnn: V-way softmax (default) or PixelCNN++'s discretised logistic mixture "
                        "(ordered values only: raw 8-bit pixels, mu-law samples)")
    m.add_argument("--logistic-mixtures", type=int, default=None, help="logistic_mixture: components (default 5)")
    m.add_argument("--codebook-pattern", choices=("flatten", "delay"), default=None,
                   help="tokens with a codebook axis (rvq / rfsq): flatten = raster over (t, q), any arch (default); "
                        "delay = MusicGen's delay pattern, all codebooks of a step at once (transformer only)")
    s.add_argument("--cfg-scale", type=float, default=None,
                   help="conditional priors: the classifier-free guidance scale `vqgen sample` uses by default, recorded in "
                        "OUT/sampling.json (default 2; 1 = no guidance)")
    _loop(s, steps=2000, batch=64, lr=1e-3)
    _common(s)
    s.set_defaults(func=cmd_train_prior)

    s = sub.add_parser("sample", help="sample token grids and decode them into PNGs or WAVs")
    s.add_argument("--prior", required=True, help="a prior folder (it records its codec and sampling defaults)")
    s.add_argument("--tokenizer", default=None, help=OVR)
    s.add_argument("--n", type=int, default=16, help="how many samples (default 16)")
    s.add_argument("--out", required=True)
    s.add_argument("--label", default=None, help="class index or name (conditional priors; default: cycle through classes)")
    s.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature, 0 = greedy (default: the prior folder's sampling.json, else 1)")
    s.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens per step")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set with mass >= p, in (0, 1]")
    s.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale (conditional priors; default: the scale chosen at training, "
                        "recorded in the prior folder's sampling.json; 1 = no guidance)")
    s.add_argument("--batch-size", type=int, default=64)
    _device(s)
    _common(s)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("score", help="per-input NLL, bits/dim and OOD scores into a CSV")
    s.add_argument("--prior", required=True)
    s.add_argument("--tokenizer", default=None, help=OVR)
    s.add_argument("--out", required=True, help="CSV file")
    s.add_argument("--split", choices=("train", "test"), default="test")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--ood", default=None, metavar="DATA",
                   help="also score this dataset as out-of-distribution: prints AUROC of likelihood, bits/dim and "
                        "typicality, writes OUT.ood.csv and a histogram OUT.ood.png")
    _data(s)
    _device(s)
    _common(s)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("compress", help="compress image or audio files with the prior and arithmetic coding")
    s.add_argument("--prior", required=True)
    s.add_argument("--tokenizer", default=None, help=OVR)
    s.add_argument("inputs", nargs="+", help="image files of the codec's size, or audio files (any rate and length)")
    s.add_argument("--out", required=True)
    _device(s)
    _common(s)
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("decompress", help="decode a file written by `vqgen compress`")
    s.add_argument("--prior", required=True)
    s.add_argument("--tokenizer", default=None, help=OVR)
    s.add_argument("file")
    s.add_argument("--out", required=True, help="folder for the decoded PNG or WAV files")
    _device(s)
    _common(s)
    s.set_defaults(func=cmd_decompress)

    s = sub.add_parser("bpe", help="byte-pair encoding over a token folder's sequences (Hugging Face tokenizers)")
    s.add_argument("action", choices=("train",), help="train: learn merges on the folder's training split")
    s.add_argument("--tokens", required=True, help="a token folder written by `vqgen tokenize` (grids read in raster order)")
    s.add_argument("--vocab", type=int, required=True, help="merged vocabulary size, the codec's codes included")
    s.add_argument("--out", required=True, help="the BPE folder (tokenizer.json, bpe.json)")
    _common(s)
    s.set_defaults(func=cmd_bpe)

    s = sub.add_parser("export", help="a clean shareable folder (safetensors or ONNX) from a run or checkpoint")
    s.add_argument("--tokenizer", default=None, help="a run folder, checkpoint folder or saved folder")
    s.add_argument("--prior", default=None, help="the same, for a prior")
    s.add_argument("--out", required=True)
    s.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                   help="safetensors: the folder vqgen loads (default); onnx: encoder.onnx + decoder.onnx that run with "
                        "onnxruntime alone, no torch or vqgen (tokenizers only)")
    s.add_argument("--push-to-hub", default=None, metavar="OWNER/NAME",
                   help="also upload the folder to this Hugging Face Hub model repo (needs `huggingface-cli login`)")
    _common(s)
    s.set_defaults(func=cmd_export)
    return p


def cli_markdown() -> str:
    """docs/CLI.md: every command's ``--help``, at a fixed width so the file does not depend on the terminal.
    Regenerate with ``python -c "from pipelines.cli import cli_markdown; print(cli_markdown(), end='')" > docs/CLI.md``;
    a test fails when the file and the parser disagree."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "120"
    try:
        parser = build_parser()
        parts = ["# The `vqgen` command", "",
                 "Generated from `vqgen COMMAND --help` (`pipelines/cli.py` is the source). Worked examples are in the "
                 "README.", "", "```", parser.format_help().rstrip(), "```"]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, sp in sub.choices.items():
            parts += ["", f"## `vqgen {name}`", "", "```", sp.format_help().rstrip(), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "accelerate", "urllib3", "filelock", "fsspec", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.manual_seed(a.seed)
    if getattr(a, "device", "unset") is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return int(a.func(a) or 0)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: files, full disks (CheckpointWriteError)
        if a.debug:
            raise
        print(f"vqgen {a.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
