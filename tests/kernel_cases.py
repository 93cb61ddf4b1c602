"""Seeded layer specs and activations shared by the kernel tests."""

from __future__ import annotations

import torch
from qdit4sr_export.plugins.activation_spec import ActivationSpec
from qdit4sr_export.plugins.packing import stored_weight_bytes
from qdit4sr_export.plugins.weight_spec import WeightSpec

from qdit4sr_export.quant.hadamard import Rotation


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few outlier channels, like a DiT's."""
    x = torch.randn(m, n, generator=gen(seed))
    x[:, :: max(1, n // 5)] *= 8.0
    return x


def activation_spec(n: int, *, rotation: str = "hadamard", clip: str = "gaussian", group: int | None = None,
                    smooth: bool = False, rank: int = 0, block: tuple[int, int] | None = None, out: int = 0,
                    seed: int = 0) -> ActivationSpec:
    """rotation: "hadamard", "block64" (block-diagonal) or "none"; block = SVD-L (s_o, s_i) for ``out`` outputs."""
    g = gen(seed + 100)
    rot = {"hadamard": lambda: Rotation(n, seed=seed), "block64": lambda: Rotation(n, seed=seed, block=64),
           "none": lambda: None}[rotation]()
    v = torch.randn(out // block[0], n // block[1], block[1], generator=g) if block else None
    return ActivationSpec(n, rot, clip, group, torch.rand(n, generator=g) + 0.5 if smooth else None,
                          torch.randn(n, rank, generator=g) / n ** 0.5 if rank else None, v)


def weight_spec(k: int, n: int, bits: int, *, group: int | None = None, rank: int = 0,
                block: tuple[int, int] | None = None, bias: bool = True, unit_scales: bool = False,
                seed: int = 0) -> WeightSpec:
    g = gen(seed + 200)
    q = 2 ** (bits - 1) - 1
    codes = torch.randint(-q, q + 1, (k, n), generator=g, dtype=torch.int8)
    shape = (k // group, n) if group else (n,)
    scale = torch.ones(shape) if unit_scales else torch.rand(shape, generator=g) * 0.02 + 1e-3
    u = torch.randn(n // block[0], k // block[1], block[0], generator=g) if block else None
    return WeightSpec(stored_weight_bytes(codes, bits), scale, bits, k, n, group,
                      torch.randn(rank, n, generator=g) if rank else None, u,
                      torch.randn(n, generator=g) if bias else None)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (float64)."""
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
