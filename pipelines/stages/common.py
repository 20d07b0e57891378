"""What the stages share: data specs sized by a codec, and prior folders that remember their codec.

A prior folder written by ``train_prior`` holds, beside the model (``config.json``, ``model.safetensors``):
``codec.json`` (the record of the codec whose tokens it was trained on: class, fingerprint, config, shapes and
the folder it came from), ``class_names.json`` and ``sampling.json`` (the sampling settings that work for it,
e.g. the classifier-free guidance scale of a conditional prior). So ``sample``, ``score``, ``compress`` and
``decompress`` need only ``--prior``; ``--tokenizer`` overrides, and a codec other than the recorded one is
refused with both fingerprints named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prior import Prior, load_prior
from tokenizers_vq import Codec, RawCodec, load_codec
from tokenizers_vq.config import DEFAULT_CLIP_SAMPLES, DEFAULT_IMAGE_SIZE, DEFAULT_SAMPLE_RATE
from vqgen_io import atomic_write_text

from ..data import DATASETS, DataSpec

CODEC_RECORD = "codec.json"
CLASS_NAMES = "class_names.json"
SAMPLING = "sampling.json"
BPE_DIR = "bpe"  # a prior over BPE-merged sequences keeps a copy of its merges here
DEFAULT_CFG_SCALE = 2.0  # conditional priors: the demo's digits read as asked 95% of the time at 2 vs 73% at 1


@dataclass
class SamplingDefaults:
    """How ``vqgen sample`` samples a prior when a flag is not given (``sampling.json`` in the prior folder)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = None  # conditional priors: classifier-free guidance scale (None: no guidance)

    @classmethod
    def load(cls, path: Path) -> SamplingDefaults:
        if not path.is_file():
            return cls()
        d = json.loads(path.read_text())
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class PriorFolder:
    """A loaded prior folder: the prior and what ``train_prior`` recorded beside it."""

    path: Path
    prior: Prior
    codec_record: dict[str, Any] | None
    class_names: list[str] = field(default_factory=list)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    bpe: Any = None  # a ``pipelines.data.bpe.BPE`` when the prior models merged (BPE) sequences, else None

    def require_codec_tokens(self, what: str) -> None:
        """``ValueError`` for stages that need a prior over the codec's own tokens (score, compress)."""
        if self.bpe is not None:
            raise ValueError(f"{self.path} models BPE-merged sequences: `vqgen sample` decodes them, but {what} needs a "
                             "prior over the codec's tokens; train one on a token folder without --bpe")


