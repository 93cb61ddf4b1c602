"""The 2-D sin-cos positional table of DiT4SR's ``pos_embed`` (diffusers' PatchEmbed with ``pos_embed_max_size``),
computed a span of rows at a time, and the central crop that latents up to a given size use.

The full table of the released model is 147456 x 1536 (906 MB in float32); PatchEmbed only ever reads the central
``h x h`` square of its ``P x P`` grid for an ``h``-patch latent, so an engine set that accepts latents up to ``m``
patches needs only the central ``m x m`` crop. Every value here is bit-identical to the corresponding entry of the
table diffusers computes (tested).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig

#: Deterministic buffer: loaded when the checkpoint has it (the release stores it as F16), else recomputed.
POS_EMBED_KEY = "pos_embed.pos_embed"


def default_pos_embed(config: DiT4SRConfig) -> torch.Tensor:
    """The sin-cos table that diffusers' PatchEmbed registers, computed on the CPU in float32 (all of it at once)."""
    table = get_2d_sincos_pos_embed(
        config.inner_dim,
        config.pos_embed_max_size,
        base_size=config.sample_size // config.patch_size,
        interpolation_scale=1,
        output_type="pt",
    )
    return table.float().unsqueeze(0)


def _axis_embedding(config: DiT4SRConfig) -> torch.Tensor:
    """(P, D/2) float64: the 1-D sin-cos code of each grid coordinate, as diffusers computes it."""
    grid = config.pos_embed_max_size
    pos = torch.arange(grid, dtype=torch.float32) / (grid / (config.sample_size // config.patch_size)) / 1
    return get_1d_sincos_pos_embed_from_grid(config.inner_dim // 2, pos, output_type="pt")


def _rows(config: DiT4SRConfig, rows: torch.Tensor, cols: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Table entries of grid cells (i, j) for i in ``rows``, j in ``cols`` (row-major), float32 (n, D); made
    ``chunk`` grid rows at a time so no float64 copy of a large table exists."""
    axis = _axis_embedding(config)
    out = torch.empty(len(rows) * len(cols), config.inner_dim)
    half = config.inner_dim // 2
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        span = slice(start * len(cols), (start + len(part)) * len(cols))
        out[span, :half] = axis[cols].repeat(len(part), 1)  # the first half codes the column (meshgrid "xy")
        out[span, half:] = axis[part].repeat_interleave(len(cols), dim=0)
    return out


def table_rows(config: DiT4SRConfig, start: int, stop: int) -> torch.Tensor:
    """Grid rows ``start:stop`` of the full table, float32 ((stop - start) * P, D)."""
    grid = config.pos_embed_max_size
    return _rows(config, torch.arange(start, stop), torch.arange(grid))


def crop_offset(config: DiT4SRConfig, grid: int) -> int:
    """First row (and column) of the central ``grid x grid`` square, as PatchEmbed crops it."""
    return (config.pos_embed_max_size - grid) // 2


def check_crop(config: DiT4SRConfig, grid: int) -> None:
    """A crop must fit the table, and share its parity so every smaller centred square lies inside it where
    PatchEmbed would take it from the full table."""
    full = config.pos_embed_max_size
    if not 1 <= grid <= full:
        raise UserError(f"positional crop of {grid} patches is outside 1..{full} (the model's table)")
    if (full - grid) % 2:
        raise UserError(f"positional crop of {grid} patches must have the parity of the table size {full} "
                        "(so smaller latents sit where the full table puts them)")


def computed_crop(config: DiT4SRConfig, grid: int) -> torch.Tensor:
    """The central ``grid x grid`` crop, computed directly: (1, grid * grid, D) float32."""
    check_crop(config, grid)
    idx = torch.arange(crop_offset(config, grid), crop_offset(config, grid) + grid)
    return _rows(config, idx, idx).unsqueeze(0)


def crop_table(table: torch.Tensor, config: DiT4SRConfig, grid: int) -> torch.Tensor:
    """The central ``grid x grid`` crop of a full (1, P * P, D) table."""
    check_crop(config, grid)
    full, top = config.pos_embed_max_size, crop_offset(config, grid)
    square = table.reshape(1, full, full, -1)[:, top:top + grid, top:top + grid, :]
    return square.reshape(1, grid * grid, -1)


def crop_spans(config: DiT4SRConfig, grid: int) -> list[tuple[int, int]]:
    """(start, stop) token spans of the full table that make up the crop, one per grid row."""
    check_crop(config, grid)
    full, top = config.pos_embed_max_size, crop_offset(config, grid)
    return [(i * full + top, i * full + top + grid) for i in range(top, top + grid)]


def max_grid(config: DiT4SRConfig, max_latent: int | None) -> int:
    """Patches per side an engine set built for latents up to ``max_latent`` needs (None: the whole table)."""
    full = config.pos_embed_max_size
    if max_latent is None:
        return full
    p = config.patch_size
    if max_latent < p or max_latent % p:
        raise UserError(f"--max-latent-side {max_latent} must be a positive multiple of the patch size {p}")
    grid = max_latent // p
    if grid > full:
        raise UserError(f"--max-latent-side {max_latent} is larger than the model's positional table allows "
                        f"({full * p})")
    if (full - grid) % 2:
        raise UserError(f"--max-latent-side {max_latent} must be a multiple of {2 * p} (the crop keeps the table's parity)")
    return grid
