"""GPTQ on the transformed residual: the option ``gptq=true`` of qdit4sr, quarot and svdquant.

A planned layer computes ``Q(W_res) Q_G(z) + W_fp z`` with ``z = (x / s) R`` (smoothing, then rotation) and
``W_res`` the weight ``(W s) R`` less its FP branch (H-SVD, or SVDQuant's low-rank branch). GPTQ rounds ``W_res``
column by column against ``H = 2 Z^T Z / N``, the Hessian of ``z`` itself: each layer's calibration inputs are
smoothed and rotated by the simulation's own operations as they are accumulated (after the plan chose its
smoothing), so no ``n x n`` matrix is ever rotated.
The codes land on the layer's own grid (per row, or per group of ``group_size`` input channels) with the
Gaussian-optimal clip of the group's current weights as its scale, and are stored in the plan as int8 codes
(``<layer>.weight.<bits>``) with float32 scales (``<layer>.weight_scale.<bits>``): the simulation, every lowering
and every backend read them as they read any integer-grid weight.

Directions of ``z`` calibration never excited (a zero diagonal of ``H_z``; all of them for a layer whose inputs
were all zero) are rounded to nearest, with no error fed to or from them, and the Hessian is damped by ``damp``
times its mean diagonal (by ``damp`` when that is zero), so a singular Hessian never reaches a Cholesky factor.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.checks import is_int, is_real
from qdit4sr_export.quant.layer_plan import LayerPlan

if TYPE_CHECKING:  # configs import this module for check_options: torch only inside the functions
    import torch

#: GPTQ's lazy-batch width (the result does not depend on it; see gptq.py).
BLOCK_SIZE = 128
#: The scale estimator of GPTQ's groups: the Gaussian-optimal clip of the group's current weights.
CLIP = "gaussian"


def check_options(method: str, gptq: object, damp: object, act_order: object, samples: object) -> None:
    """One-line errors for bad ``gptq``, ``damp``, ``act_order`` and ``gptq_samples`` values of a method's config."""
    if not isinstance(gptq, bool) or not isinstance(act_order, bool):
        raise UserError(f"{method}: gptq and act_order must be true or false, got {gptq!r} and {act_order!r}")
    if not is_real(damp) or not 0 < damp <= 1:
        raise UserError(f"{method}: damp must be a number in (0, 1] (a fraction of the Hessian's mean diagonal), "
                        f"got {damp!r}")
    if not is_int(samples) or samples < 0:
        raise UserError(f"{method}: gptq_samples must be an integer >= 0 (0: every calibration sample), got "
                        f"{samples!r}")


def require_calibration(method: str, calibration: object) -> None:
    """``gptq=true`` without calibration data is a one-line error naming --calib."""
    if calibration is None:
        raise UserError(f"{method} gptq=true computes each layer's Hessian on calibration data: pass --calib (LR "
                        "photos or a latents file), or leave gptq off")


