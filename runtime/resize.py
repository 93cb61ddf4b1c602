"""DiT4SR's resize rules: LR short side up to at least ``min_side``, bicubic x``upscale``, output exactly
``upscale`` times the input. Resampling is PIL's bicubic on float planes (the training data used PIL bicubic).

The smallest input: an image whose short side is below ``min_side / upscale`` would be stretched by bicubic more
than the model's own factor before the model sees it (a 1x1 input becomes a flat square), so it is refused."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ResizePlan:
    """Sizes as (width, height): the input, the bicubic-upscaled model input, and the final output."""

    lr_size: tuple[int, int]
    model_size: tuple[int, int]
    output_size: tuple[int, int]
    pre_scale: float


def plan_resize(width: int, height: int, *, upscale: int = 4, min_side: int = 128) -> ResizePlan:
    """Scale so the short side is at least ``min_side`` (as DiT4SR does), then x``upscale``."""
    pre = max(1.0, min_side / min(width, height))
    lr_w, lr_h = round(width * pre), round(height * pre)
    return ResizePlan((width, height), (lr_w * upscale, lr_h * upscale), (width * upscale, height * upscale), pre)


def min_input_side(*, upscale: int = 4, min_side: int = 128) -> int:
    """The shortest input side the resize rule takes without stretching the image more than ``upscale`` times
    before the model (``ceil(min_side / upscale)``: 32 pixels for DiT4SR's 128 and x4)."""
    return max(1, math.ceil(min_side / upscale))


def check_input_size(width: int, height: int, *, upscale: int = 4, min_side: int = 128) -> None:
    """A one-line error for an input below :func:`min_input_side`, naming the rule."""
    smallest = min_input_side(upscale=upscale, min_side=min_side)
    if min(width, height) < smallest:
        from qdit4sr_export.errors import UserError

        raise UserError(f"{width}x{height} is too small: this model takes inputs of at least {smallest} pixels on the "
                        f"short side (its resize rule scales the short side to {min_side} before the x{upscale} "
                        f"model; a smaller image would be stretched more than {upscale}x by bicubic first)")


def resize_planes(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic resize of (C, H, W) float planes to (C, height, width); unchanged when the size already matches."""
    if image.shape[-1] == width and image.shape[-2] == height:
        return image
    planes = [np.asarray(Image.fromarray(p.numpy().astype(np.float32), mode="F")
                         .resize((width, height), Image.Resampling.BICUBIC)) for p in image.float()]
    return torch.from_numpy(np.stack(planes))


def upscale_lr(rgb: torch.Tensor, plan: ResizePlan) -> torch.Tensor:
    """The model's input image: (3, H, W) in [0, 1] bicubic-resized to ``plan.model_size``, clipped to [0, 1]."""
    return resize_planes(rgb, *plan.model_size).clamp(0, 1)


def to_output_size(image: torch.Tensor, plan: ResizePlan) -> torch.Tensor:
    """Resize the model's output (C, h, w) to exactly ``plan.output_size``, clipped to [0, 1]."""
    return resize_planes(image, *plan.output_size).clamp(0, 1)
