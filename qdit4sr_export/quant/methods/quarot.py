"""QuaRot: a random Hadamard (H diag(+-1)) applied online before each linear and folded into its weight,
then RTN weights and per-token symmetric activations. In a DiT the adaLN modulation stops the rotation
from folding into norms, so the activation side is rotated online (as the simulation does)."""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.quant.methods.base import MethodConfig
from qdit4sr_export.quant.methods.registry import register


@dataclass(frozen=True)
class QuaRotConfig(MethodConfig):
    rotation_seed: int = 0
    clip: str = "minmax"  # QuaRot's RTN uses min-max scales; "gaussian" is this project's optimal clip


@register("quarot", summary="random Hadamard rotation of every linear's input, then RTN weights and activations",
          config=QuaRotConfig)
def build_quarot(model, config: QuaRotConfig, *, calibration=None, progress: bool = False):
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, hadamard_rotations, static_bits

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    rotations = hadamard_rotations(ctx.linears, seed=config.rotation_seed)
    layers = {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, abits=abits, clip=config.clip,
                           rotation=rotations[n].to_dict())
              for n, (o, i) in ctx.linears.items()}
    return ctx.plan("quarot", config, layers)
