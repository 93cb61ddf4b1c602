"""RTN: round-to-nearest, min-max scales per output channel (weights) and per token (activations), no rotation."""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.quant.methods.base import MethodConfig
from qdit4sr_export.quant.methods.registry import register


@dataclass(frozen=True)
class RTNConfig(MethodConfig):
    """Uniform weight and activation bits; nothing else to choose."""


@register("rtn", summary="round-to-nearest: min-max per-channel weights, per-token activations, no rotation",
          config=RTNConfig)
def build_rtn(model, config: RTNConfig, *, calibration=None, progress: bool = False):
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, static_bits

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    layers = {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, abits=abits, clip="minmax")
              for n, (o, i) in ctx.linears.items()}
    return ctx.plan("rtn", config, layers)
