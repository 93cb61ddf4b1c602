"""Synthetic stand-ins for trained weights, for tests and benchmarks until a trained example model exists."""

from __future__ import annotations

import torch
from torch import nn


def heavy_tailed_weight(out: int, inp: int, generator: torch.Generator, *, df: int = 3,
                        outlier_fraction: float = 0.02, outlier_scale: float = 6.0, gain: float = 0.6) -> torch.Tensor:
    """One (out, inp) float32 weight drawn from Student-t(df) / sqrt(fan_in) * gain, with a fraction of input
    channels scaled by ``outlier_scale`` (what :func:`heavy_tailed_` draws per layer; usable one tensor at a time)."""
    chi2 = torch.randn(out, inp, df, generator=generator).pow(2).sum(-1)
    w = torch.randn(out, inp, generator=generator) / (chi2 / df).sqrt() * (gain / inp**0.5)
    w[:, torch.randperm(inp, generator=generator)[: max(1, int(inp * outlier_fraction))]] *= outlier_scale
    return w


def heavy_tailed_(model: nn.Module, *, seed: int = 0, df: int = 3, outlier_fraction: float = 0.02,
                  outlier_scale: float = 6.0, gain: float = 0.6) -> nn.Module:
    """Redraw every ``transformer_blocks`` linear weight from Student-t(df) / sqrt(fan_in) * gain, with a
    fraction of input channels scaled by ``outlier_scale``; in place, seeded. Default (uniform) init has no
    outliers at all, which hides what rotations and low-rank branches are for."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.startswith("transformer_blocks."):
                out, inp = module.weight.shape
                w = heavy_tailed_weight(out, inp, g, df=df, outlier_fraction=outlier_fraction,
                                        outlier_scale=outlier_scale, gain=gain)
                module.weight.copy_(w.to(module.weight.dtype))
    return model
