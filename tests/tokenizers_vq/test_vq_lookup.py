"""LlamaGen's VQ lookup (``codebook_dim``: a low-dimensional projection; ``cosine``: l2-normalised codes) and the
fingerprint rule that lets such settings be added to format 2 without changing saved folders' fingerprints."""

import torch

from tokenizers_vq import Tokenizer, TokenizerConfig, build_tokenizer


def _tok(**kw) -> Tokenizer:
    torch.manual_seed(0)
    return build_tokenizer(TokenizerConfig(modality="image", quantizer="vq", image_size=16, hidden_channels=8,
                                           latent_dim=16, codebook_size=32, kmeans_init=False, **kw))


def test_low_dimensional_cosine_codebook(tmp_path):
    tok = _tok(codebook_dim=4, cosine=True)
    vq = tok.model.quantizer.vq
    assert vq._codebook.embed.shape[-1] == 4  # codes live in 4 dimensions
    codes = vq._codebook.embed.reshape(-1, 4)
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(len(codes)), atol=1e-5, rtol=0)  # on the sphere
    x = torch.rand(3, 1, 16, 16)
    out = tok(x)
    assert out.codes.shape == (3, 4, 4) and out.loss.isfinite()
    tok.eval()
    tok.save_pretrained(tmp_path / "t")
    again = Tokenizer.from_pretrained(tmp_path / "t")
    assert again.config.codebook_dim == 4 and again.config.cosine
    assert torch.equal(again.encode(x), tok.encode(x))


def test_settings_at_their_default_leave_the_fingerprint_alone():
    """A config that does not set the added fields hashes as before they existed; setting one changes it."""
    plain = TokenizerConfig(modality="image", quantizer="vq")
    ident = plain.identity_dict()
    assert "codebook_dim" not in ident["quantizer_config"] and "cosine" not in ident["quantizer_config"]
    assert "codebook_dim" in plain.to_dict()["quantizer_config"]  # still written to config.json
    assert TokenizerConfig(modality="image", quantizer="vq", cosine=True).identity_dict() != ident
