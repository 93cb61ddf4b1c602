"""The plugins' launch logic without TensorRT: kernel choices from node attributes, grids, and real PTX.

Triton compiles for a named GPU target without a GPU, so the ahead-of-time implementation's PTX is produced here
(in a subprocess: the test session selects Triton's interpreter, which cannot compile)."""

import json
import os
import subprocess
import sys

from qdit4sr_export.plugins.trt_launch import lowbit_gemm_launch, prepared_rotate_quantize, rotate_quantize_launch
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

MEDIUM_RQ = RotateQuantizeAttrs(n=1536, bits=4, rotation_n=1536, rotation_seed=0, rank=32, svd_l_p=48, svd_l_q=48)
MEDIUM_GEMM = LowbitGemmAttrs(k=1536, n=6144, abits=4, wbits=4, rank=32, svd_l_p=48, svd_l_q=48, svd_l_so=128, bias=1)


def test_launches_use_the_kernels_gpu_choices():
    rq = rotate_quantize_launch(MEDIUM_RQ)
    assert rq.constants["N"] == 1536 and rq.constants["BITS"] == 4 and rq.constants["HAS_SIGNS"]
    assert rq.grid(8192) == -(-8192 // rq.rows_per_program)
    assert list(rq.signature)[:14] == ["x_ptr", "smooth_ptr", "signs_ptr", "hk_ptr", "h1_ptr", "h2_ptr", "b_ptr",
                                       "v_ptr", "codes_ptr", "scale_ptr", "h_ptr", "t_ptr", "z_ptr", "M"]
    assert rq.signature["codes_ptr"] == "*u8" and abs(rq.constants["step"] * 7 - 2.4739) < 1e-3
    # B's (T x r) tile does not fit the registers at n = 1536: the kernel reads B^T, and the lowering stores it so
    assert not prepared_rotate_quantize(MEDIUM_RQ).h_dot
    gemm = lowbit_gemm_launch(MEDIUM_GEMM)
    assert gemm.constants["A_MODE"] == 0 and gemm.constants["W_MODE"] == 0 and gemm.constants["HAS_BIAS"]
    assert gemm.grid(8192, 6144) == (8192 // gemm.rows_per_program) * (6144 // gemm.cols_per_program)
    floats = lowbit_gemm_launch(LowbitGemmAttrs(k=192, n=64, abits=0, wbits=6, group_size=64))
    assert floats.constants["A_MODE"] == 2 and floats.signature["w_ptr"] == "*i8"


COMPILE = """
import json
from qdit4sr_export.plugins.trt_launch import compile_ptx, lowbit_gemm_launch, rotate_quantize_launch
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs
out = []
for launch in (rotate_quantize_launch(RotateQuantizeAttrs(n=192, bits=4, rotation_n=192, rotation_seed=0, rank=8,
                                                          group_size=64)),
               lowbit_gemm_launch(LowbitGemmAttrs(k=192, n=64, abits=4, wbits=4, group_size=64, rank=8, bias=1))):
    k = compile_ptx(launch, 90)
    entry = k.ptx[k.ptx.index(".entry " + k.name):]
    params = [line.split()[1] for line in entry[:entry.index(")")].splitlines() if ".param" in line]
    out.append({"name": k.name, "params": params, "warps": k.num_warps, "shared": k.shared_bytes,
                "target": ".target sm_90" in k.ptx})
print(json.dumps(out))
"""


def test_aot_kernels_compile_to_ptx_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600,
                         cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    rq, gemm = json.loads(run.stdout.strip().splitlines()[-1])
    assert rq["name"] == "_rotate_quantize_kernel" and rq["target"] and rq["warps"] in (4, 8)
    # the node's 8 inputs and 5 outputs as pointers, then the token count (Triton appends its scratch pointers)
    assert rq["params"][:14] == [".u64"] * 13 + [".u32"]
    assert gemm["name"] == "lowbit_gemm_plugin_kernel" and gemm["params"][:12] == [".u64"] * 11 + [".u32"]
