"""`vqgen sample`: draw token grids from a prior, decode them through the tokenizer, write PNGs or WAVs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prior import Prior
from tokenizers_vq import Tokenizer

from ..outputs import image_grid, save_image, save_wav, spectrogram_image


def check_compatible(prior: Prior, tokenizer: Tokenizer, prior_path: str = "prior", tokenizer_path: str = "tokenizer") -> None:
    """Refuse a prior/tokenizer pair whose vocabulary or token grid disagree (before any work is done)."""
    shape = tuple(tokenizer.token_shape(tokenizer.input_shape))
    problems = []
    if prior.vocab_size != tokenizer.vocab_size:
        problems.append(f"vocabulary {prior.vocab_size} (prior) != {tokenizer.vocab_size} (tokenizer)")
    if tuple(prior.shape) != shape:
        problems.append(f"token grid {tuple(prior.shape)} (prior) != {shape} (tokenizer)")
    if problems:
        raise ValueError(
            f"the prior {prior_path} was not trained on tokens of the tokenizer {tokenizer_path}: "
            + "; ".join(problems)
            + ". Use the tokenizer whose `vqgen tokenize` output the prior was trained on."
        )


@torch.no_grad()
def generate(prior: Prior, tokenizer: Tokenizer, n: int, out: str | Path, labels: list[int] | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             cfg_scale: float | None = None, batch_size: int = 64, seed: int = 0, progress: bool = True,
             class_names: list[str] | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample ``n`` grids (``labels``: one per sample, or None), decode and write them under ``out``.

    Images: ``sample_NNNN.png`` each plus ``grid.png``; audio: ``sample_NNNN.wav`` plus
    ``spectrograms.png``. ``samples.json`` records the settings, the seed, the labels and the files.
    Returns (tokens int64 [n, *shape], decoded) in a dict with the summary.
    """
    check_compatible(prior, tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior.eval()
    tokenizer.eval()
    gen = torch.Generator(device=next(prior.parameters()).device).manual_seed(seed)
    all_tokens, decoded = [], []
    bar = tqdm(total=n, desc="sample", disable=not progress)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lab = torch.tensor(labels[start:start + b]) if labels is not None else None
        toks = prior.sample(b, labels=lab, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                            generator=gen)
        all_tokens.append(toks.cpu())
        decoded.append(tokenizer.decode(toks).cpu())
        bar.update(b)
    bar.close()
    tokens, x = torch.cat(all_tokens), torch.cat(decoded)
    files = []
    if tokenizer.modality == "image":
        for i in range(n):
            f = out / f"sample_{i:04d}.png"
            save_image(x[i], f)
            files.append(f.name)
        nrow = 10 if n >= 10 else n
        image_grid(x, nrow=nrow, scale=3).save(out / "grid.png")
    else:
        sr = tokenizer.config.sample_rate
        for i in range(n):
            f = out / f"sample_{i:04d}.wav"
            save_wav(x[i], f, sr)
            files.append(f.name)
        shown = min(n, 8)
        spectrogram_image([x[i] for i in range(shown)], sr, labels=files[:shown], ncol=2).save(out / "spectrograms.png")
    summary = {
        "n": n, "seed": seed, "temperature": temperature, "top_k": top_k, "top_p": top_p, "cfg_scale": cfg_scale,
        "labels": labels, "label_names": [class_names[k] for k in labels] if (labels and class_names) else None,
        "token_shape": list(prior.shape), "vocab_size": prior.vocab_size, "files": files, **(settings or {}),
    }
    (out / "samples.json").write_text(json.dumps(summary, indent=2))
    (out / "tokens.json").write_text(json.dumps(tokens.tolist()))
    return {"summary": summary, "tokens": tokens, "decoded": x, "grid_rows": math.ceil(n / 10)}