def make_spec(name: str, codec: Codec | None = None, modality: str | None = None, *, image_size: int | None = None,
              channels: int | None = None, sample_rate: int | None = None, clip_seconds: float | None = None,
              **rest: Any) -> DataSpec:
    """A ``DataSpec`` for dataset ``name``: sizes the user gave win, then the codec's input, then the defaults.
    ``rest``: the other ``DataSpec`` fields (columns, limit, seed, strict, cache_dir)."""
    # The sizes the codec's input fixes (image channels and size, audio rate and clip), by field name.
    fixed = codec.modality.sizes(codec.input_shape, codec.sample_rate) if codec is not None else {}
    if channels and fixed.get("channels", channels) != channels:
        raise ValueError(f"--channels {channels} but the codec expects {fixed['channels']}-channel images; drop "
                         f"--channels (images are converted to the codec's {fixed['channels']} channels)")
    channels = channels or fixed.get("channels") or (DATASETS.get(name).channels if name in DATASETS else None) or 3
    image_size = image_size or fixed.get("image_size") or DEFAULT_IMAGE_SIZE
    sample_rate = sample_rate or fixed.get("sample_rate") or DEFAULT_SAMPLE_RATE
    if clip_seconds is not None:
        clip = int(round(clip_seconds * sample_rate))
    else:
        clip = fixed.get("clip_samples") or (sample_rate * DEFAULT_CLIP_SAMPLES // DEFAULT_SAMPLE_RATE)
    return DataSpec(name=name, modality=modality or (str(codec.modality) if codec is not None else None),
                    image_size=image_size, channels=channels, sample_rate=sample_rate, clip_samples=clip, **rest)


def write_prior_records(out: Path, codec_record: dict[str, Any], class_names: list[str],
                        sampling: SamplingDefaults) -> None:
    """``codec.json``, ``class_names.json`` and ``sampling.json`` into a prior folder."""
    atomic_write_text(out / CODEC_RECORD, json.dumps(codec_record, indent=2))
    atomic_write_text(out / CLASS_NAMES, json.dumps(class_names))
    atomic_write_text(out / SAMPLING, json.dumps(sampling.__dict__, indent=2))


def set_sampling_defaults(prior_dir: str | Path, **settings: Any) -> SamplingDefaults:
    """Update a prior folder's ``sampling.json`` (e.g. ``cfg_scale=3.0`` chosen by a validation run); returns it."""
    path = Path(prior_dir) / SAMPLING
    d = SamplingDefaults.load(path)
    unknown = set(settings) - set(d.__dict__)
    if unknown:
        raise ValueError(f"unknown sampling settings {sorted(unknown)}; known: {sorted(d.__dict__)}")
    d = SamplingDefaults(**{**d.__dict__, **settings})
    atomic_write_text(path, json.dumps(d.__dict__, indent=2))
    return d


def load_prior_folder(path: str | Path, map_location: str = "cpu") -> PriorFolder:
    """The prior in ``path`` and its records (a folder from before codec records has ``codec_record`` None)."""
    path = Path(path)
    prior = load_prior(str(path), map_location=map_location)
    rec = path / CODEC_RECORD
    names = path / CLASS_NAMES
    bpe = None
    if (path / BPE_DIR).is_dir():
        from ..data.bpe import BPE

        bpe = BPE.load(path / BPE_DIR)
    return PriorFolder(path, prior, json.loads(rec.read_text()) if rec.is_file() else None,
                       json.loads(names.read_text()) if names.is_file() else [], SamplingDefaults.load(path / SAMPLING),
                       bpe)


def _fit_problems(prior: Prior, codec: Codec, windows: bool = False) -> list[str]:
    """Why a prior cannot model a codec's tokens (vocabulary, codebooks, grid), empty when it can. ``windows``: a
    timed codec's tokens of any whole number of frames fit (a prior of token-stream windows, for sampling)."""
    shape, problems = tuple(codec.token_shape()), []
    if prior.vocab_size != codec.vocab_size:
        problems.append(f"vocabulary {prior.vocab_size} (prior) != {codec.vocab_size} (codec)")
    q_prior, q_codec = prior.config.num_codebooks, getattr(codec, "num_codebooks", 1)
    if q_prior != q_codec:
        problems.append(f"{q_prior} codebooks per position (prior) != {q_codec} (codec)")
    if tuple(prior.shape) != shape and not (windows and window_of(tuple(prior.shape), shape, codec)):
        problems.append(f"token grid {tuple(prior.shape)} (prior) != {shape} (codec)")
    return problems


def window_of(grid: tuple[int, ...], shape: tuple[int, ...], codec: Codec) -> bool:
    """True when ``grid`` is a window of another number of frames of a timed codec's tokens (a prior trained on
    token streams, ``vqgen train-prior --window``): the codec encodes and decodes any whole number of hops."""
    if not codec.modality.timed or len(grid) != len(shape) or grid[1:] != shape[1:] or grid[0] < 1:
        return False
    clip = int(codec.input_shape[0])
    hop = clip // max(1, shape[0])
    return hop * shape[0] == clip and tuple(codec.token_shape((grid[0] * hop,))) == grid


def _bpe_fit_problems(folder: PriorFolder, codec: Codec) -> list[str]:
    """Why a BPE prior's merges cannot stand for a codec's tokens (the merges' base vocabulary and grid)."""
    info, problems = folder.bpe.info, []
    if info.base_vocab != codec.vocab_size:
        problems.append(f"vocabulary {info.base_vocab} (BPE merges) != {codec.vocab_size} (codec)")
    if tuple(info.base_token_shape) != tuple(codec.token_shape()):
        problems.append(f"token grid {tuple(info.base_token_shape)} (BPE merges) != {tuple(codec.token_shape())} (codec)")
    return problems


def _check_fits(folder: PriorFolder, codec: Codec, where: str, windows: bool = False) -> None:
    problems = (_bpe_fit_problems(folder, codec) if folder.bpe is not None
                else _fit_problems(folder.prior, codec, windows))
    if problems:
        raise ValueError(f"the prior {folder.path} was not trained on tokens of the codec {where}: "
                         + "; ".join(problems) + ". Use the codec whose `vqgen tokenize` output the prior was trained on.")


def resolve_codec(folder: PriorFolder, override: str | Path | None = None, map_location: str = "cpu",
                  windows: bool = False) -> Codec:
    """The codec for a prior folder: ``override`` (a codec folder) if given, else the one its ``codec.json``
    records (loaded from the recorded folder, or rebuilt from the config for a raw codec). A codec whose
    fingerprint differs from the recorded one is a ``ValueError`` naming both. ``windows``: a prior of token-stream
    windows (another number of frames than the codec's clip) fits too (``vqgen sample``; scoring needs clips)."""
    rec = folder.codec_record
    if override is not None:
        codec, where = load_codec(override, map_location=map_location), str(override)
    elif rec is None:
        raise ValueError(f"{folder.path} does not record its codec (it has no {CODEC_RECORD}: trained by an older "
                         "vqgen): pass --tokenizer DIR with the codec whose tokens it was trained on")
    elif rec.get("path"):
        where = rec["path"]
        if not Path(where).is_dir():
            raise FileNotFoundError(f"{folder.path}/{CODEC_RECORD} says the prior was trained on tokens of the codec in "
                                    f"{where}, which does not exist any more: pass --tokenizer DIR with a copy of it")
        codec = load_codec(where, map_location=map_location)
    elif rec.get("class_name") == "RawCodec" and rec.get("config"):
        codec, where = RawCodec.from_config(rec["config"]), "recorded in " + str(folder.path / CODEC_RECORD)
    else:
        raise ValueError(f"{folder.path}/{CODEC_RECORD} names no codec folder: pass --tokenizer DIR")
    want = rec.get("fingerprint") if rec else None
    if want and codec.fingerprint != want:
        # say how it differs too (e.g. codebooks) where it can
        problems = _bpe_fit_problems(folder, codec) if folder.bpe is not None else _fit_problems(folder.prior, codec)
        raise ValueError(f"the codec {where} (fingerprint {codec.fingerprint}) is not the one the prior {folder.path} was "
                         f"trained on (fingerprint {want}, {rec.get('path') or 'a raw codec'})"
                         + (f" ({'; '.join(problems)})" if problems else "") + ": pass the --tokenizer "
                         "that made its tokens, or drop --tokenizer to use the recorded one")
    _check_fits(folder, codec, where, windows)
    return codec


def open_prior(prior_dir: str | Path, codec_dir: str | Path | None = None, device: str = "cpu",
               windows: bool = False) -> tuple[PriorFolder, Codec]:
    """(the prior folder, its codec: the recorded one or ``codec_dir``), both loaded onto ``device``; ``windows``:
    see ``resolve_codec``."""
    folder = load_prior_folder(prior_dir, map_location=device)
    return folder, resolve_codec(folder, codec_dir, map_location=device, windows=windows)


def parse_label(value: str | int | None, names: list[str]) -> int | None:
    """A class index from a ``--label`` value: a class name, or an integer index."""
    if value is None:
        return None
    if isinstance(value, str) and value in names:
        return names.index(value)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--label {value!r} is neither a class index nor one of {names}") from None
