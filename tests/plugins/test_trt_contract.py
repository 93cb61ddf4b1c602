"""TensorRT's AOT launch contract as data: the plugin kernels' signatures follow it, the plugin definitions pass
attributes in the node's order, and the driver / GPU checks refuse a mismatch in one line naming both sides.
Nothing here compiles (see test_trt_ptx.py) or needs TensorRT."""

import ast
import dataclasses
import inspect
from pathlib import Path

import onnx_ir as ir
import pytest
from qdit4sr_export.plugins import trt_kernels, trt_ops
from qdit4sr_export.plugins.ptx import EntryParam
from qdit4sr_export.plugins.trt_contract import (
    CONTRACTS,
    MAX_DYNAMIC_SHARED_BYTES,
    PTX_ISA,
    TENSOR_ALIGNMENT,
    check_capability,
    check_driver,
    check_entry,
    check_target_isa,
    max_ptx_isa,
)
from qdit4sr_export.plugins.trt_launch import (
    lowbit_gemm_launch,
    lowbit_gemm_tactics,
    rotate_quantize_launch,
    row_bytes,
    tactic_launch,
)
from qdit4sr_export.plugins.trt_ops import LOWBIT_GEMM, ROTATE_QUANTIZE, LowbitGemmAttrs, RotateQuantizeAttrs

from qdit4sr_export.errors import UserError

RQ = RotateQuantizeAttrs(n=1536, bits=4, rotation_n=1536, rotation_seed=0, rank=32, svd_l_p=8, svd_l_q=8,
                         b_transposed=1)
GEMM = LowbitGemmAttrs(k=1536, n=6144, abits=4, wbits=4, rank=32, svd_l_p=8, svd_l_q=8, svd_l_so=768, bias=1)
KERNEL_OF = {ROTATE_QUANTIZE: "rotate_quantize_plugin_kernel", LOWBIT_GEMM: "lowbit_gemm_plugin_kernel"}


def test_contract_orders_inputs_then_symint_extras_then_outputs():
    rq = CONTRACTS[ROTATE_QUANTIZE]
    assert rq.names() == [*trt_ops.ROTATE_QUANTIZE_INPUTS, "M", *trt_ops.ROTATE_QUANTIZE_OUTPUTS]
    gemm = CONTRACTS[LOWBIT_GEMM].params()
    assert [p["name"] for p in gemm] == [*trt_ops.LOWBIT_GEMM_INPUTS, "M", "y"]
    assert [p["kind"] for p in gemm] == ["pointer"] * 10 + ["scalar", "pointer"]


def _params(fn):
    return inspect.signature(fn.fn).parameters


@pytest.mark.parametrize("plugin", [ROTATE_QUANTIZE, LOWBIT_GEMM])
def test_plugin_kernels_take_the_contract_order_then_only_constants(plugin):
    name = KERNEL_OF[plugin]
    params = _params(getattr(trt_kernels, name))
    runtime = [p for p, v in params.items() if "constexpr" not in str(v.annotation)]
    assert runtime == CONTRACTS[plugin].names()  # nothing after the outputs but compile-time constants
    assert list(params)[: len(runtime)] == runtime
    # every constant of the inner kernel passes through under the same name (a change there shows up here)
    inner = [p for p, v in _params(trt_kernels.INNER[name]).items() if "constexpr" in str(v.annotation)]
    constants = [p for p in params if p not in runtime]
    assert constants == [*trt_kernels.WRAPPER_CONSTANTS[name], *inner]


def test_launch_signatures_follow_the_contract():
    for plugin, launch in ((ROTATE_QUANTIZE, rotate_quantize_launch(RQ)), (LOWBIT_GEMM, lowbit_gemm_launch(GEMM))):
        runtime = {k: v for k, v in launch.signature.items() if v != "constexpr"}
        assert list(runtime) == CONTRACTS[plugin].names()
        kinds = ["scalar" if v == "i32" else "pointer" for v in runtime.values()]
        assert kinds == [p["kind"] for p in CONTRACTS[plugin].params()]
        assert all(v.startswith("*") for k, v in runtime.items() if k != "M")
        assert set(launch.constants) == {k for k, v in launch.signature.items() if v == "constexpr"}
    assert rotate_quantize_launch(RQ).signature["codes"] == "*u8"
    assert isinstance(rotate_quantize_launch(RQ).constants["STEP"], float)  # TensorRT passes no float scalars


def test_gemm_tactics_are_numbered_from_one_and_distinct():
    tactics = lowbit_gemm_tactics(GEMM)
    assert list(tactics) == list(range(1, len(tactics) + 1))
    assert all(a != b for i, a in tactics.items() for j, b in tactics.items() if i < j)
    assert tactic_launch(tactics, 0) is tactics[1] and tactic_launch(tactics, len(tactics)) is tactics[len(tactics)]
    with pytest.raises(UserError, match="plugin tactic 99 is not one of the offered tactics \\[1"):
        tactic_launch(tactics, 99)


def _function_args(tree, name):
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return [a.arg for a in fn.args.args]


