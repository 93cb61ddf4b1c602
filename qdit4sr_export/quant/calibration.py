"""Calibration inputs for VaTMP and the activation statistics v(l, t) collected along a sampling trajectory.

Inputs come from a prepared file (``.safetensors``/``.pt`` with ``lr_latent`` and optionally
``encoder_hidden_states`` / ``pooled_projections``) or from a folder of LR images encoded by the model's
autoencoder (see :mod:`qdit4sr_export.quant.calib_images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.sampling import flow_schedule, start_index

#: Text tokens used when a calibration file carries no prompt embeddings (a zero "null" prompt).
NULL_TEXT_TOKENS = 1


@dataclass
class CalibrationInputs:
    """Model inputs for calibration: one LR latent per sample and its text conditioning."""

    lr_latent: torch.Tensor  # (n, C, H, W)
    encoder_hidden_states: torch.Tensor  # (n, L, joint_attention_dim)
    pooled_projections: torch.Tensor  # (n, pooled_projection_dim)

    def __len__(self) -> int:
        return self.lr_latent.shape[0]

    def check(self, config: DiT4SRConfig, source: str) -> None:
        lat = tuple(self.lr_latent.shape)
        if len(lat) != 4 or lat[1] != config.in_channels or lat[2] != lat[3]:
            raise UserError(f"{source}: lr_latent must be (n, {config.in_channels}, s, s) with square s, got {lat}")
        n = lat[0]
        if tuple(self.encoder_hidden_states.shape[::2]) != (n, config.joint_attention_dim):
            raise UserError(
                f"{source}: encoder_hidden_states must be ({n}, tokens, {config.joint_attention_dim}), "
                f"got {tuple(self.encoder_hidden_states.shape)}"
            )
        if tuple(self.pooled_projections.shape) != (n, config.pooled_projection_dim):
            raise UserError(
                f"{source}: pooled_projections must be ({n}, {config.pooled_projection_dim}), "
                f"got {tuple(self.pooled_projections.shape)}"
            )

    @classmethod
    def with_null_prompt(cls, lr_latent: torch.Tensor, config: DiT4SRConfig) -> "CalibrationInputs":
        n = lr_latent.shape[0]
        return cls(
            lr_latent.float(),
            torch.zeros(n, NULL_TEXT_TOKENS, config.joint_attention_dim),
            torch.zeros(n, config.pooled_projection_dim),
        )


def load_calibration_file(path: str | Path, config: DiT4SRConfig) -> CalibrationInputs:
    """Read prepared latents; missing prompt embeddings become a zero null prompt."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"calibration file not found: {path}") from None
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable calibration file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "lr_latent" not in data:
        raise UserError(f"{path}: calibration file must hold a tensor 'lr_latent' (n, C, s, s)")
    inputs = CalibrationInputs.with_null_prompt(data["lr_latent"], config)
    if "encoder_hidden_states" in data:
        inputs.encoder_hidden_states = data["encoder_hidden_states"].float()
    if "pooled_projections" in data:
        inputs.pooled_projections = data["pooled_projections"].float()
    inputs.check(config, str(path))
    return inputs


def run_trajectory(
    model: nn.Module,
    inputs: CalibrationInputs,
    *,
    steps: int,
    shift: float = 3.0,
    seed: int = 0,
    batch_size: int = 8,
    start_sigma: float | None = None,
    progress: bool = False,
    on_step: Callable[[int, tuple[torch.Tensor, ...]], None] | None = None,
) -> torch.Tensor:
    """Sample every calibration input with flow-matching Euler and return the final latents.

    ``on_step(step, model_args)`` sees the model's inputs ``(x_t, lr, text, pooled, t)`` before each step.
    The trajectory starts from seeded noise, or, with ``start_sigma``, as the SR pipeline does: at the first
    grid step with sigma <= start_sigma, from ``(1 - sigma) * lr + sigma * noise`` (earlier steps do not run).
    It follows the model's own predictions, as inference does.
    """
    timesteps, sigmas = flow_schedule(steps, shift=shift)
    first = 0 if start_sigma is None else start_index(sigmas, start_sigma)
    generator = torch.Generator().manual_seed(seed)
    finals = []
    batches = range(0, len(inputs), batch_size)
    bar = tqdm(total=len(batches) * (steps - first), desc="calibration", disable=not progress, leave=False)
    for start in batches:
        sl = slice(start, start + batch_size)
        lr = inputs.lr_latent[sl]
        ctx, pooled = inputs.encoder_hidden_states[sl], inputs.pooled_projections[sl]
        noise = torch.randn(lr.shape, generator=generator)
        x = noise if start_sigma is None else (1 - sigmas[first]) * lr + sigmas[first] * noise
        for i in range(first, steps):
            args = (x, lr, ctx, pooled, timesteps[i].expand(lr.shape[0]))
            if on_step is not None:
                on_step(i, args)
            with torch.no_grad():
                v = model(*args)
            x = x + (sigmas[i + 1] - sigmas[i]) * v
            bar.update(1)
        finals.append(x)
    bar.close()
    return torch.cat(finals)


