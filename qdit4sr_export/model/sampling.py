"""The DiT4SR sampling grid: flow-matching Euler (diffusers' scheduler, shift 3.0, 1000 train steps).

torch and diffusers load when a function needs them, so the CLI can read the defaults without them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from qdit4sr_export.errors import UserError

if TYPE_CHECKING:
    import torch

DEFAULT_SHIFT = 3.0
DEFAULT_STEPS = 40
NUM_TRAIN_TIMESTEPS = 1000


def flow_schedule(steps: int, *, shift: float = DEFAULT_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [steps], sigmas [steps + 1]) exactly as the official pipeline's scheduler produces them."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--grid-steps must be a positive integer, got {steps!r}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.to(torch.float32).clone(), scheduler.sigmas.to(torch.float32).clone()


def start_index(sigmas: torch.Tensor, start_sigma: float) -> int:
    """First index i of the schedule with ``sigmas[i] <= start_sigma`` (diffusers' img2img start)."""
    if not 0.0 < float(start_sigma) <= 1.0:
        raise UserError(f"--start-sigma must be in (0, 1], got {start_sigma!r}")
    steps = len(sigmas) - 1
    for i in range(steps):
        if float(sigmas[i]) <= float(start_sigma) + 1e-6:
            return i
    return steps - 1


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, float], torch.Tensor],
    lr_latent: torch.Tensor,
    *,
    steps: int,
    shift: float = DEFAULT_SHIFT,
    start_sigma: float = 1.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Flow-matching Euler from ``(1 - s) * lr_latent + s * noise`` (s = first schedule sigma <= start_sigma) to 0."""
    import torch

    timesteps, sigmas = flow_schedule(steps, shift=shift)
    first = start_index(sigmas, start_sigma)
    noise = torch.randn(lr_latent.shape, generator=generator, dtype=torch.float32,
                        device=generator.device if generator is not None else "cpu")
    noise = noise.to(lr_latent.device)
    sigma0 = float(sigmas[first])
    x = (1.0 - sigma0) * lr_latent.float() + sigma0 * noise
    for i in range(first, steps):
        t = float(timesteps[i])
        if on_step is not None:
            on_step(i, t)
        v = velocity_fn(x, t).float()
        x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v
    return x
