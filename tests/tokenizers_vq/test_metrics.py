"""MS-SSIM: the reference library where it applies, and the smaller sizes it refuses."""

import pytest
import torch
import torch.nn.functional as F

from tokenizers_vq.metrics import ms_ssim, ms_ssim_scales, ssim


def _pair(size: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(2, 3, size, size, generator=g), 5, 1, 2)  # smooth, photo-like
    return x, (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_scales_fit_the_image():
    assert [ms_ssim_scales(s, s) for s in (16, 32, 64, 128, 256)] == [2, 3, 4, 5, 5]


def test_matches_pytorch_msssim_at_256():
    ref = pytest.importorskip("pytorch_msssim")
    x, y = _pair(256, 0.05)
    want = ref.ms_ssim(x, y, data_range=1.0, size_average=False, win_size=7)
    torch.testing.assert_close(ms_ssim(x, y, reduce=False), want, rtol=1e-5, atol=1e-6)


def test_small_images_identity_order_and_gradient():
    x, y = _pair(64, 0.05)
    _, z = _pair(64, 0.2)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert 0 < ms_ssim(x, z) < ms_ssim(x, y) < 1  # more noise, lower score
    assert ssim(x, z) < ssim(x, y)
    y = y.clone().requires_grad_(True)
    (1 - ms_ssim(x, y)).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
