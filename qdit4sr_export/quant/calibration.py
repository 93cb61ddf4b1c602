"""Calibration inputs and the statistics every method collects along one sampling trajectory.

Inputs come from a prepared file (``.safetensors``/``.pt`` with ``lr_latent`` and optionally
``encoder_hidden_states`` / ``pooled_projections``) or from a folder of LR images encoded by the model's
autoencoder (see :mod:`qdit4sr_export.quant.calib_images`).

The trajectory is the SR pipeline's own (its grid, start sigma and seeded noise; see :func:`run_trajectory`);
a method that needs several statistics of layer inputs (activation variance, sampled rows, channel maxima,
GPTQ Hessians) gets them from one pass with :func:`collect`, under ``torch.inference_mode``, in batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.model.sampling import flow_schedule, start_index
from qdit4sr_export.quant.gptq import HessianAccumulator
from qdit4sr_export.report.progress import progress_bar

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

    def head(self, n: int) -> "CalibrationInputs":
        """The first ``n`` samples (all of them when there are fewer): with the trajectory's batches of 8 and one
        seeded noise stream, their statistics are exactly the first ``n`` samples' of a full pass."""
        return CalibrationInputs(self.lr_latent[:n], self.encoder_hidden_states[:n], self.pooled_projections[:n])

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

    ``on_step(step, model_args)`` sees the model's inputs ``(x_t, lr, text, pooled, t)`` before each step, batch
    by batch (all steps of one batch, then the next). The trajectory starts from seeded noise, or, with
    ``start_sigma``, as the SR pipeline does: at the first grid step with sigma <= start_sigma, from
    ``(1 - sigma) * lr + sigma * noise`` (earlier steps do not run). It follows the model's own predictions, as
    inference does, under ``torch.inference_mode`` (tensors it hands out are inference tensors).
    """
    timesteps, sigmas = flow_schedule(steps, shift=shift)
    first = 0 if start_sigma is None else start_index(sigmas, start_sigma)
    generator = torch.Generator().manual_seed(seed)
    finals = []
    batches = range(0, len(inputs), batch_size)
    bar = progress_bar(total=len(batches) * (steps - first), desc="calibration", unit="step", enabled=progress,
               leave=False)
    with torch.inference_mode():
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
                x = x + (sigmas[i + 1] - sigmas[i]) * model(*args)
                bar.update(1)
            finals.append(x)
    bar.close()
    return torch.cat(finals)


class Statistic(ABC):
    """A statistic of some layers' inputs along the trajectory: ``observe`` sees each call, ``result`` sums up."""

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = list(layers)

    @abstractmethod
    def observe(self, index: int, step: int, x: torch.Tensor) -> None:
        """Take one call's input ``x`` of sample batch ``index`` at ``step``."""

    @abstractmethod
    def result(self):
        """The statistic over every call observed."""


class ActivationVariance(Statistic):
    """v(l, t) of Eq. 17: the mean square of each layer's input at each grid step, shape (L, steps).

    The Hadamard rotation is orthonormal, so the mean squared value of the rotated activation equals that
    of the input: no rotation is needed here. Layers never called, and steps that do not run, get NaN."""

    def __init__(self, layers: Sequence[str], steps: int) -> None:
        super().__init__(layers)
        self.sums = np.zeros((len(self.layers), steps))
        self.counts = np.zeros((len(self.layers), steps))

    def observe(self, index: int, step: int, x: torch.Tensor) -> None:
        self.sums[index, step] += float(x.double().pow(2).sum())
        self.counts[index, step] += x.numel()

    def result(self) -> np.ndarray:
        return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)


