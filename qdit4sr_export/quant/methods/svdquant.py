"""SVDQuant: per-layer smoothing (alpha grid search on calibration activations, minimising the layer's
output error), then an FP rank-32 low-rank branch of the smoothed weight with the residual quantized;
weights and activations INT4 with group size 64, min-max scales, no rotation."""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.methods.base import CalibratedConfig
from qdit4sr_export.quant.methods.registry import register
from qdit4sr_export.quant.rotated_gptq import check_options


@dataclass(frozen=True)
class SVDQuantConfig(CalibratedConfig):
    svd_rank: int = 32
    group_size: int = 64  # 0: per-row weight and per-token activation scales (Q-DiT4SR's granularity)
    alpha_points: int = 20  # alphas i/alpha_points for i = 1..alpha_points (SVDQuant: about 20)
    rows_per_step: int = 64  # calibration tokens sampled per layer, step and batch for the search
    # gptq: the residual after the low-rank branch rounded by GPTQ against the Hessian of the smoothed inputs on the
    # calibration trajectory (SVDQuant's reference pipeline also compensates the residual's rounding)
    gptq: bool = False
    damp: float = 0.01
    act_order: bool = False
    gptq_samples: int = 4  # calibration samples (the first) whose trajectory GPTQ's Hessians follow (0: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.svd_rank < 0 or self.group_size < 0 or self.alpha_points < 1 or self.rows_per_step < 1:
            raise UserError("svdquant: svd_rank >= 0, group_size >= 0 (0: per-row scales), alpha_points >= 1 "
                            "and rows_per_step >= 1")
        check_options("svdquant", self.gptq, self.damp, self.act_order, self.gptq_samples)


def _group(size: int, width: int) -> int | None:
    """The configured group size when it divides the layer width, else per-row scales (said in the notes);
    size 0 asks for per-row scales everywhere."""
    return size if size and width % size == 0 else None


@register("svdquant", summary="smoothing (alpha search on calibration data) + FP rank-32 branch + INT4 g64 "
          "weights and activations", config=SVDQuantConfig, needs_calibration=True)
def build_svdquant(model, config: SVDQuantConfig, *, calibration=None, progress: bool = False):
    from contextlib import nullcontext

    from qdit4sr_export.quant.calibration import InputSamples, collect
    from qdit4sr_export.quant.hessian_pass import recording_block_inputs
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, check_rank, static_bits, trajectory
    from qdit4sr_export.quant.rotated_gptq import run_gptq, stored
    from qdit4sr_export.quant.smoothing import search_smoothing

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    check_rank(ctx.linears, config.svd_rank)
    abits = static_bits(config.abits, ctx.steps)
    names = list(ctx.linears)
    sampled = InputSamples(names, rows_per_step=config.rows_per_step, seed=config.calib_seed)
    with recording_block_inputs(model) if config.gptq else nullcontext([]) as calls:
        collect(model, calibration, [sampled], progress=progress, **trajectory(config))
    samples = sampled.result()
    alphas = tuple(i / config.alpha_points for i in range(1, config.alpha_points + 1))
    layers, tensors, notes = {}, {}, []
    per_row = []
    for name, (out, inp) in ctx.each_layer("smoothing search", progress):
        group = _group(config.group_size, inp)
        if group is None:
            per_row.append(name)
        smoothing = name in samples
        if smoothing:
            found = search_smoothing(samples[name], ctx.weight(name), bits_w=config.wbits, bits_a=int(config.abits),
                                     group_size=group, low_rank=config.svd_rank, alphas=alphas)
            tensors[f"{name}.smooth"] = found.scales.float()
        layers[name] = LayerPlan(in_features=inp, out_features=out, wbits=config.wbits, abits=abits, clip="minmax",
                                 svd_rank=config.svd_rank, group_size=group, smoothing=smoothing)
    if per_row and config.group_size == 0:
        notes.append("group size 0: per-row weight and per-token activation scales")
    elif per_row:
        notes.append(f"{len(per_row)} layer(s) use per-row scales: group size {config.group_size} does not divide "
                     f"their width (first: {per_row[0]})")
    unseen = [n for n in names if n not in samples]
    if unseen:
        notes.append(f"{len(unseen)} layer(s) never ran on calibration data (unused outputs): not smoothed")
    if config.gptq:
        found, note = run_gptq(model, calls, layers, ctx.weight, tensors, config=config,
                               steps_run=ctx.steps - ctx.first_step(config.start_sigma),
                               source="the smoothing search's FP pass", progress=progress)
        tensors.update(found)
        layers = stored(layers, found)
        notes.append(note)
    return ctx.plan("svdquant", config, layers, notes=notes, tensors=tensors)
