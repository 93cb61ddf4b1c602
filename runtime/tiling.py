"""Latent tiling: square tiles (the traced graph takes square latents) blended with Gaussian weights, so
large or non-square images run in bounded memory without seams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qdit4sr_export.errors import UserError


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of ``tile``-long windows covering ``length`` with at least ``overlap`` shared; the last ends at
    ``length``."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def gaussian_weights(side: int, *, sigma_frac: float = 0.3) -> torch.Tensor:
    """(side, side) Gaussian bump centred on the tile (sigma = ``sigma_frac * side``), never zero."""
    x = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    g = torch.exp(-0.5 * (x / (sigma_frac * side)) ** 2)
    return g[:, None] * g[None, :]


@dataclass(frozen=True)
class TilePlan:
    """Boxes ``(top, left, height, width)`` of equal square tiles over an ``height x width`` latent."""

    height: int
    width: int
    side: int
    boxes: tuple[tuple[int, int, int, int], ...]


def plan_tiles(height: int, width: int, tile: int, overlap: int, *, multiple: int = 2) -> TilePlan:
    """Square tiles of side ``min(height, width, tile)`` (a multiple of ``multiple``, the patch size)."""
    if tile < multiple or tile % multiple:
        raise UserError(f"--tile must be a positive multiple of {multiple} latent pixels, got {tile}")
    side = min(height, width, tile) // multiple * multiple
    if not 0 <= overlap < side:
        raise UserError(f"tile overlap must be in [0, {side}) for {side}-pixel tiles, got {overlap}")
    boxes = tuple((top, left, side, side) for top in tile_starts(height, side, overlap)
                  for left in tile_starts(width, side, overlap))
    return TilePlan(height, width, side, boxes)


def needs_tiling(height: int, width: int, tile: int) -> bool:
    """Whether a latent must be tiled: larger than a tile on either side, or not square."""
    return height != width or max(height, width) > tile


def blend(fn: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor], x: torch.Tensor,
          plan: TilePlan) -> torch.Tensor:
    """Run ``fn`` on each tile of ``x`` (..., H, W) and blend the results with Gaussian weights."""
    weight = gaussian_weights(plan.side).to(x.device)
    out = torch.zeros_like(x, dtype=torch.float32)
    total = torch.zeros(x.shape[-2:], dtype=torch.float32, device=x.device)
    for box in plan.boxes:
        top, left, h, w = box
        y = fn(x[..., top:top + h, left:left + w], box).float()
        out[..., top:top + h, left:left + w] += y * weight
        total[top:top + h, left:left + w] += weight
    return out / total
