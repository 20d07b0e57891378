"""Count-based priors fitted chunk by chunk (``Prior.fit_chunks``, what train-prior does on a sharded token folder)
give exactly the tables ``fit`` gives on all the rows at once: every buffer equal, the saved weights byte for byte,
whatever the chunk sizes (empty chunks included), for every smoothing, conditional or not."""

from __future__ import annotations

import pytest
import torch

from prior import PriorConfig, build_prior
from prior.ngram import SMOOTHINGS

CHUNKINGS = ([1], [3], [7, 2, 0, 30], [1000])  # row counts per chunk, cycled


def _data(shape: tuple[int, ...], vocab: int, n: int = 57, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, *shape), generator=g)
    x[: n // 3] %= 2  # repeated contexts, so counts above 1 (and the discounts' counts of counts) occur
    return x, torch.randint(0, 3, (n,), generator=g)


def _chunks(x: torch.Tensor, labels: torch.Tensor | None, sizes: list[int]):
    a, i = 0, 0
    while a < len(x):
        s = sizes[i % len(sizes)]
        i += 1
        yield x[a: a + s], None if labels is None else labels[a: a + s]
        a += s


def _same(a, b, tmp_path) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


NGRAMS = [dict(ngram_smoothing=s, ngram_order=o, ngram_template=t, ngram_position=p, ngram_discount=d)
          for s in SMOOTHINGS
          for o, t, p, d in ((2, "jbig", False, None), (4, "raster", True, None), (3, "jbig", True, 0.6),
                             (0, "jbig", False, None))]


@pytest.mark.parametrize("shape,vocab", [((5, 4), 6), ((13,), 7), ((3, 2, 2), 5)])
@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("fields", [dict(arch="histogram"), dict(arch="histogram", laplace_alpha=0.3)]
                         + [dict(arch="ngram", **f) for f in NGRAMS])
def test_fit_chunks_equals_fit_on_the_concatenation(fields, num_classes, shape, vocab, tmp_path) -> None:
    num_codebooks = shape[-1] if len(shape) == 3 else 1
    config = PriorConfig(vocab_size=vocab, shape=shape, num_classes=num_classes, num_codebooks=num_codebooks, **fields)
    x, labels = _data(shape, vocab)
    labels = labels if num_classes else None
    whole = build_prior(config)
    whole.fit(x, labels)
    for k, sizes in enumerate(CHUNKINGS):
        chunked = build_prior(config)
        chunked.fit_chunks(_chunks(x, labels, sizes))
        _same(whole, chunked, tmp_path / str(k))


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_a_conditional_ngram_fitted_without_labels_matches_too(smoothing) -> None:
    config = PriorConfig(arch="ngram", vocab_size=4, shape=(4, 4), num_classes=2, ngram_smoothing=smoothing)
    x, _ = _data((4, 4), 4)
    whole, chunked = build_prior(config), build_prior(config)
    whole.fit(x)
    chunked.fit_chunks(_chunks(x, None, [5]))
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), chunked.state_dict().values()))


def test_histogram_tables_are_the_one_hot_counts() -> None:
    """The tables ``fit`` set before it counted by bincount: Laplace-smoothed one-hot sums, per class and overall."""
    config = PriorConfig(arch="histogram", vocab_size=6, shape=(5, 4), num_classes=3, laplace_alpha=0.7)
    x, labels = _data((5, 4), 6)
    p = build_prior(config)
    p.fit(x, labels)
    flat = x.reshape(len(x), -1)
    onehot = lambda rows: torch.nn.functional.one_hot(rows, 6).sum(0).double()  # noqa: E731
    counts = torch.stack([onehot(flat[labels == k]) for k in range(3)] + [onehot(flat)])
    want = torch.log((counts + 0.7) / (counts.sum(-1, keepdim=True) + 0.7 * 6)).float()
    assert torch.equal(p.net.logits, want)


def test_each_chunk_is_checked() -> None:
    p = build_prior(PriorConfig(arch="ngram", vocab_size=4, shape=(4, 4), num_classes=2))
    x, labels = _data((4, 4), 4)
    bad = x.clone()
    bad[10, 0, 0] = 4
    with pytest.raises(ValueError, match="lie in"):
        p.fit_chunks(_chunks(bad, labels % 2, [8]))
    with pytest.raises(ValueError, match="labels must lie"):
        p.fit_chunks(_chunks(x, labels, [8]))  # label 2 of a 2-class prior
    with pytest.raises(ValueError, match="no grids"):
        p.fit_chunks(iter([]))
    with pytest.raises(NotImplementedError, match="gradient descent"):
        build_prior(PriorConfig(arch="lstm", vocab_size=4, shape=(4, 4))).fit_chunks(_chunks(x, None, [8]))
