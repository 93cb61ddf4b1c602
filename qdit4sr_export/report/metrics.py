"""Image quality metrics on 8-bit-quantised images: PSNR, SSIM, gradient-magnitude similarity (GMSM, Xue et al.
2014: do edges sit where the reference has them, with the same strength), and the high-frequency energy ratio (the
paper's Fig. 2 frequency analysis: spectral energy above the LR image's Nyquist limit, output over reference).

Why not a library: PSNR and SSIM are tested equal to scikit-image's reference implementations (Wang et al.'s Gaussian
SSIM) to float32 precision, but scikit-image works on one numpy image at a time and would bring scipy into the core
install; torchmetrics' SSIM does not reproduce scikit-image's at four decimals (checked with torchmetrics 1.9). No
library on the package index implements GMSM without torchvision (piq needs it), so GMSM and the HF ratio stay here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Frequencies above the LR image's Nyquist limit for x4 SR: a quarter of the HR Nyquist (0.125 cycles/px).
HF_CUTOFF = 0.125


def to_255(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> rounded to 8-bit levels, as floats in [0, 255]."""
    return (images.clamp(0, 1) * 255).round()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 255]."""
    mse = ((a - b) ** 2).mean((1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(255.0 ** 2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, channels averaged) of images in [0, 255]."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum()).float()
    channels = a.shape[1]
    win = (g[:, None] * g[None, :]).expand(channels, 1, 11, 11).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win, groups=channels)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return s.mean((1, 2, 3))


#: GMS stability constant for images in [0, 255] (Xue et al.: 0.0026 * 255^2).
GMS_C = 170.0


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(B, H/2-2, W/2-2) Prewitt gradient magnitude of the grey image after 2x2 mean pooling (GMSD's definition)."""
    g = 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]
    g = F.avg_pool2d(g, 2)
    h = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=g.dtype) / 3
    gx, gy = F.conv2d(g, h[None, None]), F.conv2d(g, h.t()[None, None])
    return (gx ** 2 + gy ** 2).sqrt()[:, 0]


def gms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image gradient-magnitude similarity mean (GMSM) of images in [0, 255]: 1 for identical gradients."""
    ma, mb = gradient_magnitude(a), gradient_magnitude(b)
    return ((2 * ma * mb + GMS_C) / (ma ** 2 + mb ** 2 + GMS_C)).mean((1, 2))


def hf_energy(images: torch.Tensor, cutoff: float = HF_CUTOFF) -> torch.Tensor:
    """Per-image spectral energy of the grey image above ``cutoff`` cycles/px."""
    g = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    g = g - g.mean((1, 2), keepdim=True)
    power = torch.fft.fft2(g).abs() ** 2
    fy = torch.fft.fftfreq(g.shape[1]).view(-1, 1)
    fx = torch.fft.fftfreq(g.shape[2]).view(1, -1)
    return (power * ((fy ** 2 + fx ** 2).sqrt() > cutoff)).sum((1, 2))


def image_metrics(out: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean PSNR, SSIM, GMS and HF-energy ratio (out / reference) of (B, 3, H, W) images in [0, 1]."""
    o, r = to_255(out), to_255(reference)
    ratio = hf_energy(o) / hf_energy(r).clamp_min(1e-10)
    return {"psnr": round(float(psnr(o, r).mean()), 3), "ssim": round(float(ssim(o, r).mean()), 4),
            "gms": round(float(gms(o, r).mean()), 4), "hf_ratio": round(float(ratio.mean()), 4)}
