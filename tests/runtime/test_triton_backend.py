"""The triton backend (kernels interpreted on the CPU here): same results as ONNX Runtime on the same engine
set, refusals up front, and the registry/CLI hooks."""

import importlib.util
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import rehash_engine_set
from qdit4sr_export.plugins.triton_env import interpreting
from qdit4sr_export.runtime.backends import OrtRunner
from qdit4sr_export.runtime.engine_set import EngineSet, VariantInfo
from qdit4sr_export.runtime.registry import get_backend

from qdit4sr_export.cli import main
from qdit4sr_export.engine.format import WeightsFile
from qdit4sr_export.errors import UserError
from qdit4sr_export.report.compare import error_stats

#: These tests run the kernels in Triton's CPU interpreter (CI); on a GPU the -m gpu tests cover the backend.
on_cpu = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")
MIN_SQNR_VS_ORT = 95.0  # measured 102.8 and 133.0 dB (variants 0 and 5): float rounding only


def _inputs(cfg, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg["in_channels"], side, side, generator=g)
    return (x, torch.randn(x.shape, generator=g), torch.randn(1, 4, cfg["joint_attention_dim"], generator=g),
            torch.randn(1, cfg["pooled_projection_dim"], generator=g))


@pytest.fixture(scope="module")
def w8_runners(engine_sets):
    _, w8, _ = engine_sets
    engine = EngineSet.load(w8)
    backend = get_backend("triton")
    backend.check_device("cpu")
    return engine, backend.open(engine, device="cpu"), OrtRunner(engine)


@on_cpu
def test_matches_ort_on_the_first_and_last_variant(w8_runners):
    """VaTMP W8A7/8 engine set: each variant's bits, UINT8 weights, int8 activations, H-SVD branches."""
    engine, triton_runner, ort = w8_runners
    args = _inputs(engine.config())
    for v in (engine.variants[0], engine.variants[-1]):
        t = torch.tensor([engine.timesteps[v.steps[0]]])
        triton_runner.activate(v.index)
        ort.activate(v.index)
        got = triton_runner.infer(*args, t)
        assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
        assert error_stats(ort.infer(*args, t).numpy(), got.numpy())["sqnr_db"] >= MIN_SQNR_VS_ORT
    assert {layer.abits for layer in triton_runner.layers.values()} <= {7, 8}


@on_cpu
def test_a_latent_over_the_positional_crop_is_refused(w8_runners, monkeypatch):
    engine, triton, _ = w8_runners
    monkeypatch.setitem(engine.manifest, "max_latent", 8)
    triton.activate(engine.variants[0].index)
    with pytest.raises(UserError, match="latent 16x16 is larger than this engine set accepts"):
        triton.infer(*_inputs(engine.config(), side=16), torch.tensor([500.0]))


def _stored_layer(folder, tensors, row, name, k, n, bits):
    """One layer's tensors written as the engine writer writes weights.bin, read back into a KernelLinear."""
    from qdit4sr_export.runtime.kernel_model import WeightReader, kernel_linear

    from qdit4sr_export.engine.writer import write_weights

    layout = write_weights(folder, dict(sorted(tensors.items())))
    weights = WeightsFile(folder / "weights.bin", layout.values())
    engine = SimpleNamespace(weights=weights, folder=folder, plan_path=None,
                             variants=(VariantInfo(0, "v.onnx", (0,), ((0.0, 1000.0),), {name: bits}),))
    layer = kernel_linear(engine, WeightReader(engine), name, row, n, k, torch.device("cpu"), {})
    layer.select(*bits)
    return layer, weights


