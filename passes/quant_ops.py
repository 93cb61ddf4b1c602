"""Per-token dynamic activation quantization as ONNX nodes, the arithmetic of ``gaussian.fake_quantize_tokens``.

scale = max(rms(z) * c*(b) / qmax, tiny) ("gaussian") or max(max|z| / qmax, tiny) ("minmax"), per token (or
per token and channel group); q = clip(round(z / scale), -qmax, qmax). ONNX Round is half-to-even like
torch.round. The integer path stores q as uint8 with zero point 128 (ONNX Runtime's fast MatMulInteger is
uint8 x int8), in one ``QuantizeLinear`` whose single block spans the token (it divides by the scale and rounds
half-to-even like the simulation, so the codes are the same bits) and a ``Clip`` of the uint8 codes; the float
path returns q * scale.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from qdit4sr_export.passes.graph_edit import Emitter

from qdit4sr_export.quant.gaussian import _TINY, optimal_clip, qmax

ZERO_POINT = 128


def _scalar(em: Emitter, name: str, value: float, dtype=np.float32) -> ir.Value:
    return em.const(name, np.array(value, dtype=dtype))


def emit_token_scale(em: Emitter, z: ir.Value, bits: int, clip: str) -> ir.Value:
    """Per-row step along the last axis, keepdims."""
    axes = em.const("axes.-1", np.array([-1], np.int64))
    m = qmax(bits)
    if clip == "gaussian":
        ms = em.op("ReduceMean", [em.op("Mul", [z, z]), axes], {"keepdims": 1})
        scale = em.op("Mul", [em.op("Sqrt", [ms]),
                              _scalar(em, f"quant.a{bits}.gaussian_step", optimal_clip(bits, "integer") / m)])
    elif clip == "minmax":
        amax = em.op("ReduceMax", [em.op("Abs", [z]), axes], {"keepdims": 1})
        scale = em.op("Div", [amax, _scalar(em, f"quant.qmax{bits}", float(m))])
    else:
        raise ValueError(f"no ONNX lowering for clip {clip!r}")
    return em.op("Max", [scale, _scalar(em, "quant.tiny", float(_TINY))])


def emit_codes(em: Emitter, z: ir.Value, scale: ir.Value, bits: int) -> ir.Value:
    """clip(round(z / scale), -qmax, qmax) in float."""
    m = float(qmax(bits))
    q = em.op("Round", [em.op("Div", [z, scale])])
    return em.op("Clip", [q, _scalar(em, f"quant.-qmax{bits}", -m), _scalar(em, f"quant.qmax{bits}", m)])


def _grouped(em: Emitter, z: ir.Value, in_features: int, group: int | None) -> tuple[ir.Value, ir.Value | None]:
    """z viewed as (..., in/group, group), and z's shape to restore; unchanged without groups."""
    if group is None:
        return z, None
    shape = em.op("Shape", [z])
    lead = em.op("Shape", [z], {"end": -1})
    groups = em.const(f"shape.{in_features // group}x{group}", np.array([in_features // group, group], np.int64))
    return em.op("Reshape", [z, em.op("Concat", [lead, groups], {"axis": 0})]), shape


def emit_fake_quant(em: Emitter, z: ir.Value, bits: int, clip: str, in_features: int,
                    group: int | None = None) -> ir.Value:
    """Q_G(z) in float: per token, or per token and group of ``group`` channels."""
    zg, shape = _grouped(em, z, in_features, group)
    scale = emit_token_scale(em, zg, bits, clip)
    zq = em.op("Mul", [emit_codes(em, zg, scale, bits), scale])
    return zq if shape is None else em.op("Reshape", [zq, shape])


def emit_uint8_codes(em: Emitter, z: ir.Value, bits: int, clip: str, channels: int) -> tuple[ir.Value, ir.Value]:
    """(codes + 128 as uint8, per-token scale) for an integer GEMM with a_zero_point 128.

    ``QuantizeLinear`` with one block of ``channels`` along the last axis takes the per-token scale as it is
    ([..., 1]) and computes saturate(round(z / scale) + 128); the Clip to 128 +- qmax is the grid's clip.
    """
    scale = emit_token_scale(em, z, bits, clip)
    zero = em.op("Expand", [em.const("quant.zero_point_u8", np.array(ZERO_POINT, np.uint8)), em.op("Shape", [scale])])
    codes = em.op("QuantizeLinear", [z, scale, zero], {"axis": -1, "block_size": channels})
    m = qmax(bits)
    low = em.const(f"quant.u8.{ZERO_POINT - m}", np.array(ZERO_POINT - m, np.uint8))
    high = em.const(f"quant.u8.{ZERO_POINT + m}", np.array(ZERO_POINT + m, np.uint8))
    return em.op("Clip", [codes, low, high]), scale
