"""What an engine build checks of the plugins before TensorRT builds anything, and what loading checks of the GPU
and driver: one-line refusals naming both sides. The kernels are compiled for sm_90 in a subprocess (the session
runs Triton's interpreter); neither TensorRT nor a GPU is needed."""

import json
import os
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper
from qdit4sr_export.plugins.trt_ops import (
    DOMAIN,
    LOWBIT_GEMM,
    ROTATE_QUANTIZE,
    LowbitGemmAttrs,
    RotateQuantizeAttrs,
)

from qdit4sr_export.compiler.trt_engines import check_plugin_needs
from qdit4sr_export.errors import UserError

NEEDS = {"ptx_isa": "8.4", "ptx_target": "sm_90a"}


def test_load_refuses_an_old_driver_or_another_gpu_naming_both():
    check_plugin_needs(NEEDS, (9, 0), (12, 4), "set")
    check_plugin_needs(NEEDS, (9, 0), (13, 0), "set")
    with pytest.raises(UserError, match=r"^set: the engines need PTX ISA 8.4 .* this driver is CUDA 12.3 "
                                        r"\(PTX ISA 8.3\): update the NVIDIA driver$"):
        check_plugin_needs(NEEDS, (9, 0), (12, 3), "set")
    with pytest.raises(UserError, match=r"^set: the engines' kernels are PTX for sm_90a .*this GPU is 8.9"):
        check_plugin_needs(NEEDS, (8, 9), (12, 8), "set")
    check_plugin_needs({**NEEDS, "ptx_target": "sm_90"}, (10, 0), (12, 8), "set")  # plain PTX: later GPUs JIT it


def _plugin_graph(path):
    """A graph with one RotateQuantize and one LowbitGemm node (their attributes are all the check reads)."""
    rq = RotateQuantizeAttrs(n=64, bits=4, rank=8)
    gm = LowbitGemmAttrs(k=64, n=32, abits=4, wbits=4, rank=8, bias=1)
    names = [f"i{i}" for i in range(10)]
    nodes = [helper.make_node(ROTATE_QUANTIZE, names[:8], ["c", "s", "h", "t", "z"], domain=DOMAIN,
                              **rq.to_attributes()),
             helper.make_node(LOWBIT_GEMM, ["c", "s", "z", *names[3:10]], ["y"], domain=DOMAIN, **gm.to_attributes())]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]),
              str(path))


CHECK = """
import json, sys
from qdit4sr_export.plugins import trt_contract
from qdit4sr_export.plugins.trt_aot import check_graph_kernels
from qdit4sr_export.errors import UserError
out = {}
for limit in (1024, 227 * 1024):  # far below any kernel, and Hopper's opt-in maximum
    trt_contract.MAX_DYNAMIC_SHARED_BYTES = limit
    try:
        out[limit] = check_graph_kernels([sys.argv[1]], 90)
    except UserError as exc:
        out[limit] = str(exc)
print(json.dumps(out))
"""


def test_build_compiles_every_plugin_kernel_and_refuses_one_over_the_limit(tmp_path):
    _plugin_graph(tmp_path / "g.onnx")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "g.onnx")], env=env, capture_output=True,
                         text=True, timeout=900, cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    refused, passed = json.loads(run.stdout.strip().splitlines()[-1]).values()
    assert "\n" not in refused and refused.startswith("RotateQuantize kernel (N=64 ")
    assert refused.endswith("dynamic shared memory; TensorRT's AOT launch allows at most 1024 (1 KiB)")
    assert passed["ptx_isa"] == "8.4" and passed["ptx_target"] in ("sm_90", "sm_90a") and passed["kernels"] >= 2