def trace_layer_inputs(
    model: nn.Module,
    layer_names: list[str],
    inputs: CalibrationInputs,
    observe: Callable[[int, int, torch.Tensor], None],
    *,
    steps: int,
    **kwargs,
) -> None:
    """Run :func:`run_trajectory` and call ``observe(layer_index, step, x)`` with each named layer's input."""
    modules = dict(model.named_modules())
    current = {"step": 0}

    def hook(index: int):
        def record(module, args):
            observe(index, current["step"], args[0].detach())
        return record

    handles = [modules[name].register_forward_pre_hook(hook(i)) for i, name in enumerate(layer_names)]
    try:
        run_trajectory(model, inputs, steps=steps, on_step=lambda i, _: current.__setitem__("step", i), **kwargs)
    finally:
        for h in handles:
            h.remove()


def collect_activation_variance(model: nn.Module, layer_names: list[str], inputs: CalibrationInputs, *,
                                steps: int, **kwargs) -> np.ndarray:
    """v(l, t) of Eq. 17 for each named layer's input at each of ``steps`` Euler steps, shape (L, T).

    The Hadamard rotation is orthonormal, so the mean squared value of the rotated activation equals that
    of the input: no rotation is needed here. Layers never called get NaN.
    """
    sums = np.zeros((len(layer_names), steps))
    counts = np.zeros((len(layer_names), steps))

    def observe(index: int, step: int, x: torch.Tensor) -> None:
        sums[index, step] += float(x.double().pow(2).sum())
        counts[index, step] += x.numel()

    trace_layer_inputs(model, layer_names, inputs, observe, steps=steps, **kwargs)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def collect_input_samples(model: nn.Module, layer_names: list[str], inputs: CalibrationInputs, *, steps: int,
                          rows_per_step: int = 64, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    """Up to ``rows_per_step`` seeded random input rows (tokens) of each layer per step and batch,
    concatenated: what searches that score a layer's output error (SVDQuant's smoothing) need."""
    rows: dict[int, list[torch.Tensor]] = {}
    g = torch.Generator().manual_seed(seed + 1)

    def observe(index: int, step: int, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        pick = torch.randperm(flat.shape[0], generator=g)[:rows_per_step]
        rows.setdefault(index, []).append(flat[pick])

    trace_layer_inputs(model, layer_names, inputs, observe, steps=steps, seed=seed, **kwargs)
    return {layer_names[i]: torch.cat(parts) for i, parts in rows.items()}


def collect_channel_absmax(model: nn.Module, layer_names: list[str], inputs: CalibrationInputs, *, steps: int,
                           **kwargs) -> dict[str, torch.Tensor]:
    """Per layer, the max |x| of each input channel at each step, shape (T, C) (PTQ4DiT's salience s_k(X))."""
    out: dict[int, torch.Tensor] = {}

    def observe(index: int, step: int, x: torch.Tensor) -> None:
        m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        table = out.setdefault(index, torch.zeros(steps, x.shape[-1]))
        table[step] = torch.maximum(table[step], m)

    trace_layer_inputs(model, layer_names, inputs, observe, steps=steps, **kwargs)
    return {layer_names[i]: t for i, t in out.items()}


def collect_hessians(model: nn.Module, layer_names: list[str], inputs: CalibrationInputs, *, steps: int,
                     transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                     step_weights: np.ndarray | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """GPTQ Hessians of each layer's (transformed) input over the trajectory: H = sum_t w_t 2 X_t^T X_t /
    sum_t w_t n_t, with w_t = ``step_weights[t]`` (AdaTSQ's Fisher weights) or 1."""
    from qdit4sr_export.quant.gptq import HessianAccumulator

    transforms = transforms or {}
    accumulators: dict[int, HessianAccumulator] = {}

    def observe(index: int, step: int, x: torch.Tensor) -> None:
        name = layer_names[index]
        z = transforms[name](x) if name in transforms else x
        acc = accumulators.setdefault(index, HessianAccumulator(z.shape[-1]))
        acc.add(z, 1.0 if step_weights is None else float(step_weights[step]))

    trace_layer_inputs(model, layer_names, inputs, observe, steps=steps, **kwargs)
    return {layer_names[i]: acc.hessian() for i, acc in accumulators.items()}
