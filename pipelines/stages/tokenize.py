"""`vqgen tokenize`: a dataset through a tokenizer (or raw quantization) into a token folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tokenizers_vq import Tokenizer

from ..data import Splits
from ..data.tokens import TokenHeader, save_tokens

log = logging.getLogger("vqgen.tokenize")


@torch.no_grad()
def encode_dataset(encode, dataset: Dataset, batch_size: int = 256, desc: str = "tokenize",
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encode(x [B, ...]) -> int64 [B, *grid]`` over a dataset: (tokens [N, *grid], labels [N])."""
    toks, labs = [], []
    for x, y in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc=desc, disable=not progress):
        toks.append(encode(x.float()).cpu())
        labs.append(torch.as_tensor(y).long())
    return torch.cat(toks), torch.cat(labs)


def tokenize_splits(splits: Splits, out: str | Path, dataset_name: str, tokenizer: Tokenizer | None = None,
                    tokenizer_path: str | None = None, raw_levels: int | None = None, batch_size: int = 256,
                    progress: bool = True) -> TokenHeader:
    """Write both splits as token grids with a ``tokens.json`` header. With ``tokenizer`` the grids are its
    tokens; with ``raw_levels`` (2 or 256) they are the quantized pixels / mu-law samples themselves."""
    from ..likelihood.score import quantize_raw

    if tokenizer is not None:
        tokenizer.eval()
        encode = tokenizer.encode
        shape = tokenizer.token_shape(splits.input_shape)
        vocab = tokenizer.vocab_size
        if splits.modality != tokenizer.modality:
            raise ValueError(f"the dataset is {splits.modality} but the tokenizer is for {tokenizer.modality}")
    else:
        if raw_levels is None:
            raise ValueError("pass a tokenizer or --raw")
        encode = lambda x: quantize_raw(x, raw_levels, splits.modality)  # noqa: E731
        probe = encode(splits.train[0][0][None].float())
        shape, vocab = tuple(probe.shape[1:]), raw_levels
    result = {}
    for name, ds in (("train", splits.train), ("test", splits.test)):
        result[name] = encode_dataset(encode, ds, batch_size, desc=f"tokenize {name}", progress=progress)
    header = TokenHeader(
        vocab_size=vocab, token_shape=tuple(shape), modality=splits.modality, dataset=dataset_name,
        tokenizer=str(Path(tokenizer_path).resolve()) if tokenizer_path else None, raw=tokenizer is None,
        levels=raw_levels, num_classes=splits.num_classes, class_names=list(splits.class_names),
        input_shape=tuple(splits.input_shape), sample_rate=splits.sample_rate,
        counts={k: int(v[0].shape[0]) for k, v in result.items()},
    )
    save_tokens(out, header, result)
    return header
