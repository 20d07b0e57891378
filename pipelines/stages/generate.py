"""`vqgen sample`: draw token grids from a prior, decode them through its codec, write PNGs or WAVs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prior import Prior
from tokenizers_vq import Codec


@torch.no_grad()
def generate(prior: Prior, codec: Codec, n: int, out: str | Path, labels: list[int] | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             cfg_scale: float | None = None, batch_size: int = 64, seed: int = 0, progress: bool = True,
             class_names: list[str] | None = None, settings: dict[str, Any] | None = None, bpe: Any = None
             ) -> dict[str, Any]:
    """Sample ``n`` grids (``labels``: one per sample, or None), decode them with ``codec`` and write them under
    ``out``.

    Images: ``sample_NNNN.png`` each plus ``grid.png``; audio: ``sample_NNNN.wav`` plus ``spectrograms.png``.
    ``samples.json`` records the settings used, the seed, the labels and the files; ``tokens.json`` the grids.
    Returns a dict: ``summary``, ``tokens`` int64 [n, *shape], ``decoded`` float32 [n, *input_shape].
    ``bpe``: the prior models BPE-merged sequences (``pipelines.data.bpe.BPE``); samples are mapped back to codec
    tokens first (a sample whose merges spell more or fewer codes than the grid is cut or padded with code 0, and
    ``summary["bpe_length_mismatches"]`` counts them).
    """
    if bpe is not None:
        base_shape, base_vocab = tuple(bpe.info.base_token_shape), bpe.info.base_vocab
    else:
        base_shape, base_vocab = tuple(prior.shape), prior.vocab_size
    from .common import window_of  # a prior of windows of token streams: another number of frames

    fits = base_shape == tuple(codec.token_shape()) or window_of(base_shape, tuple(codec.token_shape()), codec)
    if not fits or base_vocab != codec.vocab_size:
        raise ValueError(f"the prior models grids {tuple(prior.shape)} over {prior.vocab_size} tokens but the codec "
                         f"makes {tuple(codec.token_shape())} over {codec.vocab_size}: use the codec it was trained on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior.eval()
    codec.eval()
    device = prior.device
    gen = torch.Generator(device=device).manual_seed(seed)
    all_tokens, decoded, mismatches = [], [], 0
    bar = tqdm(total=n, desc="sample", disable=not progress)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lab = torch.tensor(labels[start:start + b]) if labels is not None else None
        toks = prior.sample(b, labels=lab, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                            generator=gen)
        if bpe is not None:
            toks, lengths = bpe.decode(toks.cpu())
            mismatches += int((lengths != math.prod(base_shape)).sum())
            toks = toks.to(device)
        all_tokens.append(toks.cpu())
        decoded.append(codec.decode(toks).cpu())
        bar.update(b)
    bar.close()
    tokens, x = torch.cat(all_tokens), torch.cat(decoded)
    files = []
    kind = codec.modality  # PNGs and a grid.png for images, WAVs and a spectrograms.png for audio
    for i in range(n):
        f = out / f"sample_{i:04d}{kind.file_suffix}"
        kind.write(x[i], f, codec.sample_rate)
        files.append(f.name)
    kind.write_preview(x, out, codec.sample_rate, labels=files)
    summary = {
        "n": n, "seed": seed, "temperature": temperature, "top_k": top_k, "top_p": top_p, "cfg_scale": cfg_scale,
        "labels": labels, "label_names": [class_names[k] for k in labels] if (labels and class_names) else None,
        "token_shape": list(base_shape), "vocab_size": base_vocab, "codec_fingerprint": codec.fingerprint,
        **({"bpe_length_mismatches": mismatches} if bpe is not None else {}),
        "files": files, **(settings or {}),
    }
    (out / "samples.json").write_text(json.dumps(summary, indent=2))
    (out / "tokens.json").write_text(json.dumps(tokens.tolist()))
    return {"summary": summary, "tokens": tokens, "decoded": x, "grid_rows": math.ceil(n / 10)}


def sample(prior_dir: str | Path, out: str | Path, n: int = 16, *, label: str | int | None = None,
           labels: list[int] | None = None,
           codec_dir: str | Path | None = None, temperature: float | None = None, top_k: int | None = None,
           top_p: float | None = None, cfg_scale: float | None = None, batch_size: int = 64, seed: int = 0,
           device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """The stage: sample ``n`` inputs from the prior folder ``prior_dir`` and decode them with its recorded codec
    (or ``codec_dir``). Settings left None come from the folder's ``sampling.json`` (a conditional prior samples
    with guidance by default); a conditional prior without ``label`` cycles through its classes (``labels``: one
    class index per sample instead)."""
    from .common import open_prior, parse_label

    folder, codec = open_prior(prior_dir, codec_dir, device, windows=True)
    prior, k, d = folder.prior, folder.prior.config.num_classes, folder.sampling
    if k and labels is None:
        labels = [i % k for i in range(n)] if label is None else [parse_label(label, folder.class_names)] * n
    if k and (len(labels) != n or not all(0 <= v < k for v in labels)):
        raise ValueError(f"labels must be {n} class indices in [0, {k}) {folder.class_names}, got {label or labels}")
    elif not k and (label is not None or labels is not None):
        raise ValueError(f"--label given but the prior {prior_dir} is unconditional")
    pick = lambda given, default: default if given is None else given  # noqa: E731
    used = {"temperature": pick(temperature, d.temperature), "top_k": pick(top_k, d.top_k),
            "top_p": pick(top_p, d.top_p), "cfg_scale": pick(cfg_scale, d.cfg_scale) if k else cfg_scale}
    given = {name for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                                  ("cfg_scale", cfg_scale)) if v is not None}
    settings = {"prior": str(prior_dir), "codec": str(codec_dir) if codec_dir else (folder.codec_record or {}).get("path"),
                "settings_from_prior_folder": sorted(set(used) - given)}
    return generate(prior, codec, n, out, labels=labels, batch_size=batch_size, seed=seed, progress=progress,
                    class_names=folder.class_names, settings=settings, bpe=folder.bpe, **used)