@on_cpu
def test_int4_layer_reads_the_engine_sets_bytes(tmp_path):
    """A W4A4 layer stored by the ORT lowering and read back through weights.bin's index: packed INT4 (K, N/2)
    weights, rotation, H-SVD branches, bias; matches the simulation's FakeQuantLinear."""
    import onnx_ir as ir
    from qdit4sr_export.passes.lower_ort import _quantize

    from qdit4sr_export.quant.hadamard import Rotation
    from qdit4sr_export.quant.hsvd import hsvd, select_block
    from qdit4sr_export.quant.plan import LayerPlan, QuantPlan
    from qdit4sr_export.quant.simulate import FakeQuantLinear, StepState

    k, n, name = 192, 96, "blk.lin"
    g = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=g) / k ** 0.5)
    rot = Rotation(k, seed=0)
    lp = LayerPlan(k, n, 4, (4,), rotation=rot.to_dict(), svd_rank=8, local_block=select_block(n, k, 1))
    plan = QuantPlan("qdit4sr", {}, {}, {}, (500.0,), {name: lp})
    dec = hsvd(rot.apply(linear.weight.detach()), rank=8, local_rank=1, block=lp.local_block)
    stored = _quantize(plan, name, 4, dec.residual.numpy())
    f32 = lambda t: ir.tensor(np.ascontiguousarray(t.detach().float().numpy()))
    tensors = {stored.codes.name: stored.codes, stored.scale.name: stored.scale,
               f"{name}.svd_g.b": f32(dec.global_.b.T), f"{name}.svd_g.a": f32(dec.global_.a.T),
               f"{name}.svd_l.v": f32(dec.local.v), f"{name}.svd_l.u": f32(dec.local.u * dec.local.s[..., None]),
               f"{name}.bias": f32(linear.bias)}
    row = {"kind": "int", "codes": {"4": stored.codes.name}, "scales": {"4": stored.scale.name}, "group_size": None,
           "clip": "gaussian", "rotation": lp.rotation, "smooth": None, "svd_g": [f"{name}.svd_g.b", f"{name}.svd_g.a"],
           "svd_l": [f"{name}.svd_l.v", f"{name}.svd_l.u"], "bias": f"{name}.bias"}
    layer, weights = _stored_layer(tmp_path, tensors, row, name, k, n, (4, 4))
    assert weights.entries[stored.codes.name].dtype == "INT4"
    assert weights.array(stored.codes.name).shape == (k, n // 2)
    state = StepState()
    state.step = 0
    sim = FakeQuantLinear(linear, lp, state, name=name)
    x = torch.randn(2, 37, k, generator=g)
    with torch.no_grad():
        got, want = layer(x), sim(x)
    assert got.shape == (2, 37, n)
    assert error_stats(want.numpy(), got.numpy())["sqnr_db"] > 120  # float rounding only (measured 131.5 dB)


@on_cpu
def test_float_stored_weights_run_the_torch_gemm_fallback(tmp_path):
    """A float-stored weight (LRQ-DiT's twin-log levels): the kernel quantizes the activations per group,
    torch multiplies (dequantized codes @ W) and adds the same epilogue."""
    import onnx_ir as ir
    from qdit4sr_export.plugins.activation_spec import ActivationSpec
    from qdit4sr_export.plugins.rotate_quantize_reference import rotate_quantize_reference
    from qdit4sr_export.runtime.kernel_linear import KernelLinear

    from qdit4sr_export.quant.gaussian import fake_quantize_tokens
    from qdit4sr_export.quant.hadamard import Rotation

    k, n, name = 128, 48, "blk.tlq"
    g = torch.Generator().manual_seed(5)
    w, b, a, bias = (torch.randn(k, n, generator=g), torch.randn(k, 4, generator=g), torch.randn(4, n, generator=g),
                     torch.randn(n, generator=g))
    f32 = lambda t: ir.tensor(np.ascontiguousarray(t.numpy()))
    tensors = {f"{name}.wq3": f32(w), f"{name}.svd_g.b": f32(b), f"{name}.svd_g.a": f32(a), f"{name}.bias": f32(bias)}
    rot = Rotation(k, seed=2)
    row = {"kind": "float", "codes": {"3": f"{name}.wq3"}, "scales": {}, "group_size": 32, "clip": "minmax",
           "rotation": rot.to_dict(), "smooth": None, "svd_g": [f"{name}.svd_g.b", f"{name}.svd_g.a"], "svd_l": None,
           "bias": f"{name}.bias"}
    layer, _ = _stored_layer(tmp_path, tensors, row, name, k, n, (3, 6))
    assert isinstance(layer, KernelLinear)
    x = torch.randn(21, k, generator=g)
    z = rotate_quantize_reference(ActivationSpec(k, rot), x, None, store_z=True).z
    want = fake_quantize_tokens(z, 6, clip="minmax", group_size=32) @ w + (z @ b) @ a + bias
    with torch.no_grad():
        assert error_stats(want.numpy(), layer(x).numpy())["sqnr_db"] > 120  # float rounding (measured 129.5 dB)


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    rehash_engine_set(dst)
    return EngineSet.load(dst)


@on_cpu
def test_uncovered_paths_are_refused_naming_the_layer(engine_sets, tmp_path):
    fp, w8, _ = engine_sets
    backend = get_backend("triton")
    with pytest.raises(UserError, match="FP engine set"):
        backend.open(EngineSet.load(fp), device="cpu")
    first = sorted(EngineSet.load(w8).quantized_layers)[0]

    def unknown_kind(m):
        m["quantized_layers"][first]["kind"] = "nf4"

    with pytest.raises(UserError, match=f"layer '{first}'.*kind 'nf4'"):
        backend.open(_edited_copy(w8, tmp_path / "kind", unknown_kind), device="cpu")

    def missing_bits(m):
        m["variants"][0]["layers"][first]["wbits"] = 3

    with pytest.raises(UserError, match=f"layer '{first}'.*3 weight bits"):
        backend.open(_edited_copy(w8, tmp_path / "bits", missing_bits), device="cpu")

    def odd_groups(m):
        m["quantized_layers"][first]["group_size"] = 3

    with pytest.raises(UserError, match=f"layer '{first}'"):
        backend.open(_edited_copy(w8, tmp_path / "group", odd_groups), device="cpu")


def test_missing_cuda_or_triton_is_one_line(engine_sets, monkeypatch):
    _, w8, _ = engine_sets
    backend = get_backend("triton")
    assert backend.reads == "engine set" and backend.devices == ("cpu", "cuda")
    if not torch.cuda.is_available():
        result = CliRunner().invoke(main, ["compare", str(w8), str(w8), "--backend", "triton", "--device", "cuda"])
        assert result.exit_code == 2 and "no CUDA device" in result.output
        assert len(result.output.strip().splitlines()) == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    with pytest.raises(UserError, match="needs the triton package.*gpu"):
        backend.check_device("cpu")
    result = CliRunner().invoke(main, ["run", "--list-backends"])
    assert "triton" in result.output and "engine set" in result.output


def test_compare_resolves_the_backend_before_loading_anything(tmp_path):
    (tmp_path / "fp").mkdir()
    (tmp_path / "engine").mkdir()
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "fp"), str(tmp_path / "engine"), "--backend", "torch"])
    assert result.exit_code == 2 and "not engine sets" in result.output


