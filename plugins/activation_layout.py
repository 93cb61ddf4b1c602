"""How ``rotate_quantize`` lays one token's n channels out in a register tile, decided once per layer on the host.

A token is a power-of-two tile of T >= n floats (channel j at tile index j; j >= n is zero padding), viewed
as (KP, P) for the rotation ``z = x R``, R = diag(signs) kron(H_K, H_P) / sqrt(n): H_K (order K, a Paley
or doubled matrix, zero-padded to KP = next power of two) contracts the KP axis, H_P = kron(H_F1, H_F2)
(natural-order Sylvester factors: P itself up to 64, else two factors of about sqrt(P)) contracts P as
(F1, F2), each with one ``tl.dot`` on a reshaped tile (or broadcast FMAs below 16): n (K + F1 + F2) flops per
token, never a dense n x n matrix. A block-diagonal Hadamard
(block b) is KP = next_pow2(n / b) identity rows of P = b.

Channel groups (per-token-per-group scales) and SVD-L input blocks (width s_i) are runs of consecutive
channels whose width need not be a power of two: the tile is summed over sub-blocks of the largest power of
two dividing the width, then C consecutive sub-blocks are combined (``Segments``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from qdit4sr_export.plugins.triton_env import next_pow2

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.hadamard import Rotation, decompose, hadamard_base

#: Largest dense factor applied by one tl.dot (n * F flops per token).
MAX_FACTOR = 128
#: Largest power-of-two part applied as one factor (larger ones are split in two).
SINGLE_FACTOR = 64
#: Largest (sub-blocks x segments) one-hot combination per token kept in registers.
MAX_SEGMENT_WORK = 1 << 15


def _pow2_part(n: int) -> int:
    return n & -n


@dataclass(frozen=True)
class Segments:
    """Runs of ``width`` channels in a tile of T: sub-blocks of ``sub`` channels, ``combine`` per run,
    ``nb`` = T / sub sub-blocks, ``count`` real runs, ``slots`` >= count (power of two; = nb when combine is 1)."""

    width: int
    sub: int
    combine: int
    nb: int
    count: int
    slots: int

    @classmethod
    def of(cls, width: int, n: int, tile: int) -> "Segments | None":
        """Segments of ``width`` over n channels, or None when the one-hot combination would be too large."""
        sub = min(_pow2_part(width), tile)
        combine = width // sub
        nb = tile // sub
        count = n // width
        slots = nb if combine == 1 else next_pow2(count)
        if combine > 1 and nb * slots > MAX_SEGMENT_WORK:
            return None
        return cls(width, sub, combine, nb, count, slots)


@dataclass(frozen=True)
class RotationLayout:
    """Tile shape (KP, P) of the rotation and its factor orders; ``k`` real rows, ``hk`` whether H_K applies."""

    n: int
    tile: int
    k: int
    kp: int
    p: int
    f1: int
    f2: int
    hk: bool
    scale: float

    @property
    def factors(self) -> int:
        """How many H_P factors the kernel applies (0, 1 or 2)."""
        return (self.f1 > 1) + (self.f2 > 1)


def _split_p(p: int) -> tuple[int, int]:
    """P as F1 x F2: one factor up to ``SINGLE_FACTOR``; above it two, F1 <= F2 <= ``MAX_FACTOR`` (the larger one
    on tensor cores, the smaller possibly below 16 as broadcast FMAs). Small factors keep the dots' shared-memory
    operands small (a 128 x 128 fp32 factor alone is 64 KiB) and cost fewer flops (n (F1 + F2) per token)."""
    if p <= SINGLE_FACTOR:
        return p, 1
    f2 = 1 << -(-(p.bit_length() - 1) // 2)
    f1 = p // f2
    if f2 > MAX_FACTOR:
        raise UserError(f"Hadamard power-of-two part {p} is larger than the kernels support ({MAX_FACTOR ** 2})")
    return f1, f2


def rotation_layout(n: int, rotation: Rotation | None) -> RotationLayout:
    """The tile layout for ``rotation`` (a Hadamard ``Rotation`` or None) of n channels."""
    if rotation is None:
        return RotationLayout(n, next_pow2(n), n, next_pow2(n), 1, 1, 1, False, 1.0)
    if rotation.n != n:
        raise UserError(f"rotation of dimension {rotation.n} on {n} channels")
    if rotation.block is None:
        k, p = decompose(n)
        kp = next_pow2(k)
        f1, f2 = _split_p(p)
        return RotationLayout(n, kp * p, k, kp, p, f1, f2, k > 1, 1.0 / math.sqrt(n))
    b = rotation.block
    k = n // b
    f1, f2 = _split_p(b)
    return RotationLayout(n, next_pow2(k) * b, k, next_pow2(k), b, f1, f2, False, 1.0 / math.sqrt(b))


def factor_matrices(layout: RotationLayout) -> dict[str, torch.Tensor]:
    """float32 factor matrices {"hk", "h1", "h2"} (those that apply), the 1/sqrt scale folded into the last (as
    the simulation applies it). Every entry is +-1 or 0 times that scale: the kernel's tensor-core path contracts
    with their signs (exact in tf32) and applies ``layout.scale`` once."""
    mats: dict[str, torch.Tensor] = {}
    if layout.hk:
        hk = torch.zeros(layout.kp, layout.kp, dtype=torch.float64)
        hk[: layout.k, : layout.k] = hadamard_base(layout.k)
        mats["hk"] = hk
    if layout.f1 > 1:
        mats["h1"] = hadamard_base(layout.f1)
    if layout.f2 > 1:
        mats["h2"] = hadamard_base(layout.f2)
    if mats:
        last = list(mats)[-1]
        mats[last] = mats[last] * layout.scale
    return {k: v.to(torch.float32) for k, v in mats.items()}
