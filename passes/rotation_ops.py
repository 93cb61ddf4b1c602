"""The online activation rotation as ONNX nodes: structured, never a dense n x n MatMul for a Hadamard of n > 128.

A Hadamard ``Rotation`` is ``diag(signs) @ kron(H_1, ..., H_k)``; it is applied as one small MatMul per
Kronecker factor on a reshaped view, as ``Rotation.apply`` does in torch, with adjacent power-of-two factors merged
up to 128 (1536 = 12 x 128: a 12 x 12 and a 128 x 128 factor; 128 wide: one 128 x 128 MatMul). An outlier
``BlockRotation`` (LRQ-DiT) is Gather permutations and block-diagonal Einsums.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from qdit4sr_export.passes.graph_edit import Emitter

from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.outlier_rotation import BlockRotation


def _f32(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy().astype(np.float32)


#: Adjacent power-of-two (Sylvester) factors are merged into one factor up to this order: one MatMul over 128
#: channels is faster on ONNX Runtime's CPU kernels than two over 16 and 8 (measured 1.2-1.3x at 128 and 1536
#: wide), while a merged 512 is 2.7x slower than 32 x 16.
MERGE_MAX = 128


def _pow2(f: int) -> bool:
    return f & (f - 1) == 0


def merged_factors(rot: Rotation) -> tuple[list[int], list]:
    """The rotation's Kronecker factors (sizes, matrices or None for an identity axis) with adjacent power-of-two
    factors merged from the right while their product stays <= MERGE_MAX (the same product in fewer MatMuls; the
    non-power-of-two base factor, 12 in 1536 = 12 x 128, stays its own)."""
    sizes, mats = rot._plan  # type: ignore[attr-defined]
    out_sizes: list[int] = []
    out_mats: list = []
    for f, m in zip(reversed(sizes), reversed(mats)):
        if out_sizes and m is not None and out_mats[0] is not None and _pow2(f) and _pow2(out_sizes[0]) \
                and f * out_sizes[0] <= MERGE_MAX:
            out_mats[0] = torch.kron(m.double(), out_mats[0].double())
            out_sizes[0] *= f
        else:
            out_sizes.insert(0, f)
            out_mats.insert(0, m)
    return out_sizes, out_mats


def emit_hadamard(em: Emitter, x: ir.Value, rot: Rotation) -> ir.Value:
    """``x @ R`` along the last axis of x."""
    n = rot.n
    key = f"hadamard.n{n}.block{rot.block}"
    y = x
    if rot.seed is not None:
        y = em.op("Mul", [y, em.const(f"hadamard.n{n}.seed{rot.seed}.signs", _f32(rot.signs()))])
    sizes, mats = merged_factors(rot)
    active = [(i, f, m) for i, (f, m) in enumerate(zip(sizes, mats)) if m is not None]
    if len(active) == 1 and active[0][1] == n:  # one factor over the whole axis: a plain MatMul
        return em.op("MatMul", [y, em.const(f"{key}.f0", _f32(active[0][2]))])
    shape = em.op("Shape", [x])
    left = 1
    for i, (f, m) in enumerate(zip(sizes, mats)):
        right = n // (left * f)
        if m is not None:
            if right == 1:
                y = em.op("Reshape", [y, em.const(f"shape.-1x{f}", np.array([-1, f], np.int64))])
                y = em.op("MatMul", [y, em.const(f"{key}.f{i}", _f32(m))])
            else:
                y = em.op("Reshape", [y, em.const(f"shape.-1x{f}x{right}", np.array([-1, f, right], np.int64))])
                y = em.op("MatMul", [em.const(f"{key}.f{i}.T", _f32(m.T)), y])
        left *= f
    return em.op("Reshape", [y, shape])


def emit_block_rotation(em: Emitter, x: ir.Value, rot: BlockRotation, layer: str) -> ir.Value:
    """``x @ R`` for LRQ-DiT's permuted block-diagonal rotation."""
    b, nb = rot.block, rot.n_blocks
    shape = em.op("Shape", [x])
    blocks_shape = em.const(f"shape.-1x{nb}x{b}", np.array([-1, nb, b], np.int64))
    y = x
    for part in ("perm_before", "blocks_1", "perm", "blocks_2"):
        t = getattr(rot, part)
        if t is None:
            continue
        if part.startswith("perm"):
            idx = em.const(f"{layer}.rotation.{part}", t.detach().to("cpu").numpy().astype(np.int64))
            y = em.op("Gather", [y, idx], {"axis": -1})
        else:
            y = em.op("Reshape", [y, blocks_shape])
            y = em.op("Einsum", [y, em.const(f"{layer}.rotation.{part}", _f32(t))], {"equation": "rkb,kbc->rkc"})
            y = em.op("Reshape", [y, shape])
    return y


def emit_rotation(em: Emitter, x: ir.Value, rot, layer: str) -> ir.Value:
    """Dispatch on the rotation kind."""
    if isinstance(rot, Rotation):
        return emit_hadamard(em, x, rot)
    if isinstance(rot, BlockRotation):
        return emit_block_rotation(em, x, rot, layer)
    raise TypeError(f"no ONNX lowering for rotation {type(rot).__name__}")