def test_plugin_definitions_declare_every_attribute_in_node_order():
    """TensorRT calls aot_impl(*inputs, *attributes in the node's order, outputs, tactic): the definitions (read as
    source: TensorRT cannot be imported here) must list the attribute dataclass's fields in order."""
    tree = ast.parse((Path(trt_kernels.__file__).parent / "trt_plugins.py").read_text())
    for prefix, cls, inputs in (("rotate_quantize", RotateQuantizeAttrs, trt_ops.ROTATE_QUANTIZE_INPUTS),
                                ("lowbit_gemm", LowbitGemmAttrs, trt_ops.LOWBIT_GEMM_INPUTS)):
        fields = [f.name for f in dataclasses.fields(cls)]
        aot = _function_args(tree, f"{prefix}_aot")
        assert aot[len(inputs):] == [*fields, "outputs", "tactic"]
        assert len(aot) == len(inputs) + len(fields) + 2
        assert _function_args(tree, f"{prefix}_desc")[len(inputs):] == fields
        assert _function_args(tree, f"{prefix}_autotune")[len(inputs):] == [*fields, "outputs"]
        assert _function_args(tree, f"{prefix}_impl")[len(inputs):] == [*fields, "outputs", "stream", "tactic"]


def test_lowering_writes_attributes_in_dataclass_order():
    node = ir.Node("qdit4sr", ROTATE_QUANTIZE, [], ir.convenience.convert_attributes(RQ.to_attributes()))
    names = list(node.attributes)
    assert names[: len(dataclasses.fields(RotateQuantizeAttrs))] == [f.name for f in dataclasses.fields(RQ)]


def test_entry_check_names_the_limit():
    good = [EntryParam(".u64", True, f"p{i}") for i in range(10)] + [EntryParam(".u32", False, "m"),
                                                                     EntryParam(".u64", True, "y")]
    contract = CONTRACTS[LOWBIT_GEMM]
    check_entry(contract, good, MAX_DYNAMIC_SHARED_BYTES, PTX_ISA, "k")
    with pytest.raises(UserError, match="needs 65536 bytes of dynamic shared memory.*at most 49152"):
        check_entry(contract, good, 65536, PTX_ISA, "k")
    with pytest.raises(UserError, match="declares 14 parameters; TensorRT passes 12"):
        check_entry(contract, good + [EntryParam(".u64", True, "s0"), EntryParam(".u64", True, "s1")], 0, PTX_ISA, "k")
    swapped = good[:10] + [good[11], good[10]]  # outputs before M: not the contract order
    with pytest.raises(UserError, match=r"parameter 10 \(.u64 pointer\) is not what TensorRT passes there "
                                        r"\(M, a scalar\)"):
        check_entry(contract, swapped, 0, PTX_ISA, "k")
    with pytest.raises(UserError, match="PTX ISA 9.4 is newer than the supported 8.4"):
        check_entry(contract, good, 0, (9, 4), "k")


def test_rows_the_plugins_assume_aligned_are_checked_at_build():
    """The plugins' PTX assumes 16-byte aligned tensors (trt_contract's alignment rule), so every row the kernels
    read or write as vectors must be a multiple of 16 bytes; a shape that is not is refused in one line before
    anything compiles."""
    from qdit4sr_export.plugins.trt_aot import build_plugin_ptx

    assert TENSOR_ALIGNMENT == 16
    assert row_bytes(lowbit_gemm_launch(GEMM)) == {"codes": 768, "w_codes": 3072, "y": 24576}
    assert row_bytes(rotate_quantize_launch(RQ)) == {"x": 6144, "codes": 768}
    floats = LowbitGemmAttrs(k=1538, n=64, abits=0, wbits=4)  # float z rows: 4 x 1538 = 6152 bytes
    assert row_bytes(lowbit_gemm_launch(floats)) == {"z": 6152, "w_codes": 32, "y": 256}
    for attrs, name, size in ((LowbitGemmAttrs(k=1544, n=64, abits=4, wbits=4), "codes", 772), (floats, "z", 6152),
                              (LowbitGemmAttrs(k=64, n=1544, abits=8, wbits=8), "w_codes", 1544)):
        with pytest.raises(UserError, match=f"rows of {name} are {size} bytes, not a multiple of 16"):
            build_plugin_ptx(lowbit_gemm_launch(attrs))
    with pytest.raises(UserError, match="rows of x are 1544 bytes"):
        build_plugin_ptx(rotate_quantize_launch(RotateQuantizeAttrs(n=386, bits=8)))


def test_driver_isa_table_matches_tritons():
    from triton.backends.nvidia.compiler import ptx_get_version

    for cuda in ("12.0", "12.4", "12.5", "12.6", "12.8", "12.9", "13.0", "13.4"):
        major, minor = max_ptx_isa(tuple(int(x) for x in cuda.split(".")))
        assert major * 10 + minor == ptx_get_version(cuda), cuda


def test_driver_and_gpu_mismatches_are_one_line_errors_naming_both():
    check_driver(PTX_ISA, (12, 4), "engines")
    with pytest.raises(UserError, match=r"need PTX ISA 8.4 .*this driver is CUDA 12.2 \(PTX ISA 8.2\)") as err:
        check_driver(PTX_ISA, (12, 2), "engines")
    assert "\n" not in str(err.value)
    check_capability("sm_90a", (9, 0), "engines")
    check_capability("sm_90", (10, 0), "engines")  # plain PTX JIT-compiles for later GPUs
    with pytest.raises(UserError, match=r"sm_90a \(compute capability 9.0\); this GPU is 10.0"):
        check_capability("sm_90a", (10, 0), "engines")
    with pytest.raises(UserError, match=r"sm_90 \(compute capability 9.0\+\); this GPU is 8.9"):
        check_capability("sm_90", (8, 9), "engines")
    check_target_isa("sm_90a", "build")
    with pytest.raises(UserError, match="sm_100a needs PTX ISA 8.6; the plugins are compiled at PTX ISA 8.4"):
        check_target_isa("sm_100a", "build")