def input_transform(plan: LayerPlan, name: str,
                    tensors: Mapping[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``x -> z = (x / s) R``, what the planned layer quantizes and multiplies (the simulation's own operations), or
    None for a layer with neither smoothing nor rotation."""
    from qdit4sr_export.quant.simulate import make_rotation

    smooth = tensors[f"{name}.smooth"] if plan.smoothing else None
    rotation = make_rotation(plan.rotation, name, tensors)
    if smooth is None and rotation is None:
        return None

    def transform(x: torch.Tensor) -> torch.Tensor:
        z = x / smooth.to(x.dtype) if smooth is not None else x
        return rotation.apply(z) if rotation is not None else z
    return transform


def shared_transforms(plans: Mapping[str, LayerPlan], names: Sequence[str],
                      tensors: Mapping[str, torch.Tensor]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """:func:`input_transform` of each layer, one function object for all unsmoothed layers with the same rotation
    (so the Hessian statistic computes a shared input's transform and Gram product once)."""
    import json

    out, shared = {}, {}
    for name in names:
        plan = plans[name]
        hadamard = (plan.rotation or {}).get("kind", "hadamard") == "hadamard"
        key = json.dumps(plan.rotation, sort_keys=True) if hadamard and not plan.smoothing else None
        if key is not None and key in shared:
            out[name] = shared[key]
            continue
        transform = input_transform(plan, name, tensors)
        if transform is not None:
            out[name] = transform
            if key is not None:
                shared[key] = transform
    return out


def quantize_layer(weight: torch.Tensor, plan: LayerPlan, name: str, tensors: Mapping[str, torch.Tensor],
                   hessian: torch.Tensor, *, damp: float, act_order: bool) -> dict[str, torch.Tensor]:
    """The plan tensors of one layer's GPTQ residual at each of its weight bit-widths: int8 codes and float32 scales.

    ``hessian`` is that of the transformed input ``z`` (:func:`input_transform`); ``tensors`` holds the plan's other
    tensors (the layer's smoothing vector, when it is smoothed)."""
    from qdit4sr_export.quant.gptq import gptq_quantize
    from qdit4sr_export.quant.simulate import split_weight

    _, _, _, residual = split_weight(weight, plan, name, tensors)
    out = {}
    for bits in plan.distinct_weight_bits():
        q = gptq_quantize(residual, hessian, bits, group_size=plan.group_size, clip=CLIP, block_size=BLOCK_SIZE,
                          damp=damp, act_order=act_order, zero_dead=False)
        out[f"{name}.weight.{bits}"] = q.codes
        out[f"{name}.weight_scale.{bits}"] = q.scales
    return out


def run_gptq(model, calls, plans: Mapping[str, LayerPlan], weight_of: Callable[[str], torch.Tensor],
             tensors: Mapping[str, torch.Tensor], *, config, steps_run: int, layers: Sequence[str] | None = None,
             source: str, progress: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """GPTQ every layer of ``plans`` (or of ``layers``) that ran on the recorded trajectory ``calls`` (see
    :mod:`~qdit4sr_export.quant.hessian_pass`), block by block, on the first ``config.gptq_samples`` samples (the
    trajectory's ``steps_run`` calls per batch), with the config's ``damp`` and ``act_order``; returns the new plan
    tensors and a note for the plan (``source`` says which pass the trajectory was recorded on). Layers that never
    ran keep RTN weights."""
    from qdit4sr_export.quant.hessian_pass import block_hessians, first_samples

    damp, act_order = config.damp, config.act_order
    calls = first_samples(calls, config.gptq_samples, steps_run)
    wanted = list(layers if layers is not None else plans)
    found: dict[str, torch.Tensor] = {}

    def on_block(hessians: dict[str, torch.Tensor]) -> None:
        for name, h in hessians.items():
            found.update(quantize_layer(weight_of(name), plans[name], name, tensors, h, damp=damp,
                                        act_order=act_order))

    block_hessians(model, calls, wanted, on_block, transforms=shared_transforms(plans, wanted, tensors),
                   progress=progress)
    done = {k.rsplit(".weight.", 1)[0] for k in found if ".weight." in k}
    samples = sum(int(c[0].shape[0]) for c in calls) // max(steps_run, 1)
    note = (f"GPTQ on {len(done)} of {len(wanted)} layer(s) (damping {damp}, act-order {'on' if act_order else 'off'}, "
            f"Gaussian-clip scales; Hessians of the transformed inputs on {samples} calibration sample(s) x "
            f"{steps_run} step(s) of the trajectory recorded on {source})")
    if len(done) < len(wanted):
        note += f"; {len(wanted) - len(done)} layer(s) never ran there and keep round-to-nearest weights"
    return found, note


def stored(plans: Mapping[str, LayerPlan], tensors: Mapping[str, torch.Tensor]) -> dict[str, LayerPlan]:
    """``plans`` with ``stored_weight`` set on every layer whose GPTQ codes are in ``tensors``."""
    return {n: dataclasses.replace(lp, stored_weight=True) if any(f"{n}.weight.{b}" in tensors
                                                                   for b in lp.distinct_weight_bits()) else lp
            for n, lp in plans.items()}
