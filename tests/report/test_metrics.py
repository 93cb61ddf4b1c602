"""PSNR, SSIM, GMS and HF-energy ratio against hand-computed cases."""

import math

import torch

from qdit4sr_export.report.metrics import GMS_C, gms, gradient_magnitude, hf_energy, image_metrics, psnr, ssim


def test_psnr_and_ssim_known_values():
    a = torch.full((1, 3, 16, 16), 100.0)
    assert abs(float(psnr(a, a + 5)) - 10 * math.log10(255 ** 2 / 25)) < 1e-4
    x = torch.rand(2, 3, 32, 32) * 255
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-4)
    assert float(ssim(x, torch.rand(2, 3, 32, 32) * 255).mean()) < 0.2


def test_hf_ratio_sees_blur():
    x = torch.rand(1, 3, 64, 64)
    blurred = torch.nn.functional.avg_pool2d(x, 4, 1, padding=0)
    blurred = torch.nn.functional.interpolate(blurred, size=(64, 64), mode="bilinear")
    assert float(hf_energy(blurred * 255)) < 0.1 * float(hf_energy(x * 255))
    m = image_metrics(blurred, x)
    assert m["hf_ratio"] < 0.1 and m["psnr"] < 20 and image_metrics(x, x)["psnr"] > 90


def test_gms_known_values():
    # A ramp of 6 levels/px: 12 per pooled px, and Prewitt's central difference spans 2 of them: 24 everywhere.
    ramp = (torch.arange(32.0) * 6).expand(1, 3, 32, 32).clone()
    assert torch.allclose(gradient_magnitude(ramp), torch.full((1, 14, 14), 24.0), atol=1e-4)
    # Against half the slope: (2 * 24 * 12 + c) / (24^2 + 12^2 + c), the GMS formula by hand.
    expected = (2 * 24 * 12 + GMS_C) / (24 ** 2 + 12 ** 2 + GMS_C)
    assert abs(float(gms(ramp, ramp / 2)) - expected) < 1e-5
    x = torch.rand(2, 3, 32, 32) * 255
    assert torch.allclose(gms(x, x), torch.ones(2))
    flat = torch.full_like(x, 128.0)  # no edges where the reference has many: far from 1 (measured 0.28-0.32)
    assert float(gms(flat, x).max()) < 0.4
    assert image_metrics(x / 255, x / 255)["gms"] == 1.0


def test_psnr_and_ssim_are_scikit_images():
    """The reference implementations (scikit-image: Wang et al.'s Gaussian SSIM, sigma 1.5, population covariance)
    on the same 8-bit images agree with the project's torch versions to float32 precision."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 3, 64, 48, generator=g) * 255).round()
    b = (a + 12 * torch.randn(a.shape, generator=g)).clamp(0, 255).round()
    ours_psnr, ours_ssim = psnr(b, a), ssim(b, a)
    for i in range(2):
        x, y = (t[i].permute(1, 2, 0).double().numpy() for t in (a, b))
        assert abs(peak_signal_noise_ratio(x, y, data_range=255) - float(ours_psnr[i])) < 1e-4
        ref = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=2)
        assert abs(ref - float(ours_ssim[i])) < 1e-6 and np.isfinite(ref)
