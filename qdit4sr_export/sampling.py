"""The DiT4SR sampling grid: flow-matching Euler (diffusers' scheduler, shift 3.0, 1000 train steps)."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from qdit4sr_export.errors import UserError

DEFAULT_SHIFT = 3.0
DEFAULT_STEPS = 40
NUM_TRAIN_TIMESTEPS = 1000


def flow_schedule(steps: int, *, shift: float = DEFAULT_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [steps], sigmas [steps + 1]) exactly as the official pipeline's scheduler produces them."""
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be a positive integer, got {steps!r}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.to(torch.float32).clone(), scheduler.sigmas.to(torch.float32).clone()
