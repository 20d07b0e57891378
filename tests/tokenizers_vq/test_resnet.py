"""The ``resnet`` image autoencoder family: shapes at any size, no checkerboard, its losses, its config checks."""

import pytest
import torch

from tokenizers_vq import Tokenizer, TokenizerConfig, build_tokenizer
from tokenizers_vq.autoencoders.resnet import ResNetDecoder, spectral_l1


def _tok(**kw) -> Tokenizer:
    torch.manual_seed(0)
    base = dict(modality="image", autoencoder="resnet", channels=3, image_size=32, hidden_channels=8,
                latent_dim=8, quantizer="fsq", fsq_levels=[5, 5, 5])
    return build_tokenizer(TokenizerConfig(**(base | kw)))


def test_default_widths_and_token_grid():
    tok = _tok()
    assert tok.config.channel_mult == [1, 2, 4]
    assert tok.token_shape() == (8, 8)
    out = tok(torch.rand(2, 3, 32, 32))
    assert out.recon.shape == (2, 3, 32, 32) and out.codes.shape == (2, 8, 8)
    assert out.raw is not None and out.rec_loss is not None
    assert {"l1", "ms_ssim_loss", "psnr"} <= set(out.metrics)


@pytest.mark.parametrize("attention", [False, True])
def test_any_image_size_round_trips(attention):
    """Fully convolutional (attention included): one model encodes 32x32 and 48x80 images."""
    tok = _tok(attention=attention).eval()
    for h, w in ((32, 32), (48, 80)):
        codes = tok.model.encode(torch.rand(1, 3, h, w))
        assert codes.shape == (1, h // 4, w // 4)
        img = tok.model.decode(codes)
        assert img.shape == (1, 3, h, w) and 0 <= img.min() and img.max() <= 1


def test_upsampling_has_no_checkerboard():
    """A constant latent decodes to a constant image: nearest-neighbour up-sampling + a 3x3 convolution gives
    every output pixel the same taps, where a stride-2 transposed convolution paints a period-2 pattern. (Circular
    padding in the test, so that borders do not vary the image; random weights.)"""
    torch.manual_seed(0)
    dec = ResNetDecoder(8, 3, 8, [1, 2, 4], 1, False).eval()
    for m in dec.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding_mode = "circular"
    with torch.no_grad():
        img = dec(torch.ones(1, 8, 8, 8))
        assert img.shape == (1, 3, 32, 32)
        assert (img - img[..., :1, :1]).abs().max() < 1e-5 * img.abs().max()
        convt = torch.nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1)
        ref = convt(torch.ones(1, 8, 8, 8))[..., 2:-2, 2:-2]
        assert (ref[..., ::2, :] - ref[..., 1::2, :]).abs().mean() > 1e-3  # the artefact the layout avoids


def test_each_loss_term_moves_the_loss_and_a_zero_weight_drops_it():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = _tok(l1_weight=1.0, l2_weight=0.0, ms_ssim_weight=0.0, spectral_weight=0.0)
    out = base(x)
    assert set(out.metrics) >= {"l1"} and "ms_ssim_loss" not in out.metrics
    torch.testing.assert_close(out.rec_loss, (out.raw - x).abs().mean())
    full = _tok(l1_weight=1.0, l2_weight=2.0, ms_ssim_weight=0.5, spectral_weight=0.25)
    o = full(x)
    m = o.metrics
    want = m["l1"] + 2 * m["l2"] + 0.5 * m["ms_ssim_loss"] + 0.25 * m["spectral"]
    torch.testing.assert_close(o.rec_loss.detach(), want)
    o.loss.backward()
    enc = full.model.encoder.net[0].weight.grad
    assert enc is not None and enc.abs().sum() > 0  # straight-through: the encoder learns from the image loss


def test_spectral_l1_is_zero_for_equal_images_and_sees_fine_detail():
    x = torch.rand(1, 3, 16, 16)
    assert spectral_l1(x, x) == 0
    stripes = x.clone()
    stripes[..., ::2] += 0.1
    assert spectral_l1(x, stripes) > 0


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="channel_mult needs log2"):
        TokenizerConfig(modality="image", autoencoder="resnet", channel_mult=[1, 2])
    with pytest.raises(ValueError, match="power of two"):
        TokenizerConfig(modality="image", autoencoder="resnet", downsample=3)
    with pytest.raises(ValueError, match="loss weights"):
        TokenizerConfig(modality="image", autoencoder="resnet", l1_weight=-1)


def test_save_load_round_trip(tmp_path):
    tok = _tok(attention=True).eval()
    tok.save_pretrained(tmp_path / "t")
    again = Tokenizer.from_pretrained(tmp_path / "t")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(tok.encode(x), again.encode(x))
    assert again.fingerprint == tok.fingerprint


def test_patch_size_runs_the_network_on_patches():
    """patch_size p: the encoder sees the image cut into p x p patches (p^2 x the channels at 1/p resolution)
    and the decoder's output is put back together by pixel shuffle; the token grid stays H/d x W/d."""
    tok = _tok(patch_size=2, channel_mult=[1, 2]).eval()
    assert tok.model.encoder.net[0].in_channels == 12 and tok.model.decoder.net[-1].out_channels == 12
    x = torch.rand(2, 3, 32, 48)
    codes = tok.model.encode(x)
    assert codes.shape == (2, 8, 12)
    with torch.no_grad():
        want = tok.model.quantizer(tok.model.encoder(torch.nn.functional.pixel_unshuffle(x * 2 - 1, 2))).codes
        assert torch.equal(codes, want)
        img = tok.model.decode(codes)
        latent = tok.model.quantizer.codes_to_latent(codes)
        ref = (torch.nn.functional.pixel_shuffle(tok.model.decoder(latent), 2) * 0.5 + 0.5).clamp(0, 1)
    assert img.shape == (2, 3, 32, 48)
    torch.testing.assert_close(img, ref)
    out = tok(x)
    out.loss.backward()
    assert tok.model.encoder.net[0].weight.grad.abs().sum() > 0
    whole = _tok(patch_size=4, channel_mult=[1]).eval()  # the whole network at the token resolution
    assert whole.model.encode(x).shape == (2, 8, 12) and whole.model.decode(whole.model.encode(x)).shape == x.shape


def test_patch_size_default_keeps_old_fingerprints_and_is_checked():
    """patch_size was added later: at its default (1) it is left out of the hashed config, so folders saved
    before it keep their fingerprint; another value changes it."""
    assert _tok().fingerprint != _tok(patch_size=2, channel_mult=[1, 2]).fingerprint
    assert "patch_size" not in str(_tok().config.identity_dict())
    assert "patch_size" in str(_tok().config.to_dict())  # still written to config.json
    with pytest.raises(ValueError, match="patch_size must be a power of two dividing downsample"):
        TokenizerConfig(modality="image", autoencoder="resnet", patch_size=3)
    with pytest.raises(ValueError, match="patch_size must be a power of two dividing downsample"):
        TokenizerConfig(modality="image", autoencoder="resnet", patch_size=8)
    with pytest.raises(ValueError, match=r"log2\(downsample / patch_size\) \+ 1 = 2"):
        TokenizerConfig(modality="image", autoencoder="resnet", patch_size=2, channel_mult=[1, 2, 4])
