"""LowerTrtPass and the ``trt`` target: the plugin graph's structure, and its numbers through the ONNX Runtime
reference ops against the simulation of the same plan (what TensorRT would parse, checked without TensorRT)."""

import dataclasses

import onnx
import pytest
from helpers import seeded_model, simulation_sqnr_per_step
from qdit4sr_export.passes.lower_trt import check_supported
from qdit4sr_export.plugins.trt_ops import DOMAIN, LOWBIT_GEMM, NONE, ROTATE_QUANTIZE
from qdit4sr_export.runtime.engine_set import EngineSet

from qdit4sr_export.compiler.build import build_engine_set
from qdit4sr_export.compiler.targets import get_target
from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.methods import get_method, make_config

STEPS = 4


@pytest.fixture(scope="module")
def tiny():
    return seeded_model("dit4sr-tiny").eval()


def _plan(model, bits):
    method = get_method("qdit4sr")
    return method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": STEPS}))


@pytest.fixture(scope="module")
def trt_sets(tiny, tmp_path_factory):
    """W4A4 and W8A8 plugin graphs of dit4sr-tiny at fp32, and W4A4 at fp16."""
    out = tmp_path_factory.mktemp("trt")
    sets = {}
    for bits, precision in ((4, "fp32"), (8, "fp32"), (4, "fp16")):
        plan = _plan(tiny, bits)
        folder = out / f"w{bits}-{precision}"
        build_engine_set(tiny, "in-memory", folder, plan=plan, steps=STEPS, max_variants=None, build_info={},
                         progress=False, target="trt", target_options=get_target("trt").configure(
                             {"precision": precision}))
        sets[(bits, precision)] = (folder, plan)
    return sets


def test_every_quantized_linear_becomes_two_plugin_nodes(trt_sets):
    folder, plan = trt_sets[(4, "fp32")]
    engine = EngineSet.load(folder)
    assert engine.manifest["target"]["name"] == "trt"
    proto = onnx.load(str(folder / engine.variants[0].file), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    assert not {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul"} & set(ops)
    rq = [n for n in proto.graph.node if n.op_type == ROTATE_QUANTIZE]
    gemm = [n for n in proto.graph.node if n.op_type == LOWBIT_GEMM]
    assert len(rq) == len(gemm) == engine.manifest["variants"][0]["lowering"]["plugin"] > 0
    assert {n.domain for n in rq + gemm} == {DOMAIN} and any(o.domain == DOMAIN for o in proto.opset_import)
    allowed = {onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING}
    for node in rq + gemm:
        attrs = {a.name: a for a in node.attribute}
        assert all(a.type in allowed for a in attrs.values())
        assert attrs["plugin_namespace"].s == b"qdit4sr" and attrs["plugin_version"].s == b"1" and attrs["aot"].i == 1
    # every planned linear that the graph computes is lowered (dead ones are not traced), with its bias fused
    lowered = {n.name.split("/")[0] for n in gemm}
    assert lowered == {n for n, lp in plan.layers.items() if lp.active}
    assert all(dict((a.name, a.i) for a in n.attribute)["bias"] == 1 for n in gemm)
    # stored codes are UINT8 bytes (packed INT4 at 4 bits), scales float32; absent inputs the one placeholder
    inits = {t.name: t for t in proto.graph.initializer}
    for node in gemm:
        assert inits[node.input[3]].data_type == onnx.TensorProto.UINT8
        assert inits[node.input[4]].data_type == onnx.TensorProto.FLOAT
    assert NONE in inits and any(NONE in n.input for n in rq)


@pytest.mark.parametrize("bits, bound", [(4, 100.0), (8, 45.0)])
def test_reference_graph_tracks_the_simulation(tiny, trt_sets, bits, bound):
    """fp32 plugin graph through the reference ops: measured 126-127 dB at W4A4 (the same arithmetic). At W8A8 one
    step has 8-bit codes on rounding ties that float summation order flips, and how many flip depends on the CPU's
    kernels: 63-127 dB on an Intel Xeon, 50.6-127 dB on an AMD EPYC."""
    folder, plan = trt_sets[(bits, "fp32")]
    assert min(simulation_sqnr_per_step(tiny, folder, plan)) >= bound


def test_fp16_graph(tiny, trt_sets):
    """fp16 around the plugins (float32 inside them): measured 30-31 dB from the float32 simulation at W4A4, the
    fp16 rounding of activations moving a few 4-bit codes."""
    folder, plan = trt_sets[(4, "fp16")]
    engine = EngineSet.load(folder)
    proto = onnx.load(str(folder / engine.variants[0].file), load_external_data=False)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in proto.graph.input)
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and n.name.endswith(("/x32", "/y16"))]
    assert len(casts) == 2 * sum(n.op_type == LOWBIT_GEMM for n in proto.graph.node)
    assert min(simulation_sqnr_per_step(tiny, folder, plan)) >= 28.0


