"""Colour correction of the SR output against the bicubic-upscaled LR image (StableSR/DiT4SR): ``adain``
matches per-channel mean and std; ``wavelet`` keeps the output's high frequencies and the reference's low ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qdit4sr_export.errors import UserError

COLOR_FIXES = ("adain", "wavelet", "none")


def adain(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel, shift and scale ``image`` (B, C, H, W) to ``reference``'s mean and std."""
    mean_i, std_i = image.mean((2, 3), keepdim=True), image.std((2, 3), keepdim=True) + eps
    mean_r, std_r = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return (image - mean_i) / std_i * std_r + mean_r


def _wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """One level of the a-trous 3x3 binomial blur with dilation ``radius`` (replicate padding)."""
    k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=image.dtype, device=image.device) / 16
    kernel = k.expand(image.shape[1], 1, 3, 3)
    padded = F.pad(image, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=radius)


def wavelet_split(image: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high frequencies, low frequencies) with ``high + low == image``."""
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = _wavelet_blur(low, 2 ** i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet(image: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """``image``'s high frequencies plus ``reference``'s low frequencies."""
    return wavelet_split(image, levels)[0] + wavelet_split(reference, levels)[1]


def apply_color_fix(name: str, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Apply colour fix ``name`` (one of COLOR_FIXES) to (B, 3, H, W) images in [0, 1]."""
    if name == "adain":
        return adain(image, reference)
    if name == "wavelet":
        return wavelet(image, reference)
    if name == "none":
        return image
    raise UserError(f"--color-fix must be one of {', '.join(COLOR_FIXES)}, got {name!r}")


def is_grey(image: torch.Tensor) -> bool:
    """True when a (3, H, W) image has R = G = B everywhere (a greyscale photo stored as RGB)."""
    return bool((image[0] == image[1]).all() and (image[1] == image[2]).all())


def keep_grey(image: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``image`` (3, H, W) as grey (its channel mean in every channel) where ``source`` is grey, else unchanged:
    a grey photo's SR stays grey, whatever colour the sampler's start noise leaves behind."""
    return image.mean(0, keepdim=True).expand_as(image).contiguous() if is_grey(source) else image
