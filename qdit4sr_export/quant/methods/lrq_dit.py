"""LRQ-DiT: Twin-Log Quantization of weights (per-layer grid search of eta and the two percentiles) and the
Adaptive Rotation Scheme: smoothing with alpha 0.5, then per layer a Hadamard rotation (mild outliers)
or an outlier-aware rotation (greedy block rotations + zigzag permutation, as in DuQuant), chosen from the
layer's activation fluctuation on calibration data; activations dynamic per token."""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.methods.base import CalibratedConfig
from qdit4sr_export.quant.methods.registry import register


@dataclass(frozen=True)
class LRQDiTConfig(CalibratedConfig):
    """``fluctuation_threshold``: mean over tokens of max|x| / rms(x) above which a layer gets the
    outlier-aware rotation (Gaussian tokens give about sqrt(2 ln C): 3.8 at C = 1536)."""

    smooth_alpha: float = 0.5
    fluctuation_threshold: float = 6.0
    rotation_block: int = 128
    greedy_steps: int = 8
    rotation_seed: int = 0
    rows_per_step: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.smooth_alpha <= 1 or self.fluctuation_threshold <= 0 or self.rotation_block < 2:
            raise UserError("lrq-dit: smooth_alpha in [0, 1], fluctuation_threshold > 0 and rotation_block >= 2")


def _block_for(n: int, preferred: int) -> int:
    """The largest power of two <= ``preferred`` that divides ``n`` (DuQuant's blocks are 128 wide)."""
    b = 1
    while b * 2 <= preferred and n % (b * 2) == 0:
        b *= 2
    return b


@register("lrq-dit", summary="Twin-Log Quantization of weights + adaptive rotation (Hadamard or outlier-aware "
          "block rotation + zigzag) after smoothing", config=LRQDiTConfig, needs_calibration=True)
def build_lrq_dit(model, config: LRQDiTConfig, *, calibration=None, progress: bool = False):
    from qdit4sr_export.quant.calibration import ChannelAbsMax, InputSamples, collect
    from qdit4sr_export.quant.hadamard import Rotation
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, static_bits, trajectory
    from qdit4sr_export.quant.outlier_rotation import activation_fluctuation, outlier_rotation
    from qdit4sr_export.quant.smoothing import smoothing_scales, weight_absmax
    from qdit4sr_export.quant.tlq import search_tlq

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    names = list(ctx.linears)
    maxima = ChannelAbsMax(names, ctx.steps)
    sampled = InputSamples(names, rows_per_step=config.rows_per_step, seed=config.calib_seed)
    collect(model, calibration, [maxima, sampled], progress=progress, **trajectory(config))  # one pass, both
    absmax, samples = maxima.result(), sampled.result()
    layers, tensors, kinds = {}, {}, {"hadamard": 0, "outlier": 0}
    for name, (out, inp) in ctx.each_layer("rotation and TLQ search", progress):
        weight = ctx.weight(name)
        smoothing = name in absmax
        act_max = absmax[name].amax(dim=0) if smoothing else None
        if smoothing:
            s = smoothing_scales(act_max, weight_absmax(weight), config.smooth_alpha).float()
            tensors[f"{name}.smooth"] = s
            weight = weight * s
        block = _block_for(inp, config.rotation_block)
        outlier = (smoothing and block >= 2
                   and activation_fluctuation(samples[name] / tensors[f"{name}.smooth"]) > config.fluctuation_threshold)
        if outlier:
            rot = outlier_rotation(act_max / tensors[f"{name}.smooth"], block=block,
                                   greedy_steps=config.greedy_steps, seed=config.rotation_seed)
            for part in ("perm_before", "blocks_1", "perm", "blocks_2"):
                value = getattr(rot, part)
                if value is not None:
                    tensors[f"{name}.rotation.{part}"] = value
            spec = {"kind": "outlier", "n": inp, "block": block}
        else:
            rot = Rotation(n=inp, seed=config.rotation_seed)
            spec = rot.to_dict()
        kinds["outlier" if outlier else "hadamard"] += 1
        params, _ = search_tlq(rot.apply(weight), config.wbits)
        tlq = {k: v for k, v in params.to_dict().items() if k != "bits"}
        layers[name] = LayerPlan(in_features=inp, out_features=out, wbits=config.wbits, abits=abits, clip="minmax",
                                 rotation=spec, smoothing=smoothing, weight_format="tlq", tlq=tlq)
    notes = [f"adaptive rotation: {kinds['hadamard']} Hadamard, {kinds['outlier']} outlier-aware "
             f"(fluctuation threshold {config.fluctuation_threshold})"]
    return ctx.plan("lrq-dit", config, layers, notes=notes, tensors=tensors)