def test_plans_the_plugins_do_not_cover_are_refused(tiny):
    plan = _plan(tiny, 4)
    name = next(iter(plan.layers))
    tlq = dataclasses.replace(plan.layers[name], weight_format="tlq", tlq={"eta": 0.0})
    bad = dataclasses.replace(plan, layers={**plan.layers, name: tlq})
    with pytest.raises(UserError, match=f"layer '{name}'.*no TensorRT lowering"):
        check_supported(bad)
    outlier = dataclasses.replace(plan.layers[name], rotation={"kind": "outlier", "n": 64, "block": 32})
    with pytest.raises(UserError, match=f"layer '{name}'.*outlier rotation"):
        check_supported(dataclasses.replace(plan, layers={**plan.layers, name: outlier}))


@pytest.mark.slow
@pytest.mark.parametrize("gptq", [False, True])
def test_grouped_and_smoothed_plan_tracks_the_simulation(tiny, tmp_path, gptq):
    """Q-DiT4SR's options (issue 19) through the plugin graph: the smoothing vector and group size reach the
    RotateQuantize and LowbitGemm nodes, and the reference graph tracks the simulation; with GPTQ (issue 33) the
    plan's stored codes and scales are what the plugins get."""
    import torch

    from qdit4sr_export.quant.calibration import CalibrationInputs

    method = get_method("qdit4sr")
    calib = CalibrationInputs.with_null_prompt(
        torch.randn(2, tiny.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1)), tiny.config)
    plan = method.build(tiny, make_config(method, {"wbits": 4, "abits": 4, "steps": 2, "vatmp": False,
                                                   "group_size": 64, "smoothing": True, "alpha_points": 2,
                                                   "gptq": gptq}),
                        calibration=calib)
    assert any(lp.stored_weight for lp in plan.layers.values()) == gptq
    folder = tmp_path / "set"
    build_engine_set(tiny, "in-memory", folder, plan=plan, steps=2, max_variants=None, build_info={},
                     progress=False, target="trt", target_options=get_target("trt").configure({"precision": "fp32"}))
    proto = onnx.load(str(folder / EngineSet.load(folder).variants[0].file), load_external_data=False)
    rq = [n for n in proto.graph.node if n.op_type == ROTATE_QUANTIZE]
    attrs = [{a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT} for n in rq]
    assert {a["group_size"] for a in attrs} == {64} and any(a["smooth"] for a in attrs)
    assert min(simulation_sqnr_per_step(tiny, folder, plan)) >= 100.0


def test_plugin_configs_are_the_lowered_nodes(trt_sets):
    """``plugins/trt_configs.layer_attrs`` (what the PTX contract test and bench/ptx_report.py compile for a plan)
    gives exactly the attributes the lowering writes, node by node."""
    from qdit4sr_export.plugins.trt_configs import layer_attrs
    from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

    folder, plan = trt_sets[(4, "fp32")]
    proto = onnx.load(str(folder / EngineSet.load(folder).variants[0].file), load_external_data=False)
    nodes = {(n.name.split("/")[0], n.op_type): {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in proto.graph.node if n.domain == DOMAIN}
    assert nodes
    for (layer, op), attrs in nodes.items():
        if op != LOWBIT_GEMM:
            continue
        gemm = LowbitGemmAttrs.from_attributes(attrs)
        rq, gm = layer_attrs(plan.layers[layer], gemm.wbits, gemm.abits, bias=bool(gemm.bias))
        assert gm == gemm, layer
        assert rq == RotateQuantizeAttrs.from_attributes(nodes[(layer, ROTATE_QUANTIZE)]), layer
