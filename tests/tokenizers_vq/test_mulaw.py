"""mu-law companding: parity with torchaudio on [-1, 1], and the range checks torchaudio leaves out."""

import pytest
import torch
import torchaudio.functional as AF

from tokenizers_vq import mu_law_decode, mu_law_encode

EDGES = torch.tensor([-1.0, 1.0, 0.0, 1e-8, -1e-8, 1e-4, -1e-4, 0.5, -0.5, 0.999999, -0.999999])


@pytest.mark.parametrize("channels", [256, 16, 2])
def test_encode_equals_torchaudio_on_random_and_edge_inputs(channels):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(4096, generator=g) * 2 - 1, EDGES])
    ours = mu_law_encode(x, channels)
    ref = AF.mu_law_encoding(x, channels)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, ref.long())
    assert ours.min() >= 0 and ours.max() < channels
    # The extremes map to the first and last class.
    assert mu_law_encode(torch.tensor([-1.0, 1.0]), channels).tolist() == [0, channels - 1]


@pytest.mark.parametrize("channels", [256, 16])
def test_decode_equals_torchaudio_and_round_trip_error_is_bounded(channels):
    q = torch.arange(channels)
    ours = mu_law_decode(q, channels)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, AF.mu_law_decoding(q, channels).float())
    assert ours.min() >= -1 and ours.max() <= 1
    # Re-encoding a class centre gives the same class.
    assert torch.equal(mu_law_encode(ours, channels), q)
    x = torch.linspace(-1, 1, 10001)
    err = (mu_law_decode(mu_law_encode(x, channels), channels) - x).abs()
    # Companding is finest near 0: the error there is far below the 8-bit linear step.
    if channels == 256:
        assert err[(x.abs() < 0.01)].max() < 5e-4  # 8-bit linear: up to 3.9e-3
        assert err.max() < 0.04


@pytest.mark.parametrize("bad", [1.5, -1.0001, float("nan"), float("inf")])
def test_encode_rejects_out_of_range_and_nan(bad):
    x = torch.tensor([0.0, bad, 0.5])
    with pytest.raises(ValueError, match=r"NaN|\[-1, 1\]"):
        mu_law_encode(x)


def test_encode_error_says_how_to_fix():
    with pytest.raises(ValueError, match="peak-normalise"):
        mu_law_encode(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="float"):
        mu_law_encode(torch.tensor([1, 2]))


def test_decode_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        mu_law_decode(torch.tensor([0, 256]))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        mu_law_decode(torch.tensor([-1]))


def test_inf_is_named_as_such_and_finite_range_values():
    from tokenizers_vq.mulaw import finite_range

    with pytest.raises(ValueError, match="NaN or inf"):
        mu_law_encode(torch.tensor([0.0, float("inf")]))
    assert finite_range(torch.tensor([-0.5, 0.25, 0.75])) == (True, -0.5, 0.75)
    assert finite_range(torch.tensor([0.0, float("nan")]))[0] is False
    assert finite_range(torch.empty(0)) is None
