"""Bytes LowerOrtPass and InsertHSVDPass store for a planned layer, from its plan alone (shapes, bits).

Mirrors the lowering's storage choices: packed INT4 codes up to 4 bits, one byte per code above, float32
per-channel (or per-group) scales (GPTQ's stored weights too), float32 weights for TLQ's float path, and the
float32 H-SVD factors with SVD-L's sigma folded into u. Used to check the paper's size accounting against
the bytes an engine set really holds, including for model shapes too large to build here.
"""

from __future__ import annotations

from qdit4sr_export.quant.layer_plan import LayerPlan

FLOAT_BYTES = 4


def code_bytes(count: int, bits: int) -> int:
    """Stored size of ``count`` weight codes at ``bits``: two per byte up to 4 bits, else one."""
    return (count + 1) // 2 if bits <= 4 else count


def branch_bytes(lp: LayerPlan) -> int:
    """The FP H-SVD factors: r (in + out) for SVD-G, P Q (s_o + s_i) for SVD-L."""
    total = lp.svd_rank * (lp.in_features + lp.out_features)
    if lp.local_block is not None:
        s_o, s_i = lp.local_block
        total += (lp.out_features // s_o) * (lp.in_features // s_i) * (s_o + s_i)
    return total * FLOAT_BYTES


def weight_bytes(lp: LayerPlan, bits: int) -> int:
    """Codes and scales of the quantized residual at ``bits``."""
    n = lp.in_features * lp.out_features
    if lp.weight_format != "int":
        return n * FLOAT_BYTES
    groups = lp.in_features // lp.group_size if lp.group_size else 1
    return code_bytes(n, bits) + lp.out_features * groups * FLOAT_BYTES


def layer_bytes(lp: LayerPlan) -> int:
    """Everything stored for one planned layer (each distinct weight bit-width once)."""
    return branch_bytes(lp) + sum(weight_bytes(lp, b) for b in lp.distinct_weight_bits())
