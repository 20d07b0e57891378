"""Issue 23: `vqgen train-prior` of a count-based prior (histogram, ngram) and `vqgen bpe train` read a sharded
training split block by block, never as one tensor, and write the same files as fitting / training on the whole
split in memory did."""

from __future__ import annotations

import math

import pytest
import torch

import pipelines.data.bpe as bpe_mod
import pipelines.data.tokens as tokens_mod
from pipelines.cli import main
from pipelines.data.shards import ShardedArray
from pipelines.data.tokens import TokenHeader, load_tokens, save_tokens
from pipelines.likelihood.reference import reference_split
from prior import Prior, PriorConfig, build_prior
from tokenizers_vq import RawCodec

SHAPE, VOCAB, CLASSES = (4, 4), 4, 3


def _folder(path, n_train: int = 300, n_test: int = 40, shape=SHAPE, vocab=VOCAB) -> None:
    g = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randint(0, vocab, (n, *shape), generator=g)
        x[: n // 2] %= 2  # repeated grids and contexts
        x.reshape(n, -1)[n // 2:, :4] = torch.tensor([1, 2, 0, 1]) % vocab  # a frequent motif (BPE merges it)
        return x, torch.randint(0, CLASSES, (n,), generator=g)

    header = TokenHeader(vocab_size=vocab, token_shape=shape, modality="image", dataset="toy",
                         codec=RawCodec("image", 256, (1, *shape)).record(), num_classes=CLASSES,
                         class_names=["a", "b", "c"])
    save_tokens(path, header, {"train": split(n_train), "test": split(n_test)}, rows_per_shard=16)


def _no_whole_train_split(monkeypatch) -> None:
    """Materializing the training split (or a view of it) is an error from here on."""
    real = ShardedArray.materialize

    def materialize(self):
        if any(f.name.startswith("train") for f in self.files):
            raise AssertionError(f"the training split was materialized ({len(self)} rows)")
        return real(self)

    monkeypatch.setattr(ShardedArray, "materialize", materialize)


@pytest.mark.parametrize("args,conditional", [
    (["--arch", "histogram"], False),
    (["--arch", "histogram", "--laplace-alpha", "0.5"], True),
    (["--arch", "ngram", "--ngram-order", "3"], False),
    (["--arch", "ngram", "--ngram-order", "2", "--ngram-smoothing", "witten_bell", "--ngram-position"], True),
    (["--arch", "ngram", "--ngram-order", "4", "--ngram-template", "raster", "--ngram-smoothing", "add_alpha"], True),
])
def test_train_prior_counts_a_sharded_split_in_blocks_and_saves_the_same_weights(args, conditional, tmp_path,
                                                                                 monkeypatch) -> None:
    tok, out = tmp_path / "tok", tmp_path / "prior"
    _folder(tok)
    calls: list[list[int]] = []  # rows per chunk, per fit_chunks call
    real_fit_chunks = Prior.fit_chunks

    def fit_chunks(self, chunks):
        calls.append([])

        def spy():
            for x, labels in chunks:
                calls[-1].append(len(x))
                yield x, labels

        real_fit_chunks(self, spy())

    monkeypatch.setattr(Prior, "fit_chunks", fit_chunks)
    monkeypatch.setattr(tokens_mod, "CHUNK_TOKENS", 7 * math.prod(SHAPE))  # blocks of 7 grids
    with monkeypatch.context() as m:
        _no_whole_train_split(m)
        cmd = ["train-prior", "--tokens", str(tok), "--out", str(out), "--seed", "0", "--quiet", *args]
        assert main(cmd + (["--conditional"] if conditional else [])) == 0
    n_train = 300 - 30  # --reference-fraction 0.1 holds 30 grids out
    # the prior, then the score reference's local n-gram, both counted on the 270 grids 7 at a time
    assert calls == [[7] * 38 + [4]] * 2 and sum(calls[0]) == n_train

    # what train-prior wrote before: fit on the whole training split (less the held-out grids), in memory
    tokens, labels = load_tokens(tok, "train")
    keep, held = reference_split(len(tokens), 0.1, 0, math.prod(SHAPE))
    assert len(held) == 30
    keep = torch.as_tensor(keep)
    expected = build_prior(PriorConfig.from_file(out / "config.json"))
    expected.fit(tokens.materialize()[keep], labels.materialize()[keep] if conditional else None)
    expected.save_pretrained(tmp_path / "expected")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "expected" / "model.safetensors").read_bytes()


def test_bpe_train_reads_a_sharded_split_in_blocks_and_learns_the_same_merges(tmp_path, monkeypatch) -> None:
    tok = tmp_path / "tok"
    _folder(tok, n_train=120, n_test=10, shape=(6, 7), vocab=3)
    monkeypatch.setattr(bpe_mod, "CHUNK_TOKENS", 5 * 42)  # blocks of 5 grids
    with monkeypatch.context() as m:
        _no_whole_train_split(m)
        assert main(["bpe", "train", "--tokens", str(tok), "--vocab", "20", "--out", str(tmp_path / "bpe"),
                     "--quiet"]) == 0
    # before: BPE.train on the materialized split, its strings made in one list
    tokens, _ = load_tokens(tok, "train")
    monkeypatch.setattr(bpe_mod, "grid_strings", bpe_mod.to_strings)
    from pipelines.data.tokens import load_token_header

    header = load_token_header(tok)
    bpe_mod.BPE.train(tokens.materialize(), 20, 3, codec=header.codec).save(tmp_path / "expected")
    for name in ("bpe.json", "tokenizer.json"):
        assert (tmp_path / "bpe" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes(), name
    assert bpe_mod.BPE.load(tmp_path / "bpe").info.merged_vocab > 3  # merges were learnt
