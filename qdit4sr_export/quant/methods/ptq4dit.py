"""PTQ4DiT: Channel-wise Salience Balancing, B_j = sqrt(s(X_j) / s(W_j)), with the activation salience
averaged over timesteps by softmax(-Spearman(s_k(X), s(W))) weights (Spearman's rho-guided salience
calibration); the balanced layer (x / B, W * B) is then quantized with min-max per-channel weights and
per-token activations."""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.quant.methods.base import CalibratedConfig
from qdit4sr_export.quant.methods.registry import register


@dataclass(frozen=True)
class PTQ4DiTConfig(CalibratedConfig):
    """The timestep saliences come from the steps the calibration trajectory runs."""


@register("ptq4dit", summary="channel salience balancing across timesteps (Spearman-weighted), then RTN",
          config=PTQ4DiTConfig, needs_calibration=True)
def build_ptq4dit(model, config: PTQ4DiTConfig, *, calibration=None, progress: bool = False):
    from qdit4sr_export.quant.calibration import ChannelAbsMax, collect
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, static_bits, trajectory
    from qdit4sr_export.quant.smoothing import salience_balance, weight_absmax

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    absmax = ChannelAbsMax(list(ctx.linears), ctx.steps)
    collect(model, calibration, [absmax], progress=progress, **trajectory(config))
    salience = absmax.result()
    layers, tensors = {}, {}
    for name, (out, inp) in ctx.each_layer("salience balancing", progress):
        balanced = name in salience
        if balanced:
            b, _ = salience_balance(salience[name], weight_absmax(ctx.weight(name)))
            tensors[f"{name}.smooth"] = b.float()
        layers[name] = LayerPlan(in_features=inp, out_features=out, wbits=config.wbits, abits=abits, clip="minmax",
                                 smoothing=balanced)
    unseen = len(ctx.linears) - len(salience)
    notes = [f"{unseen} layer(s) never ran on calibration data (unused outputs): not balanced"] if unseen else []
    return ctx.plan("ptq4dit", config, layers, notes=notes, tensors=tensors)
