"""BPE over codec tokens (pipelines/data/bpe.py): exact round trips, merged token folders, a prior on them."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.data.bpe import BPE, load_lengths, write_bpe_token_folder
from pipelines.data.tokens import TokenHeader, load_token_header, load_tokens, save_tokens


def roundtrip(bpe: BPE, tokens: torch.Tensor) -> torch.Tensor:
    ids, lengths = bpe.encode(tokens)
    assert ids.shape[1] == int(lengths.max()) + 1 and (ids[torch.arange(len(ids)), lengths] == bpe.info.eos).all()
    out, n = bpe.decode(ids)
    assert (n == math.prod(tokens.shape[1:])).all()
    return out


@pytest.mark.parametrize("vocab,shape", [(2, (6, 7)), (5, (40,)), (300, (3, 4, 2))])
def test_round_trip_is_exact_on_random_sequences(vocab: int, shape: tuple[int, ...], tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    motif = torch.randint(0, vocab, (5,), generator=g)
    tokens = torch.randint(0, vocab, (200, *shape), generator=g)
    flat = tokens.reshape(200, -1)
    flat[:, :5] = motif  # a frequent pattern, so merges happen
    bpe = BPE.train(tokens, vocab + 20, vocab)
    assert bpe.info.merged_vocab > vocab
    assert torch.equal(roundtrip(bpe, tokens), tokens)
    fresh = torch.randint(0, vocab, (50, *shape), generator=g)  # unseen sequences too
    assert torch.equal(roundtrip(bpe, fresh), fresh)
    bpe.save(tmp_path)
    again = BPE.load(tmp_path)
    assert torch.equal(again.encode(fresh)[0], bpe.encode(fresh)[0])


def test_round_trip_is_exact_on_real_sequences() -> None:
    """mnist5k raster-read as binarised and 8-bit pixels, and mu-law samples of a chirp: merges shorten them
    and decoding gives the original tokens exactly."""
    from pipelines.data import DataSpec, load_data
    from tokenizers_vq import quantize_raw

    xs, _ = load_data(DataSpec("mnist5k")).train.tensors
    t = torch.linspace(0, 1, 4000)
    chirp = 0.8 * torch.sin(2 * math.pi * (200 + 600 * t) * t) * torch.exp(-3 * t)
    audio = quantize_raw(torch.stack([chirp.roll(k * 37) for k in range(40)]).reshape(160, 1000), 256, "audio")
    for tokens, V, merges, ratio in ((quantize_raw(xs[:300], 2), 2, 200, 0.5), (quantize_raw(xs[:200], 256), 256, 300, 0.8),
                                     (audio, 256, 300, 0.95)):  # raw mu-law samples repeat little
        bpe = BPE.train(tokens[:-20], V + merges, V)
        ids, lengths = bpe.encode(tokens)
        assert lengths.double().mean() < ratio * math.prod(tokens.shape[1:])
        assert torch.equal(bpe.decode(ids)[0], tokens)


def test_bpe_token_folder_and_a_prior_whose_samples_decode_to_codec_tokens(tmp_path) -> None:
    from pipelines.data import DataSpec, load_data
    from prior import build_prior
    from tokenizers_vq import RawCodec, quantize_raw

    splits = load_data(DataSpec("mnist5k"))
    tr, te = quantize_raw(splits.train.tensors[0][:200], 2), quantize_raw(splits.test.tensors[0][:40], 2)
    codec = RawCodec("image", 2, (1, 32, 32))
    header = TokenHeader(vocab_size=2, token_shape=(32, 32), modality="image", dataset="mnist5k",
                         codec={"input_shape": [1, 32, 32]}, counts={"train": 200, "test": 40})
    save_tokens(tmp_path / "tok", header, {"train": (tr, torch.full((200,), -1)), "test": (te, torch.full((40,), -1))})
    BPE.train(tr, 64, 2).save(tmp_path / "bpe")
    stats = write_bpe_token_folder(tmp_path / "tok", tmp_path / "bpe", tmp_path / "merged")
    assert stats["reduction"] > 2
    h = load_token_header(tmp_path / "merged")
    assert h.vocab_size == 65 and h.token_shape == (stats["max_len"],) and h.bpe["eos"] == 64
    ids, _ = load_tokens(tmp_path / "merged", "test")
    lengths = load_lengths(tmp_path / "merged", "test")
    bpe = BPE.load(tmp_path / "bpe")
    assert torch.equal(bpe.decode(ids)[0], te) and torch.equal(bpe.encode(te, h.token_shape[0])[1], lengths)
    # a 1-D prior on the padded sequences: its samples decode to valid codec tokens
    torch.manual_seed(0)
    p = build_prior(arch="transformer", vocab_size=h.vocab_size, shape=h.token_shape, d_model=32, n_layer=1)
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    train_ids, _ = load_tokens(tmp_path / "merged", "train")
    for _ in range(20):
        opt.zero_grad()
        p.loss(train_ids[torch.randint(0, 200, (32,))]).backward()
        opt.step()
    samples = p.sample(4, generator=torch.Generator().manual_seed(0))
    tokens, n = bpe.decode(samples)
    assert tokens.shape == (4, 32, 32) and tokens.min() >= 0 and tokens.max() < 2 and (n >= 0).all()
    assert codec.decode(tokens).shape == (4, 1, 32, 32)


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least"):
        BPE.train(torch.zeros(3, 4, dtype=torch.long), 1, 2)
    bpe = BPE.train(torch.randint(0, 3, (20, 8)), 6, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        bpe.encode(torch.full((1, 8), 3))
    with pytest.raises(FileNotFoundError, match="not a BPE folder"):
        BPE.load(tmp_path)
