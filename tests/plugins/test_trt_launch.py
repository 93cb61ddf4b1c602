"""The plugins' launch logic without TensorRT: kernel choices from node attributes and grids (the PTX itself:
test_trt_ptx.py)."""

from qdit4sr_export.plugins.trt_launch import (
    lowbit_gemm_launch,
    node_h_dot,
    prepared_rotate_quantize,
    rotate_quantize_launch,
)
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

MEDIUM_RQ = RotateQuantizeAttrs(n=1536, bits=4, rotation_n=1536, rotation_seed=0, rank=32, svd_l_p=48, svd_l_q=48)
MEDIUM_GEMM = LowbitGemmAttrs(k=1536, n=6144, abits=4, wbits=4, rank=32, svd_l_p=48, svd_l_q=48, svd_l_so=128, bias=1)


def test_launches_use_the_kernels_gpu_choices():
    rq = rotate_quantize_launch(MEDIUM_RQ)
    assert rq.constants["N"] == 1536 and rq.constants["BITS"] == 4 and rq.constants["HAS_SIGNS"]
    assert rq.grid(8192) == -(-8192 // rq.rows_per_program)
    assert list(rq.signature)[:14] == ["x", "smooth", "signs", "hk", "h1", "h2", "svd_g_b", "svd_l_v", "M", "codes",
                                       "scales", "h", "t", "z"]
    assert rq.signature["codes"] == "*u8" and abs(rq.constants["STEP"] * 7 - 2.4739) < 1e-3
    # B's (T x r) tile does not fit the registers at n = 1536: the kernel reads B^T, and the lowering stores it so
    assert not prepared_rotate_quantize(MEDIUM_RQ).h_dot
    gemm = lowbit_gemm_launch(MEDIUM_GEMM)
    assert gemm.constants["A_MODE"] == 0 and gemm.constants["W_MODE"] == 0 and gemm.constants["HAS_BIAS"]
    assert gemm.grid(8192, 6144) == (8192 // gemm.rows_per_program) * (6144 // gemm.cols_per_program)
    floats = lowbit_gemm_launch(LowbitGemmAttrs(k=192, n=64, abits=0, wbits=6, group_size=64))
    assert floats.constants["A_MODE"] == 2 and floats.signature["w_codes"] == "*i8"


def test_the_node_fixes_the_svd_g_layout():
    """The kernel reads B or B^T as the node's graph stores it, whatever its own default for the width."""
    stored_b = RotateQuantizeAttrs(n=192, bits=4, rank=8, b_transposed=0)
    stored_bt = RotateQuantizeAttrs(n=192, bits=4, rank=8, b_transposed=1)
    assert rotate_quantize_launch(stored_b).constants["H_DOT"] and node_h_dot(stored_b)
    assert not rotate_quantize_launch(stored_bt).constants["H_DOT"] and node_h_dot(stored_bt) is False
    assert node_h_dot(RotateQuantizeAttrs(n=192, bits=4)) is None