def test_polygraphy_adapter_checks_real_feeds():
    """polygraphy's Comparator checks feeds against the adapter's input metadata (every dimension dynamic) and
    sums its inference times."""
    from qdit4sr_export.report.poly_runner import BackendVariantRunner

    calls = []

    class Fake:
        name = "fake"

        def activate(self, v):
            calls.append(("activate", v))

        def infer(self, *args):
            return args[0] * 2

        def deactivate(self):
            calls.append(("deactivate",))

    feed = {"hidden_states": np.ones((1, 2, 4, 4), np.float32), "lr_latent": np.ones((1, 2, 4, 4), np.float32),
            "encoder_hidden_states": np.ones((1, 3, 5), np.float32),
            "pooled_projections": np.ones((1, 6), np.float32), "timestep": np.ones(1, np.float32)}
    from polygraphy.comparator import Comparator

    results = Comparator.run([BackendVariantRunner(Fake(), 3, "x")], data_loader=[feed, feed], warm_up=0)
    outs = results[0][1]
    assert len(outs) == 2 and np.array_equal(outs[0]["sample"], 2 * feed["hidden_states"])
    assert calls == [("activate", 3), ("deactivate",)]


@pytest.mark.slow
@on_cpu
@pytest.mark.parametrize("gptq", [False, True])
def test_grouped_and_smoothed_qdit4sr_matches_ort(pipeline_folder, tmp_path, gptq):
    """Q-DiT4SR's options (issue 19) on the kernels: smoothing before the rotation, group scales in the GEMM epilogue
    and the activation quantizer, H-SVD branches, W4A4; with GPTQ's stored codes and scales (issue 33)."""
    from qdit4sr_export.compiler.build import build_engine_set
    from qdit4sr_export.quant.calibration import CalibrationInputs
    from qdit4sr_export.quant.methods import get_method, make_config

    model, folder = pipeline_folder
    method = get_method("qdit4sr")
    calib = CalibrationInputs.with_null_prompt(
        torch.randn(2, 12, 8, 8, generator=torch.Generator().manual_seed(1)), model.config)
    plan = method.build(model, make_config(method, {"wbits": 4, "abits": 4, "steps": 2, "group_size": 32,
                                                    "smoothing": True, "alpha_points": 2, "gptq": gptq}),
                        calibration=calib)
    assert any(lp.stored_weight for lp in plan.layers.values()) == gptq
    assert any(lp.smoothing for lp in plan.layers.values()) and all(lp.group_size == 32 for lp in plan.layers.values())
    build_engine_set(model, folder, tmp_path / "set", plan=plan, steps=2, max_variants=None, build_info={},
                     progress=False)
    engine = EngineSet.load(tmp_path / "set")
    runner = get_backend("triton").open(engine, device="cpu")
    ort = OrtRunner(engine)
    args = _inputs(engine.config())
    t = torch.tensor([engine.timesteps[engine.variants[0].steps[0]]])
    runner.activate(0)
    ort.activate(0)
    specs = [layer.quantize.spec for layer in runner.layers.values() if hasattr(layer, "quantize")]
    assert any(spec.smooth is not None for spec in specs) and {spec.group_size for spec in specs} == {32}
    got = runner.infer(*args, t)
    assert error_stats(ort.infer(*args, t).numpy(), got.numpy())["sqnr_db"] >= MIN_SQNR_VS_ORT
