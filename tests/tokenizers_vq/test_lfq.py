"""``quantizer="lfq"`` (lookup-free quantization, vector-quantize-pytorch): registered by its file alone, codes
round-trip, gradients pass straight through, a tokenizer saves and loads with the same tokens, codes get used."""

import pytest
import torch

from tokenizers_vq import QUANTIZERS, TokenizerConfig, build_quantizer, build_tokenizer, load_tokenizer


def test_registered_with_its_config() -> None:
    assert "lfq" in QUANTIZERS
    c = TokenizerConfig(quantizer="lfq", codebook_size=64, lfq_entropy_loss_weight=0.2)
    assert c.vocab_size == 64 and c.quantizer_config.lfq_entropy_loss_weight == 0.2
    assert TokenizerConfig.from_json(c.to_json()) == c


def test_codes_round_trip_and_straight_through_gradient() -> None:
    q = build_quantizer(TokenizerConfig(quantizer="lfq", codebook_size=32, latent_dim=8))
    z = torch.randn(3, 8, 4, 5, requires_grad=True)
    out = q(z)
    assert out.codes.shape == (3, 4, 5) and out.codes.dtype == torch.int64
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < 32
    assert torch.allclose(q.codes_to_latent(out.codes), out.quantized, atol=1e-5)  # indices -> codes -> output
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_power_of_two_is_required() -> None:
    with pytest.raises(ValueError, match="power of two"):
        TokenizerConfig(quantizer="lfq", codebook_size=100)


def test_tokenizer_trains_saves_and_uses_its_codes(tmp_path) -> None:
    torch.manual_seed(0)
    tok = build_tokenizer(quantizer="lfq", codebook_size=16, hidden_channels=8, latent_dim=8, num_res_blocks=1,
                          image_size=16)
    x = torch.rand(32, 1, 16, 16)
    opt = torch.optim.Adam(tok.parameters(), 3e-3)
    for _ in range(30):
        loss = tok(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    tokens = tok.encode(x)
    assert tokens.shape == (32, 4, 4) and tokens.unique().numel() >= 2
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert torch.equal(again.encode(x), tokens) and again.fingerprint == tok.fingerprint
    assert torch.allclose(again.decode(tokens), tok.decode(tokens))


def _codes_used_after_training(entropy_weight: float) -> int:
    """A latent that starts near one code, trained on the quantizer's own loss alone."""
    torch.manual_seed(0)
    q = build_quantizer(TokenizerConfig(quantizer="lfq", codebook_size=16, latent_dim=8,
                                        lfq_entropy_loss_weight=entropy_weight))
    z = (0.3 * torch.randn(1, 8, 16, 16) + torch.randn(1, 8, 1, 1)).requires_grad_()
    opt = torch.optim.Adam([z, *q.parameters()], 3e-2)
    for _ in range(300):
        loss = q(z).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval()(z).codes.unique().numel()


def test_the_entropy_term_keeps_codes_that_the_commitment_loss_alone_collapses() -> None:
    assert _codes_used_after_training(0.0) == 1
    assert _codes_used_after_training(1.0) >= 4
