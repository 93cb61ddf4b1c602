"""DiT4SR's feed-forward with the cross-stream depthwise convolution (information flows LR -> x only)."""

from __future__ import annotations

import math

import torch
from diffusers.models.activations import GELU
from torch import nn

from qdit4sr_export.errors import UserError


class ControlFeedForward(nn.Module):
    """``net.0`` (Linear + tanh-GELU), split into x/LR halves, ``x += scale * control_conv(LR)``, shared ``net.2``.

    The LR half is reshaped to a square ``sqrt(N) x sqrt(N)`` grid for the depthwise 3x3 convolution,
    so every forward pass needs a square token grid (non-square images must be tiled).
    """

    def __init__(self, dim: int, *, mult: int = 4, control_scale: float) -> None:
        super().__init__()
        inner = dim * mult
        self.control_scale = float(control_scale)
        self.net = nn.ModuleList([GELU(dim, inner, approximate="tanh"), nn.Dropout(0.0), nn.Linear(inner, dim)])
        self.control_conv = nn.Conv2d(inner, inner, kernel_size=3, stride=1, padding=1, groups=inner)

    def forward(self, hidden_states: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``grid`` is the (h, w) patch grid; the transformer passes it from the latent's shape so tracing keeps
        the spatial size symbolic. Without it a square grid is inferred from the token count."""
        hidden = self.net[1](self.net[0](hidden_states))
        x, lr = hidden.chunk(2, dim=1)
        b, n, c = x.shape
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise UserError(f"the cross-stream convolution needs a square token grid, got {n} tokens per stream")
            grid = (side, side)
        lr_grid = lr.reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
        control = self.control_conv(lr_grid).reshape(b, c, n).permute(0, 2, 1)
        x = x + self.control_scale * control
        return self.net[2](torch.cat([x, lr], dim=1))
