"""The Q-DiT4SR method: Hadamard rotation, H-SVD, VaSMP weight bits and VaTMP activation-bit schedules -> QuantPlan."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.checks import check_bits
from qdit4sr_export.quant.methods.registry import register
from qdit4sr_export.sampling import DEFAULT_SHIFT, DEFAULT_STEPS

if TYPE_CHECKING:
    import torch

    from qdit4sr_export.model.transformer import DiT4SRTransformer
    from qdit4sr_export.quant.calibration import CalibrationInputs
    from qdit4sr_export.quant.hadamard import Rotation
    from qdit4sr_export.quant.methods.common import PlanContext
    from qdit4sr_export.quant.plan import QuantPlan

#: Layers whose output never reaches the model output: attn2's text projections and to_k_control.
_INACTIVE = re.compile(r"(\.attn2\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)|\.to_k_control)$")
ACT_BITS = (2, 3, 4, 5, 6, 7, 8)


def is_active(name: str) -> bool:
    """Whether a layer participates in the forward computation (the paper's active set for VaSMP/VaTMP)."""
    return _INACTIVE.search(name) is None


@dataclass(frozen=True)
class QDiT4SRConfig:
    """Options of the Q-DiT4SR method. ``wbits=None`` means VaSMP at ``wbits_budget``; ``local_rank=0``
    drops SVD-L (plain SVD-G, the paper's baseline); VaTMP runs only when calibration inputs are given."""

    version: int = 1
    wbits: int | None = None
    wbits_budget: float = 4.0
    wbits_min: int | None = None
    wbits_max: int | None = None
    abits: float = 4.0
    svd_rank: int = 32
    local_rank: int = 8
    vatmp: bool = True
    max_segments: int | None = 3
    rotation_seed: int | None = 0  # random Hadamard signs (None: plain Hadamard); see README
    rotation_block: int | None = None  # block-diagonal Hadamard of this power-of-two size (None: full K * 2^m)
    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT
    # The pipeline's start sigma: runs from the LR latent skip the steps above it, so VaTMP calibrates and
    # budgets only the steps that run; skipped steps keep static floor(abits) bits.
    start_sigma: float = 1.0
    calib_seed: int = 0

    def __post_init__(self) -> None:
        if self.wbits is not None:
            check_bits(self.wbits, "--wbits")
        elif not 2 <= self.wbits_budget <= 8:
            raise UserError(f"--wbits-budget must be in 2..8, got {self.wbits_budget}")
        if not 2 <= self.abits <= 8:
            raise UserError(f"--abits must be in 2..8, got {self.abits}")
        if self.svd_rank < 0 or self.local_rank < 0:
            raise UserError(f"--svd-rank and --local-rank must be >= 0, got {self.svd_rank} and {self.local_rank}")
        if self.max_segments is not None and self.max_segments < 1:
            raise UserError(f"--max-segments must be >= 1, got {self.max_segments}")
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if not 0 < self.start_sigma <= 1:
            raise UserError(f"--start-sigma must be in (0, 1], got {self.start_sigma}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _layer_variance(ctx: PlanContext, name: str, rotation: Rotation) -> float:
    """Average output-channel variance of the Hadamard-domain weight W_H = W R (VaSMP's statistic)."""
    return float(rotation.apply(ctx.weight(name)).var(dim=1, unbiased=False).mean())


def make_plan(
    model: DiT4SRTransformer,
    config: QDiT4SRConfig,
    *,
    calibration: CalibrationInputs | None = None,
    progress: bool = False,
) -> QuantPlan:
    """Build a Q-DiT4SR plan. With an integer ``wbits`` and no calibration, only shapes are used (meta ok)."""
    import numpy as np
    from tqdm import tqdm

    from qdit4sr_export.model.weights import lazy_copy
    from qdit4sr_export.quant.calibration import collect_activation_variance
    from qdit4sr_export.quant.gaussian import kappa_table
    from qdit4sr_export.quant.hsvd import select_block
    from qdit4sr_export.quant.methods.common import PlanContext, check_rank, hadamard_rotations, trajectory
    from qdit4sr_export.quant.plan import LayerPlan
    from qdit4sr_export.quant.simulate import apply_plan
    from qdit4sr_export.quant.vasmp import allocate_weight_bits
    from qdit4sr_export.quant.vatmp import schedule_layers

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    linears = ctx.linears
    check_rank(linears, config.svd_rank)
    names = list(linears)
    on_meta = ctx.on_meta
    rotations = hadamard_rotations(linears, seed=config.rotation_seed, block=config.rotation_block)
    notes = []

    active = [n for n in names if is_active(n)]
    weight_var: dict[str, float] = {}
    act_var: dict[str, tuple[float, ...]] = {}
    if config.wbits is not None:
        wbits = {n: config.wbits for n in names}
    else:
        if on_meta:
            raise UserError("--wbits auto (VaSMP) reads the weights: give a checkpoint, or an integer --wbits "
                            "for shape-only accounting")
        variances = [_layer_variance(ctx, n, rotations[n]) for n in
                     tqdm(active, desc="VaSMP layer statistics", unit="layer", disable=None if progress else True)]
        weight_var = dict(zip(active, variances))
        sizes = [linears[n][0] * linears[n][1] for n in active]
        bits = allocate_weight_bits(variances, sizes, budget=config.wbits_budget, kappa=kappa_table("integer"),
                                    b_min=config.wbits_min, b_max=config.wbits_max)
        wbits = dict(zip(active, bits))
        fill = int(round(config.wbits_budget))
        wbits.update({n: fill for n in names if n not in wbits})

    steps = ctx.steps
    blocks = {
        n: select_block(out, inp, config.local_rank) if config.local_rank > 0 else None
        for n, (out, inp) in linears.items()
    }

    def layer_plans(abits: dict[str, tuple[int | None, ...]]) -> dict[str, LayerPlan]:
        return {
            n: LayerPlan(in_features=inp, out_features=out, wbits=wbits[n], abits=abits[n],
                         rotation=rotations[n].to_dict(), svd_rank=config.svd_rank, local_block=blocks[n],
                         active=is_active(n), weight_variance=weight_var.get(n), act_variance=act_var.get(n))
            for n, (out, inp) in linears.items()
        }

    def plan_with(abits: dict[str, tuple[int | None, ...]], extra_notes: list[str]) -> QuantPlan:
        return ctx.plan("qdit4sr", config, layer_plans(abits), notes=extra_notes)

    if calibration is None or not config.vatmp:
        if not float(config.abits).is_integer():
            raise UserError(f"--abits {config.abits} is fractional: a static schedule needs an integer "
                            "(a fractional average budget needs VaTMP with calibration data)")
        if config.vatmp:
            notes.append("VaTMP off: no calibration data; static activation bits at every timestep")
        return plan_with({n: (int(config.abits),) * steps for n in names}, notes)

    ctx.require_weights("VaTMP calibration")
    calibration.check(model.config, "calibration inputs")
    # Collect v(l, t) under quantized weights (paper Sec. 3.4.2), on a copy that reads the caller's weights (the
    # model is untouched; the simulation stores int8 codes and low-rank factors, a few GB at full size).
    weights_only = plan_with({n: (None,) * steps for n in names}, [])
    sim = apply_plan(lazy_copy(model, latent_side=calibration.lr_latent.shape[-1]), weights_only, check=False)
    sim.weights_only()
    first = ctx.first_step(config.start_sigma)
    variance = collect_activation_variance(sim.model, active, calibration, progress=progress, **trajectory(config))
    seen = ~np.isnan(variance[:, first:]).any(axis=1)
    schedule = schedule_layers(variance[seen, first:], budget=config.abits, kappa=kappa_table("integer"),
                               bits=ACT_BITS, max_segments=config.max_segments)
    abits: dict[str, tuple[int | None, ...]] = {}
    fallback = int(np.floor(config.abits))
    measured = [name for name, ok in zip(active, seen) if ok]  # layers that ran (all active ones, normally)
    for name, row, v in zip(measured, schedule, variance[seen]):
        abits[name] = (fallback,) * first + tuple(int(b) for b in row)
        act_var[name] = tuple(None if np.isnan(x) else float(x) for x in v)
    for name in names:
        abits.setdefault(name, (fallback,) * steps)
    ran = f"steps {first}-{steps - 1} of {steps} (start sigma {config.start_sigma}; earlier steps static " \
        f"{fallback} bits)" if first > 0 else f"{steps} steps"
    notes.append(f"VaTMP on {len(calibration)} calibration samples, {ran}, max {config.max_segments} segments")
    return plan_with(abits, notes)


@register("qdit4sr", summary="Q-DiT4SR: Hadamard + H-SVD (SVD-G and block-wise rank-1 SVD-L) + VaSMP weight bits "
          "+ VaTMP per-timestep activation bits", config=QDiT4SRConfig, uses_calibration=True)
def build_qdit4sr(model, config: QDiT4SRConfig, *, calibration=None, progress: bool = False) -> QuantPlan:
    return make_plan(model, config, calibration=calibration, progress=progress)
