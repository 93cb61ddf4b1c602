"""The Q-DiT4SR method: Hadamard rotation, H-SVD, VaSMP weight bits and VaTMP activation-bit schedules -> QuantPlan."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.sampling import DEFAULT_SHIFT, DEFAULT_STEPS
from qdit4sr_export.quant.checks import check_bits
from qdit4sr_export.quant.methods.registry import register
from qdit4sr_export.quant.rotated_gptq import check_options

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
    # VaTMP measures v(l, t) on the first vatmp_samples calibration samples (0: all): a mean square over every
    # token of every sample, stable long before 32 crops, and the pass costs samples x steps that run.
    vatmp_samples: int = 16
    max_segments: int | None = 3
    rotation_seed: int | None = 0  # random Hadamard signs (None: plain Hadamard); see README
    rotation_block: int | None = None  # block-diagonal Hadamard of this power-of-two size (None: full K * 2^m)
    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT
    # The pipeline's start sigma: runs from the LR latent skip the steps above it, so VaTMP calibrates and
    # budgets only the steps that run; skipped steps keep static floor(abits) bits.
    start_sigma: float = 1.0
    calib_seed: int = 0
    # Options beyond the paper, off by default. group_size: input channels sharing one weight scale
    # and one activation scale (Gaussian-optimal clip per group; 0: per weight row and per token, the paper's).
    group_size: int = 0
    # smoothing: per-layer channel smoothing before the rotation, searched on calibration data against the
    # layer's quantized output error (no smoothing, or alphas i / alpha_points for i = 1..alpha_points: SVDQuant's
    # scales); needs calibration. Each candidate re-runs the layer's H-SVD, so the grid is half SVDQuant's 20.
    smoothing: bool = False
    alpha_points: int = 10
    rows_per_step: int = 64  # calibration tokens sampled per layer, step and batch for the smoothing search
    # gptq: the residual after H-SVD rounded by GPTQ against the Hessian of the rotated (and smoothed) inputs on the
    # calibration trajectory (needs calibration); damp: its damping; act_order: columns by Hessian diagonal.
    gptq: bool = False
    damp: float = 0.01
    act_order: bool = False
    gptq_samples: int = 4  # calibration samples (the first) whose trajectory GPTQ's Hessians follow (0: all)

    def __post_init__(self) -> None:
        if self.wbits is not None:
            check_bits(self.wbits, "--wbits")
        elif not 2 <= self.wbits_budget <= 8:
            raise UserError(f"--wbits-budget must be in 2..8, got {self.wbits_budget}")
        if not 2 <= self.abits <= 8:
            raise UserError(f"--abits must be in 2..8, got {self.abits}")
        if self.svd_rank < 0 or self.local_rank < 0:
            raise UserError(f"svd_rank and local_rank must be >= 0, got {self.svd_rank} and {self.local_rank}")
        if self.max_segments is not None and self.max_segments < 1:
            raise UserError(f"max_segments must be >= 1, got {self.max_segments}")
        if self.steps < 1:
            raise UserError(f"--grid-steps must be >= 1, got {self.steps}")
        if not 0 < self.start_sigma <= 1:
            raise UserError(f"--start-sigma must be in (0, 1], got {self.start_sigma}")
        if self.vatmp_samples < 0:
            raise UserError(f"qdit4sr vatmp_samples must be >= 0 (0: every calibration sample), got {self.vatmp_samples}")
        if self.group_size < 0 or self.alpha_points < 1 or self.rows_per_step < 1:
            raise UserError("qdit4sr: group_size >= 0 (0: per-row and per-token scales), alpha_points >= 1 and "
                            "rows_per_step >= 1")
        check_options("qdit4sr", self.gptq, self.damp, self.act_order, self.gptq_samples)

    def wants_calibration(self) -> bool:
        """Whether a plan uses calibration data (VaTMP, the smoothing search, or GPTQ)."""
        return self.vatmp or self.smoothing or self.gptq

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _layer_variance(ctx: PlanContext, name: str, rotation: Rotation, smooth: torch.Tensor | None) -> float:
    """Average output-channel variance of the Hadamard-domain weight W_H = (W s) R (VaSMP's statistic; s the
    layer's smoothing when the plan smooths it)."""
    weight = ctx.weight(name)
    return float(rotation.apply(weight if smooth is None else weight * smooth).var(dim=1, unbiased=False).mean())


def _group(config: QDiT4SRConfig, width: int) -> int | None:
    """The configured group size where it divides the layer's input width, else per-row scales (noted)."""
    return config.group_size if config.group_size and width % config.group_size == 0 else None


def _smoothing(ctx: PlanContext, config: QDiT4SRConfig, calibration: CalibrationInputs | None,
               rotations: dict[str, Rotation], blocks: dict, groups: dict[str, int | None], notes: list[str],
               progress: bool, record: list | None = None) -> dict[str, torch.Tensor]:
    """The data-aware smoothing step: each layer's divisor (layers where no smoothing scored best are left out),
    searched at the plan's uniform weight bits (VaSMP's budget) and floor(--abits) activation bits (``record``:
    a list that receives the trajectory's first-block inputs, for GPTQ)."""
    import numpy as np

    from qdit4sr_export.quant.methods.common import trajectory
    from qdit4sr_export.quant.plan import LayerPlan
    from qdit4sr_export.quant.rotated_smoothing import search_model_smoothing

    if calibration is None:
        raise UserError("qdit4sr smoothing=true searches each layer's smoothing on calibration data: pass --calib "
                        "(or leave smoothing off)")
    ctx.require_weights("the smoothing search")
    calibration.check(ctx.model.config, "calibration inputs")
    wbits = config.wbits if config.wbits is not None else int(round(config.wbits_budget))
    plans = {n: LayerPlan(in_features=inp, out_features=out, wbits=wbits, abits=(None,),
                          rotation=rotations[n].to_dict(), svd_rank=config.svd_rank, local_block=blocks[n],
                          group_size=groups[n])
             for n, (out, inp) in ctx.linears.items() if is_active(n)}
    alphas = tuple(i / config.alpha_points for i in range(1, config.alpha_points + 1))
    chosen = search_model_smoothing(ctx.model, plans, ctx.weight, calibration, abits=int(np.floor(config.abits)),
                                    alphas=alphas, rows_per_step=config.rows_per_step,
                                    trajectory=trajectory(config), progress=progress, record=record)
    smooth = {n: c.scales.float() for n, c in chosen.items() if c.alpha is not None}
    gain = [1 - c.error / c.errors[0] for c in chosen.values() if c.errors[0] > 0]
    notes.append(f"smoothing searched on {len(calibration)} calibration samples: {len(smooth)} of {len(chosen)} "
                 f"layers smoothed (median alpha {np.median([c.alpha for c in chosen.values() if c.alpha]):.2f}, "
                 f"median output-error reduction {100 * float(np.median(gain)):.1f}%)" if smooth else
                 f"smoothing searched on {len(calibration)} calibration samples: no layer gained from it")
    return smooth


def make_plan(
    model: DiT4SRTransformer,
    config: QDiT4SRConfig,
    *,
    calibration: CalibrationInputs | None = None,
    progress: bool = False,
) -> QuantPlan:
    """Build a Q-DiT4SR plan. With an integer ``wbits`` and no calibration, only shapes are used (meta ok)."""
    import numpy as np

    from qdit4sr_export.model.weights import lazy_copy
    from qdit4sr_export.quant.calibration import collect_activation_variance
    from qdit4sr_export.quant.gaussian import kappa_table
    from qdit4sr_export.quant.hessian_pass import recording_block_inputs, trajectory_block_inputs
    from qdit4sr_export.quant.hsvd import select_block
    from qdit4sr_export.quant.methods.common import PlanContext, check_rank, hadamard_rotations, trajectory
    from qdit4sr_export.quant.plan import LayerPlan
    from qdit4sr_export.quant.rotated_gptq import require_calibration, run_gptq, stored
    from qdit4sr_export.quant.simulate import apply_plan
    from qdit4sr_export.quant.vasmp import allocate_weight_bits
    from qdit4sr_export.quant.vatmp import schedule_layers
    from qdit4sr_export.report.progress import progress_bar

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    linears = ctx.linears
    check_rank(linears, config.svd_rank)
    names = list(linears)
    on_meta = ctx.on_meta
    rotations = hadamard_rotations(linears, seed=config.rotation_seed, block=config.rotation_block)
    notes = []

    active = [n for n in names if is_active(n)]
    blocks = {
        n: select_block(out, inp, config.local_rank) if config.local_rank > 0 else None
        for n, (out, inp) in linears.items()
    }
    groups = {n: _group(config, inp) for n, (_, inp) in linears.items()}
    if config.gptq:
        require_calibration("qdit4sr", calibration)
        ctx.require_weights("GPTQ")
    vatmp_pass = calibration is not None and config.vatmp
    calls: list = []  # the trajectory GPTQ's Hessians follow, recorded on the last calibration pass before it
    smooth: dict[str, torch.Tensor] = {}
    if config.smoothing:
        smooth = _smoothing(ctx, config, calibration, rotations, blocks, groups, notes, progress,
                            record=calls if config.gptq and not vatmp_pass else None)
    per_row = [n for n in names if config.group_size and groups[n] is None]
    if per_row:
        notes.append(f"{len(per_row)} layer(s) use per-row scales: group size {config.group_size} does not divide "
                     f"their width (first: {per_row[0]})")
    weight_var: dict[str, float] = {}
    act_var: dict[str, tuple[float, ...]] = {}
    if config.wbits is not None:
        wbits = {n: config.wbits for n in names}
    else:
        if on_meta:
            raise UserError("--wbits auto (VaSMP) reads the weights: give a checkpoint, or an integer --wbits "
                            "for shape-only accounting")
        variances = [_layer_variance(ctx, n, rotations[n], smooth.get(n)) for n in
                     progress_bar(active, desc="VaSMP layer statistics", unit="layer", enabled=progress)]
        weight_var = dict(zip(active, variances))
        sizes = [linears[n][0] * linears[n][1] for n in active]
        bits = allocate_weight_bits(variances, sizes, budget=config.wbits_budget, kappa=kappa_table("integer"),
                                    b_min=config.wbits_min, b_max=config.wbits_max)
        wbits = dict(zip(active, bits))
        fill = int(round(config.wbits_budget))
        wbits.update({n: fill for n in names if n not in wbits})

    steps = ctx.steps
    tensors = {f"{n}.smooth": s for n, s in smooth.items()}

    def layer_plans(abits: dict[str, tuple[int | None, ...]]) -> dict[str, LayerPlan]:
        return stored({
            n: LayerPlan(in_features=inp, out_features=out, wbits=wbits[n], abits=abits[n],
                         rotation=rotations[n].to_dict(), svd_rank=config.svd_rank, local_block=blocks[n],
                         group_size=groups[n], smoothing=n in smooth, active=is_active(n),
                         weight_variance=weight_var.get(n), act_variance=act_var.get(n))
            for n, (out, inp) in linears.items()
        }, tensors)

    def plan_with(abits: dict[str, tuple[int | None, ...]], extra_notes: list[str]) -> QuantPlan:
        return ctx.plan("qdit4sr", config, layer_plans(abits), notes=extra_notes, tensors=tensors)

    def gptq(source: str) -> None:
        """GPTQ every active layer's residual on the recorded trajectory."""
        found, note = run_gptq(model, calls, layer_plans({n: (None,) * steps for n in names}), ctx.weight, tensors,
                               config=config, steps_run=steps - ctx.first_step(config.start_sigma), layers=active,
                               source=source, progress=progress)
        tensors.update(found)
        notes.append(note)

    if not vatmp_pass:
        if not float(config.abits).is_integer():
            raise UserError(f"--abits {config.abits} is fractional: a static schedule needs an integer "
                            "(a fractional average budget needs VaTMP with calibration data)")
        if config.vatmp:
            notes.append("VaTMP off: no calibration data; static activation bits at every timestep")
        if config.gptq:
            if not config.smoothing:
                calls += trajectory_block_inputs(model, calibration.head(config.gptq_samples or len(calibration)),
                                                 progress=progress, **trajectory(config))
            gptq("the smoothing search's FP pass" if config.smoothing else "an FP pass of its own")
        return plan_with({n: (int(config.abits),) * steps for n in names}, notes)

    ctx.require_weights("VaTMP calibration")
    calibration.check(model.config, "calibration inputs")
    # Collect v(l, t) under quantized weights (paper Sec. 3.4.2), on a copy that reads the caller's weights (the
    # model is untouched; the simulation stores int8 codes and low-rank factors, a few GB at full size).
    weights_only = plan_with({n: (None,) * steps for n in names}, [])
    sim = apply_plan(lazy_copy(model, latent_side=calibration.lr_latent.shape[-1]), weights_only, check=False)
    sim.weights_only()
    first = ctx.first_step(config.start_sigma)
    samples = calibration.head(config.vatmp_samples) if config.vatmp_samples else calibration
    with recording_block_inputs(sim.model) as recorded:
        variance = collect_activation_variance(sim.model, active, samples, progress=progress, **trajectory(config))
    if config.gptq:
        calls += recorded
        gptq("the VaTMP pass (round-to-nearest weights)")
    del recorded
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
    notes.append(f"VaTMP on {len(samples)} calibration samples, {ran}, max {config.max_segments} segments")
    return plan_with(abits, notes)


@register("qdit4sr", summary="Q-DiT4SR: Hadamard + H-SVD (SVD-G and block-wise rank-1 SVD-L) + VaSMP weight bits "
          "+ VaTMP per-timestep activation bits", config=QDiT4SRConfig, uses_calibration=True)
def build_qdit4sr(model, config: QDiT4SRConfig, *, calibration=None, progress: bool = False) -> QuantPlan:
    return make_plan(model, config, calibration=calibration, progress=progress)
