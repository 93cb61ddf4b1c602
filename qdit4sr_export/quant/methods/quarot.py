"""QuaRot: a random Hadamard (H diag(+-1)) applied online before each linear and folded into its weight,
then RTN weights and per-token symmetric activations. In a DiT the adaLN modulation stops the rotation
from folding into norms, so the activation side is rotated online (as the simulation does)."""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.quant.methods.base import CalibratedConfig
from qdit4sr_export.quant.methods.registry import register
from qdit4sr_export.quant.rotated_gptq import check_options


@dataclass(frozen=True)
class QuaRotConfig(CalibratedConfig):
    rotation_seed: int = 0
    clip: str = "minmax"  # QuaRot's RTN uses min-max scales; "gaussian" is this project's optimal clip
    # gptq: QuaRot's GPTQ variant (its paper's W4A4 results): rotated weights rounded by GPTQ against the Hessian of
    # the rotated inputs on the calibration trajectory (needs calibration); damp; act_order.
    gptq: bool = False
    damp: float = 0.01
    act_order: bool = False
    gptq_samples: int = 4  # calibration samples (the first) whose trajectory GPTQ's Hessians follow (0: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_options("quarot", self.gptq, self.damp, self.act_order, self.gptq_samples)

    def wants_calibration(self) -> bool:
        """Only the GPTQ variant uses calibration data."""
        return self.gptq


@register("quarot", summary="random Hadamard rotation of every linear's input, then RTN (or gptq=true: GPTQ) "
          "weights and RTN activations", config=QuaRotConfig, uses_calibration=True)
def build_quarot(model, config: QuaRotConfig, *, calibration=None, progress: bool = False):
    from qdit4sr_export.quant.hessian_pass import trajectory_block_inputs
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, hadamard_rotations, static_bits, trajectory
    from qdit4sr_export.quant.rotated_gptq import require_calibration, run_gptq, stored

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    rotations = hadamard_rotations(ctx.linears, seed=config.rotation_seed)
    layers = {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, abits=abits, clip=config.clip,
                           rotation=rotations[n].to_dict())
              for n, (o, i) in ctx.linears.items()}
    if not config.gptq:
        return ctx.plan("quarot", config, layers)
    require_calibration("quarot", calibration)
    ctx.require_weights("GPTQ")
    calibration.check(model.config, "calibration inputs")
    calls = trajectory_block_inputs(model, calibration.head(config.gptq_samples or len(calibration)),
                                    progress=progress, **trajectory(config))
    found, note = run_gptq(model, calls, layers, ctx.weight, {}, config=config,
                           steps_run=ctx.steps - ctx.first_step(config.start_sigma), source="an FP pass of its own",
                           progress=progress)
    return ctx.plan("quarot", config, stored(layers, found), notes=[note], tensors=found)
