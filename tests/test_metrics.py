"""PSNR, SSIM and HF-energy ratio against hand-computed cases."""

import math

import torch

from qdit4sr_export.metrics import hf_energy, image_metrics, psnr, ssim


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