class InputSamples(Statistic):
    """Up to ``rows_per_step`` seeded random input rows (tokens) of each layer per step and batch, concatenated:
    what searches that score a layer's output error (SVDQuant's smoothing) need."""

    def __init__(self, layers: Sequence[str], rows_per_step: int = 64, seed: int = 0) -> None:
        super().__init__(layers)
        self.rows_per_step = rows_per_step
        self.rows: dict[int, list[torch.Tensor]] = {}
        self.generator = torch.Generator().manual_seed(seed + 1)

    def observe(self, index: int, step: int, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        pick = torch.randperm(flat.shape[0], generator=self.generator)[:self.rows_per_step]
        self.rows.setdefault(index, []).append(flat[pick])

    def result(self) -> dict[str, torch.Tensor]:
        return {self.layers[i]: torch.cat(parts) for i, parts in self.rows.items()}


class ChannelAbsMax(Statistic):
    """Per layer, the max |x| of each input channel at each step that ran, shape (steps run, C) (PTQ4DiT's
    salience s_k(X))."""

    def __init__(self, layers: Sequence[str], steps: int) -> None:
        super().__init__(layers)
        self.steps = steps
        self.tables: dict[int, torch.Tensor] = {}
        self.seen: set[int] = set()

    def observe(self, index: int, step: int, x: torch.Tensor) -> None:
        m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        table = self.tables.setdefault(index, torch.zeros(self.steps, x.shape[-1]))
        table[step] = torch.maximum(table[step], m)
        self.seen.add(step)

    def result(self) -> dict[str, torch.Tensor]:
        ran = sorted(self.seen)
        return {self.layers[i]: t[ran].clone() for i, t in self.tables.items()}


class Hessians(Statistic):
    """GPTQ Hessians of each layer's (transformed) input over the trajectory: H = sum_t w_t 2 X_t^T X_t /
    sum_t w_t n_t, with w_t = ``step_weights[t]`` (or :attr:`weight`, settable per step; default 1).

    Layers called one after the other on the same input with the same transform (the same function object; a
    block's q, k and v projections) share one transform and one Gram product: the previous call's input is kept
    and compared (``torch.equal``), so sharing never depends on where tensors happen to live."""

    def __init__(self, layers: Sequence[str], transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 step_weights: Sequence[float] | None = None) -> None:
        super().__init__(layers)
        self.transforms = transforms or {}
        self.step_weights = step_weights
        self.weight = 1.0
        self.accumulators: dict[int, HessianAccumulator] = {}
        self._last: tuple | None = None  # (input, transform, (gram, rows)) of the previous call

    def observe(self, index: int, step: int, x: torch.Tensor) -> None:
        transform = self.transforms.get(self.layers[index])
        last = self._last
        if last is not None and last[1] is transform and last[0].shape == x.shape and torch.equal(last[0], x):
            gram = last[2]
        else:
            z = transform(x) if transform is not None else x
            gram = HessianAccumulator(z.shape[-1]).gram(z)
            self._last = (x, transform, gram)
        if gram is None:
            return
        acc = self.accumulators.setdefault(index, HessianAccumulator(gram[0].shape[0]))
        acc.add_gram(*gram, weight=self.weight if self.step_weights is None else float(self.step_weights[step]))

    def result(self) -> dict[str, torch.Tensor]:
        return {self.layers[i]: acc.hessian() for i, acc in self.accumulators.items()}


@contextmanager
def watching(model: nn.Module, statistics: Sequence[Statistic]) -> Iterator[dict[str, int]]:
    """Hooks every layer some statistic watches (one hook per layer, whatever the number of statistics); yields
    the step holder: set ``holder["step"]`` before each forward call."""
    modules = dict(model.named_modules())
    current = {"step": 0}
    watchers: dict[str, list[tuple[Statistic, int]]] = {}
    for stat in statistics:
        for index, name in enumerate(stat.layers):
            watchers.setdefault(name, []).append((stat, index))

    def hook(name: str):
        targets = watchers[name]

        def record(module, args):
            x = args[0].detach()
            for stat, index in targets:
                stat.observe(index, current["step"], x)
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in watchers]
    try:
        yield current
    finally:
        for h in handles:
            h.remove()


def collect(model: nn.Module, inputs: CalibrationInputs, statistics: Sequence[Statistic], *, steps: int,
            on_step: Callable[[int, tuple[torch.Tensor, ...]], None] | None = None, **kwargs) -> torch.Tensor:
    """One :func:`run_trajectory` pass feeding every statistic; returns the final latents."""
    with watching(model, statistics) as current:
        def step(i: int, args: tuple[torch.Tensor, ...]) -> None:
            current["step"] = i
            if on_step is not None:
                on_step(i, args)
        return run_trajectory(model, inputs, steps=steps, on_step=step, **kwargs)


def collect_activation_variance(model: nn.Module, layer_names: list[str], inputs: CalibrationInputs, *,
                                steps: int, **kwargs) -> np.ndarray:
    """:class:`ActivationVariance` of the named layers over one trajectory pass, shape (L, steps)."""
    stat = ActivationVariance(layer_names, steps)
    collect(model, inputs, [stat], steps=steps, **kwargs)
    return stat.result()
