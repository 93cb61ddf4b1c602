"""Plugin node configurations of a plan, as ``LowerTrtPass`` writes them: what the PTX contract test and
``bench/ptx_report.py`` compile (dit4sr-medium: every distinct layer shape of its Q-DiT4SR plan).

``layer_attrs`` mirrors the lowering for one planned layer at given bits (every H-SVD branch the plan gives the
layer; the bias assumed present); ``tests/passes/test_lower_trt.py`` checks it against lowered graphs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

#: (weight bits, activation bits (0: float activations), activation/weight group size (0: none), H-SVD branches)
#: compiled for every layer shape: W4A4 and W8A8 per token and with groups of 128, W4 with a float step (all with
#: the plan's SVD-G and SVD-L), and W4A4 without the branches (a QuaRot-like layer).
SETTINGS = ((4, 4, 0, True), (8, 8, 0, True), (4, 4, 128, True), (8, 8, 128, True), (4, 0, 0, True),
            (4, 4, 0, False))


@dataclass(frozen=True)
class LayerConfig:
    """One layer's two plugin nodes at one setting, and a name for files and tables."""

    name: str
    rotate_quantize: RotateQuantizeAttrs
    lowbit_gemm: LowbitGemmAttrs


def layer_attrs(lp, wbits: int, abits: int, *, bias: bool = True) -> tuple[RotateQuantizeAttrs, LowbitGemmAttrs]:
    """The (RotateQuantize, LowbitGemm) attributes ``LowerTrtPass`` writes for plan layer ``lp`` at these bits."""
    from qdit4sr_export.plugins.trt_launch import prepared_rotate_quantize

    from qdit4sr_export.quant.hadamard import Rotation

    n_in, n_out = lp.in_features, lp.out_features
    rot = {}
    if lp.rotation is not None:
        r = Rotation.from_dict({k: v for k, v in lp.rotation.items() if k != "kind"})
        rot = {"rotation_n": n_in, "rotation_seed": -1 if r.seed is None else int(r.seed),
               "rotation_block": int(r.block or 0)}
    s_o, s_i = lp.local_block if lp.local_block else (0, 0)
    p, q = (n_out // s_o, n_in // s_i) if s_o else (0, 0)
    rq = RotateQuantizeAttrs(n=n_in, bits=abits, clip=lp.clip, group_size=lp.group_size or 0,
                             smooth=int(bool(lp.smoothing)), rank=lp.svd_rank or 0, svd_l_p=p, svd_l_q=q, **rot)
    if rq.rank and not prepared_rotate_quantize(rq).h_dot:
        rq = dataclasses.replace(rq, b_transposed=1)
    gm = LowbitGemmAttrs(k=n_in, n=n_out, abits=abits, wbits=wbits, group_size=lp.group_size or 0, rank=rq.rank,
                         svd_l_p=p, svd_l_q=q, svd_l_so=s_o, bias=int(bias))
    return rq, gm


def plan_configs(plan, settings=SETTINGS) -> list[LayerConfig]:
    """Every distinct layer shape of ``plan``'s active layers at each setting (groups replace the plan's)."""
    shapes: dict[tuple, object] = {}
    for lp in plan.layers.values():
        if lp.active:
            shapes.setdefault((lp.in_features, lp.out_features, lp.svd_rank, lp.local_block), lp)
    out = []
    for (k, n, rank, block), lp in sorted(shapes.items(), key=lambda kv: kv[0][:2]):
        for wbits, abits, group, hsvd in settings:
            layer = dataclasses.replace(lp, group_size=group or None, **({} if hsvd else {"svd_rank": 0,
                                                                                        "local_block": None}))
            rq, gm = layer_attrs(layer, wbits, abits)
            mode = f"a{abits}" if abits else "afloat"
            branches = f"_r{rank}" + (f"_l{block[0]}x{block[1]}" if block else "") if hsvd else "_nohsvd"
            name = f"k{k}_n{n}_w{wbits}{mode}_g{group}{branches}"
            out.append(LayerConfig(name, rq, gm))
    return out


def shapes_plan(preset="dit4sr-medium"):
    """The shapes-only Q-DiT4SR W4A4 static plan of a preset (SVD-G rank 32, SVD-L at Q-DiT4SR's block), built on
    the meta device: layer shapes and branches, no weights (``preset``: a preset name or a DiT4SRConfig)."""
    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.quant.methods import get_method, make_config

    method = get_method("qdit4sr")
    meta = build_dit4sr(preset, device="meta")
    return method.build(meta, make_config(method, {"wbits": 4, "abits": 4, "steps": 1, "vatmp": False}))
