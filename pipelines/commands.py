"""The `vqgen` commands: each is its own options dataclass (a field per flag, its comment the help), the option
groups it shares with other commands, and the function that runs it with library calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .flags import Group, Parsed, check_sections, dataclass_group, model_group
from .options import CommonOptions, DataOptions, DeviceOptions, data_args

PRIOR_MODEL = "prior model"
TOKENIZER_MODEL = "tokenizer model"
LOOP = "training loop"


@dataclass(frozen=True)
class Command:
    """A `vqgen` subcommand: ``options`` (its own dataclass), the shared ``groups`` and ``run(parsed) -> exit code``."""

    help: str
    options: type
    run: Callable[[Parsed], int]
    groups: Callable[[], list[Group]] = list
    trains: bool = False  # takes --config / --print-config (every training command)


def _loop(steps: int, batch: int, lr: float, lr_help: str = "") -> Group:
    from .training.config import TrainConfig

    group = dataclass_group(LOOP, TrainConfig, defaults={"steps": steps, "batch_size": batch, "lr": lr})
    for flag in group.flags:
        if flag.name == "lr" and lr_help:
            flag.help += lr_help
    return group


def train_config(a: Parsed) -> Any:
    from .training.config import TrainConfig

    loop = {f.name: a.values[f.name] for f in dataclasses.fields(TrainConfig)
            if f.name in a.values and f.metadata.get("flag") is not False}
    loop["grad_clip"] = loop.get("grad_clip") or None  # 0 disables clipping
    return TrainConfig(**loop, out=a.out, seed=a.seed, progress=not a.quiet)


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    print(title)
    for k, v in metrics.items():
        print(f"  {k:>18}: {v:.4f}" if isinstance(v, float) else f"  {k:>18}: {v}")


def _report(result: Any, out: str) -> int:
    if result.status == "preempted":
        print(f"stopped at step {result.step}; checkpoint: {result.checkpoint}. Re-run with --resume to continue.")
    else:
        _print_metrics(f"finished at step {result.step}; saved to {out}", result.metrics)
    return 0  # a pre-empted run exits cleanly too: it wrote a checkpoint to resume from


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainTokenizerOptions:
    out: str  # run folder: becomes a save_pretrained folder, resumable checkpoints under OUT/checkpoints
    crop_samples: int | None = None  # audio: train on a random window of this many samples per clip, a multiple of downsample (default 2048 for the mu-law heads, 20 tokens for the spectral codec; 0 = whole clips); evaluation uses whole clips
    eval_limit: int | None = None  # evaluate on at most N test examples
    augment: str | None = None  # images: "crop", "flip" or "crop,flip": random crops (a random square of the image seen at 1-1.25x its usual scale) and/or horizontal flips of the training split, drawn per --seed, epoch and image; never the test split
    streaming: bool = False  # Hugging Face image or audio datasets (a Hub id or a local dataset folder): read the training split as a datasets stream, a row at a time, instead of loading it (for datasets larger than the disk); evaluation uses the test split's first 1,000 rows (no test split: the first ceil(10 percent) of the stream, at most 1,000, held out); --resume continues at the next unseen row (audio: each row a recording, cut into clips; --resume continues at its next unseen clip). See docs/DATA.md
    shuffle_buffer: int = 1000  # with --streaming: training rows (audio: clips) are drawn at random from a buffer of this many (vqgen's own buffer, re-drawn each epoch; docs/DATA.md says why not datasets'); 0 = the stream's order


def tokenizer_model_fields(a: Parsed) -> dict[str, Any]:
    """The TokenizerConfig fields the command line gave (shared ones always, section ones when given)."""
    from tokenizers_vq import AUTOENCODERS, QUANTIZERS, TokenizerConfig

    fields = a.section_fields(TOKENIZER_MODEL)
    if not fields.get("autoencoder") and not fields.get("modality"):  # the data's modality picks the family
        from .data.spec import infer_modality
        from .stages.common import make_spec

        fields["modality"] = infer_modality(make_spec(**data_args(a)))
    # the family and quantizer the config will choose (defaults: the modality's family, the family's quantizer)
    selectors = {k: fields[k] for k in ("modality", "autoencoder", "audio_head", "quantizer") if fields.get(k)}
    probe = TokenizerConfig(**selectors)
    chosen = {"quantizer_config": probe.quantizer, "autoencoder_config": probe.autoencoder}
    check_sections(a, TOKENIZER_MODEL, chosen, {"quantizer_config": QUANTIZERS, "autoencoder_config": AUTOENCODERS})
    return fields


def run_train_tokenizer(a: Parsed) -> int:
    from .stages.train import train_tokenizer

    if "shuffle_buffer" in a.explicit and not a.streaming:
        raise ValueError("--shuffle-buffer sets the buffer of a streamed dataset: give --streaming too (without it "
                         "every epoch is a full random permutation already)")
    if a.shuffle_buffer < 0:
        raise ValueError(f"--shuffle-buffer must be 0 or more, got {a.shuffle_buffer}")
    data = data_args(a) | {"augment": a.augment}
    if a.streaming:
        data |= {"streaming": True, "shuffle_buffer": a.shuffle_buffer}
    result = train_tokenizer(data, tokenizer_model_fields(a), train_config(a),
                             crop_samples=a.crop_samples, eval_limit=a.eval_limit,
                             adversarial=adversarial_config(a), family_lr="lr" not in a.explicit)
    return _report(result, a.out)


@dataclass
class TrainPriorOptions:
    tokens: str  # a token folder written by `vqgen tokenize`
    out: str  # run folder: becomes a save_pretrained folder, resumable checkpoints under OUT/checkpoints
    conditional: bool = False  # model p(tokens | label) (needs labels)
    cfg_scale: float | None = None  # conditional priors: the classifier-free guidance scale `vqgen sample` uses by default, recorded in OUT/sampling.json (default 2; 1 = no guidance)
    reference_fraction: float = 0.1  # this share of the training grids (at most 1,000, and about 2 million tokens) is held out of training; the trained prior's scores on them become its anomaly reference (OUT/score_reference.json), what `vqgen score` measures every input against; 0 = none
    window: int | None = None  # token streams folders (`vqgen tokenize --streams`), required there: the prior models windows of this many frames, drawn from the recordings in proportion to their length per seed and epoch (recordings shorter are left out); refused for grid folders. --reference-fraction defaults to 0 for streams (no score reference)
    shift: int = 0  # image token grids: roll each training grid by a random offset of up to this many positions along height and width, drawn per seed, epoch and grid (data augmentation against overfitting; 0 = off)


def prior_model_fields(a: Parsed) -> dict[str, Any]:
    """The PriorConfig fields the command line gave (shared ones always, the architecture's when given)."""
    from prior import ARCHS

    fields = a.section_fields(PRIOR_MODEL)
    check_sections(a, PRIOR_MODEL, {"net": fields["arch"]}, {"net": ARCHS})
    return fields


def run_train_prior(a: Parsed) -> int:
    from .stages.train import train_prior

    reference_fraction = a.reference_fraction
    if a.window is not None and "reference_fraction" not in a.explicit:
        reference_fraction = 0.0  # windows of token streams make no score reference
    result = train_prior(a.tokens, prior_model_fields(a), train_config(a), conditional=a.conditional,
                         cfg_scale=a.cfg_scale, shift=a.shift, reference_fraction=reference_fraction, window=a.window)
    return _report(result, a.out)


# ---------------------------------------------------------------------------------------------- using models
@dataclass
class ReconstructOptions:
    tokenizer: str  # the tokenizer (or codec) folder
    out: str  # a .png file or a folder
    n: int = 16  # how many examples to show
    num_workers: int = 0  # DataLoader worker processes that read and decode the test split; 0: read it in this process (the metrics are the same for any number)


def run_reconstruct(a: Parsed) -> int:
    from .stages.reconstruct import reconstruct_dataset

    metrics = reconstruct_dataset(a.tokenizer, data_args(a), a.out, n=a.n, seed=a.seed, device=a.device,
                                  progress=not a.quiet, num_workers=a.num_workers)
    _print_metrics(f"test-split metrics of {a.tokenizer} on {a.dataset}:", metrics)
    return 0


@dataclass
class TokenizeOptions:
    out: str  # the token folder to write
    tokenizer: str | None = None  # the codec folder (a trained tokenizer); or --raw
    raw: bool = False  # use the raw pixels / mu-law samples as the grid
    levels: Literal[2, 256] | None = None  # --raw images: 2 (binarised) or 256 (8-bit) (default 256)
    bpe: str | None = None  # a folder from `vqgen bpe train`: write merged variable-length sequences (end token, padding, lengths) instead of the grids
    batch_size: int = 256  # inputs encoded at once
    shard_rows: int | None = None  # grids (with --streams: frames) per token shard (default: about 4M tokens per shard, and at least 16 shards for a split of 4,096 grids or more); a shard is the unit of work of each process of a launch and of --resume
    resume: bool = False  # keep the shards an interrupted (or finished) run with the same arguments wrote, once their checksums match, and encode only the rest
    num_workers: int = 0  # DataLoader worker processes that read and decode the inputs; 0: read them in the encoding process (the tokens are the same for any number)
    streaming: bool = False  # Hugging Face image or audio datasets (a Hub id or a local dataset folder): read each split as a datasets stream, in order, a row at a time (--num-workers 0; under a launcher every process reads the whole stream and decodes and encodes only its own shards; audio: each recording's covering windows, as without --streaming); without a test split the first ceil(10 percent) of the training stream, at most 1,000 rows, is the test split. --resume continues after the last finished shard. See docs/DATA.md
    streams: bool = False  # audio, a trained tokenizer: encode each recording whole into frames (a causal codec streams exactly; others in windows of its clip, see docs/DATA.md) and store each split as one run of frames (train on it with `vqgen train-prior --window FRAMES`)


def run_tokenize(a: Parsed) -> int:
    import os

    from .stages.tokenize import tokenize

    if a.levels is not None and not a.raw:
        raise ValueError("--levels goes with --raw")
    if a.streams and a.bpe:
        raise ValueError("--bpe merges token grids; a streams folder (--streams) has none")
    data = data_args(a) | ({"streaming": True} if a.streaming else {})  # (map-style plans keep their digest)
    header = tokenize(data, a.out, codec_dir=a.tokenizer, raw_levels=(a.levels or 256) if a.raw else None,
                      batch_size=a.batch_size, progress=not a.quiet, device=a.device, shard_rows=a.shard_rows,
                      resume=a.resume, num_workers=a.num_workers, streams=a.streams)
    if int(os.environ.get("RANK", "0")) != 0:  # a launch: the main process reports and merges
        return 0
    if a.streams:
        print(f"wrote {a.out}: {header.counts} frames of shape {tuple(header.token_shape)} in "
              f"{ {s: len(v['labels']) for s, v in header.shards.items()} } recordings, vocabulary {header.vocab_size}, "
              f"{sum(len(s['files']) for s in header.shards.values())} shards")
        return 0
    print(f"wrote {a.out}: {header.counts} grids of shape {tuple(header.token_shape)}, vocabulary {header.vocab_size}, "
          f"{sum(len(s['files']) for s in header.shards.values())} shards")
    if a.bpe:
        from .data.bpe import write_bpe_token_folder

        stats = write_bpe_token_folder(a.out, a.bpe, a.out)
        print(f"merged with {a.bpe}: {stats['original_length']} tokens -> {stats['mean_merged_length']:.1f} on average "
              f"({stats['reduction']:.2f}x shorter), padded to {stats['max_len']} with an end token; vocabulary "
              f"{stats['merged_vocab'] + 1}")
    return 0


@dataclass
class CodecOptions:
    action: Literal["encode", "decode"] = field(metadata={"positional": True})  # encode: audio -> token stream; decode: token stream -> audio
    input: str = field(metadata={"positional": True})  # encode: a WAV/FLAC/OGG file (mixed to mono, resampled) or - (raw 16-bit little-endian mono PCM at the codec's rate on stdin); decode: a token stream file or - (stdin)
    output: str = field(metadata={"positional": True})  # encode: the token stream file or - (stdout); decode: a WAV file or - (raw 16-bit PCM on stdout)
    tokenizer: str  # an audio tokenizer folder; a causal one (--causal) streams frame by frame


def run_codec(a: Parsed) -> int:
    import sys

    from .stages.codec import codec_decode, codec_encode

    run = codec_encode if a.action == "encode" else codec_decode
    stats = run(a.tokenizer, a.input, a.output, device=a.device)
    if not a.quiet:  # never onto a stream written to stdout
        out = sys.stderr if a.output == "-" else sys.stdout
        what = (f"{stats['seconds']:.2f} s -> {stats['frames']} frames at {stats['kbit_per_s']:.2f} kbit/s"
                + (f", {stats['latency_ms']:.1f} ms latency" if stats.get("streaming") and "latency_ms" in stats else ""))
        print(f"{a.action}d {a.input} -> {a.output}: {what}", file=out)
    return 0


@dataclass
class BPEOptions:
    action: Literal["train"] = field(metadata={"positional": True})  # train: learn merges on the folder's training split
    tokens: str  # a token folder written by `vqgen tokenize` (grids read in raster order)
    vocab: int  # merged vocabulary size, the codec's codes included
    out: str  # the BPE folder (tokenizer.json, bpe.json)


def run_bpe(a: Parsed) -> int:
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


@dataclass
class SampleOptions:
    prior: str  # a prior folder (it records its codec and sampling defaults)
    out: str  # folder for the PNG or WAV files
    tokenizer: str | None = None  # the codec folder to use instead of the one the prior records (it must be the same codec)
    n: int = 16  # how many samples
    label: str | None = None  # class index or name (conditional priors; default: cycle through the classes)
    temperature: float | None = None  # softmax temperature, 0 = greedy (default: the prior folder's sampling.json, else 1)
    top_k: int | None = None  # keep the k most likely tokens per step
    top_p: float | None = None  # nucleus sampling: keep the smallest set with mass >= p, in (0, 1]
    cfg_scale: float | None = None  # classifier-free guidance scale (conditional priors; default: the scale recorded in the prior folder's sampling.json; 1 = no guidance)
    batch_size: int = 64  # samples drawn at once


def run_sample(a: Parsed) -> int:
    from .stages.generate import sample

    res = sample(a.prior, a.out, a.n, label=a.label, codec_dir=a.tokenizer, temperature=a.temperature, top_k=a.top_k,
                 top_p=a.top_p, cfg_scale=a.cfg_scale, batch_size=a.batch_size, seed=a.seed, device=a.device,
                 progress=not a.quiet)
    s = res["summary"]
    print(f"wrote {a.n} samples to {a.out} ({', '.join(s['files'][:3])}, ...); temperature {s['temperature']}, "
          f"top_k {s['top_k']}, top_p {s['top_p']}, cfg_scale {s['cfg_scale']}")
    return 0


@dataclass
class ScoreOptions:
    prior: str  # a prior folder
    out: str  # the CSV file to write
    tokenizer: str | None = None  # the codec folder to use instead of the one the prior records (it must be the same codec)
    split: Literal["train", "test"] = "test"  # which split of the dataset to score
    batch_size: int = 128  # inputs scored at once
    ood: str | None = None  # also score this dataset as out-of-distribution: prints the AUROC of each score (plain NLL, bits/dim, typicality, the default ood_score, ...), writes OUT.ood.csv and a histogram OUT.ood.png
    fpr: float | None = None  # add a verdict column ("ood" / "in") at the threshold that flags this fraction of held-out in-distribution inputs, e.g. 0.05 (needs the prior's score reference)
    reference: str | None = None  # for prior folders saved without a score reference: compute it on this dataset's training split (the data the prior was trained on) and save it into the prior folder, once
    num_workers: int = 0  # DataLoader worker processes that read and decode the inputs; 0: read them in the scoring process (the scores are the same for any number)


def run_score(a: Parsed) -> int:
    from .stages.score import score

    summary = score(a.prior, data_args(a), a.out, codec_dir=a.tokenizer, split=a.split, batch_size=a.batch_size,
                    device=a.device, progress=not a.quiet, ood=a.ood, fpr=a.fpr, reference=a.reference,
                    num_workers=a.num_workers)
    warning = summary.pop("warning", None)
    _print_metrics(f"scored {a.dataset} ({a.split}) -> {a.out}", summary)
    if warning:
        print(f"warning: {warning}")
    return 0


@dataclass
class CompressOptions:
    prior: str  # a prior folder
    out: str  # the compressed file to write
    inputs: tuple[str, ...] = field(metadata={"positional": True})  # image files of the codec's size, or audio files (any rate and length)
    tokenizer: str | None = None  # the codec folder to use instead of the one the prior records (it must be the same codec)


def run_compress(a: Parsed) -> int:
    from .stages.score import compress

    stats = compress(a.prior, list(a.inputs), a.out, codec_dir=a.tokenizer, device=a.device, progress=not a.quiet)
    _print_metrics(f"compressed {len(a.inputs)} file(s) -> {a.out}", stats.to_dict())
    return 0


@dataclass
class DecompressOptions:
    file: str = field(metadata={"positional": True})  # a file written by `vqgen compress`
    prior: str  # the prior folder that compressed it
    out: str  # folder for the decoded PNG or WAV files
    tokenizer: str | None = None  # the codec folder to use instead of the one the prior records (it must be the same codec)


def run_decompress(a: Parsed) -> int:
    from .stages.score import decompress

    paths = decompress(a.prior, a.file, a.out, codec_dir=a.tokenizer, device=a.device, progress=not a.quiet)
    print(f"decompressed {a.file} -> {len(paths)} file(s) in {a.out}")
    return 0


@dataclass
class ExportOptions:
    out: str  # the folder to write
    tokenizer: str | None = None  # a tokenizer run folder, checkpoint folder or saved folder
    prior: str | None = None  # the same, for a prior
    format: Literal["safetensors", "onnx"] = "safetensors"  # safetensors: the folder vqgen loads; onnx: encoder.onnx + decoder.onnx that run with onnxruntime alone, no torch or vqgen (tokenizers only)
    push_to_hub: str | None = None  # also upload the folder to this Hugging Face Hub model repo OWNER/NAME (needs `huggingface-cli login`)


def run_export(a: Parsed) -> int:
    from .stages.export import export_model

    if bool(a.tokenizer) == bool(a.prior):
        raise ValueError("pass exactly one of --tokenizer DIR or --prior DIR")
    path = export_model(a.tokenizer or a.prior, a.out, kind="tokenizer" if a.tokenizer else "prior", fmt=a.format,
                        push_to_hub=a.push_to_hub)
    files = "config.json, encoder.onnx, decoder.onnx, README.md" if a.format == "onnx" else \
        "config.json, model.safetensors, README.md"
    print(f"exported to {path} ({files})" + (f"; pushed to the Hub as {a.push_to_hub}" if a.push_to_hub else ""))
    return 0


@dataclass
class DemoOptions:
    modality: Literal["image", "audio"] = "image"  # image: digits; audio: spoken digits (tones without espeak-ng)
    out: str = "runs/demo"  # the demo's folder
    quick: bool = False  # a much shorter run (for smoke tests)
    from_scratch: bool = False  # audio: train the speech tokenizer too instead of starting from the one shipped in the package


def run_demo(a: Parsed) -> int:
    from .demo import run_demo as demo

    demo(modality=a.modality, out=a.out, seed=a.seed, quick=a.quick, progress=not a.quiet, from_scratch=a.from_scratch)
    return 0


# ---------------------------------------------------------------------------------------------- the table
def _common() -> list[Group]:
    return [dataclass_group("common", CommonOptions)]


def _data() -> list[Group]:
    from .data import DATASETS

    group = dataclass_group("data", DataOptions)
    dataset = next(f for f in group.flags if f.name == "dataset")
    dataset.help += ". Built-ins: " + "; ".join(f"{n} ({DATASETS.get(n).description})" for n in DATASETS.names())
    return [group]


def _device() -> list[Group]:
    return [dataclass_group("device", DeviceOptions)]


def _tokenizer_model() -> Group:
    from tokenizers_vq import (  # (torch: imported when a command needs it)
        AUTOENCODERS,
        QUANTIZERS,
        TokenizerConfig,
    )

    return model_group(TOKENIZER_MODEL, TokenizerConfig, choices={"quantizer": QUANTIZERS, "autoencoder": AUTOENCODERS})


ADVERSARIAL = "adversarial loss (image tokenizers of the resnet family)"


def _adversarial() -> Group:
    from tokenizers_vq.discriminator import DiscriminatorConfig

    return dataclass_group(ADVERSARIAL, DiscriminatorConfig)


def adversarial_config(a: Parsed) -> Any:
    from tokenizers_vq.discriminator import DiscriminatorConfig

    return DiscriminatorConfig(**{f.name: a.values[f.name] for f in dataclasses.fields(DiscriminatorConfig)
                                  if f.name in a.values})


def _prior_model() -> Group:
    from prior import ARCHS, PriorConfig

    return model_group(PRIOR_MODEL, PriorConfig, choices={"arch": ARCHS}, defaults={"arch": dataclasses.MISSING})


COMMANDS: dict[str, Command] = {
    "demo": Command("train a tokenizer and a prior on built-in data and generate samples", DemoOptions, run_demo,
                    _common),
    "train-tokenizer": Command("train a discrete autoencoder (vq, fsq, gumbel, rvq, rfsq, ...)", TrainTokenizerOptions,
                               run_train_tokenizer,
                               lambda: [*_data(), _tokenizer_model(), _adversarial(), _loop(3000, 16, 2e-3, " (the spectral audio codec's: 1e-3)"), *_common()],
                               trains=True),
    "reconstruct": Command("write originals and reconstructions and print test metrics", ReconstructOptions,
                           run_reconstruct, lambda: [*_data(), *_device(), *_common()]),
    "tokenize": Command("encode a dataset's splits into a token folder (the prior's input)", TokenizeOptions,
                        run_tokenize, lambda: [*_data(), *_device(), *_common()]),
    "train-prior": Command("train an autoregressive prior on a token folder", TrainPriorOptions, run_train_prior,
                           lambda: [_prior_model(), _loop(2000, 64, 1e-3), *_common()], trains=True),
    "sample": Command("sample token grids and decode them into PNGs or WAVs", SampleOptions, run_sample,
                      lambda: [*_device(), *_common()]),
    "score": Command("per-input NLL, bits/dim and OOD scores into a CSV", ScoreOptions, run_score,
                     lambda: [*_data(), *_device(), *_common()]),
    "compress": Command("compress image or audio files with the prior and arithmetic coding", CompressOptions,
                        run_compress, lambda: [*_device(), *_common()]),
    "decompress": Command("decode a file written by `vqgen compress`", DecompressOptions, run_decompress,
                          lambda: [*_device(), *_common()]),
    "codec": Command("audio <-> a fixed-rate token stream, through files or pipes (streams with a causal tokenizer)",
                     CodecOptions, run_codec, lambda: [*_device(), *_common()]),
    "bpe": Command("byte-pair encoding over a token folder's sequences (Hugging Face tokenizers)", BPEOptions, run_bpe,
                   _common),
    "export": Command("a clean shareable folder (safetensors or ONNX) from a run or checkpoint", ExportOptions,
                      run_export, _common),
}
