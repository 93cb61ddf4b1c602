"""The trt target end to end on the CLI where TensorRT is absent: build writes the plugin graphs and says how to
build engines; run and compare use the CPU reference of the plugin ops; TensorRT-only commands fail in one line."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qdit4sr_export.cli import main
from qdit4sr_export.compiler.trt_engines import tensorrt_available

pytestmark = pytest.mark.skipif(tensorrt_available(), reason="checks the behaviour where TensorRT is not installed")


def invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)])


@pytest.fixture(scope="module")
def trt_set(pipeline_folder, tmp_path_factory):
    _, folder = pipeline_folder
    out = tmp_path_factory.mktemp("trtcli") / "w4"
    result = invoke("build", folder, "--wbits", 4, "--abits", 4, "--grid-steps", 6, "--target", "trt",
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert "TensorRT is not installed here" in result.output and "qdit4sr-export engines" in result.output
    return out


def test_trt_graphs_get_no_onnx_runtime_rewrites(trt_set):
    """ONNX Runtime's fused ops (attention, integer GEMMs) are the ort target's; TensorRT fuses by itself."""
    import onnx

    graphs = [onnx.load(str(f), load_external_data=False).graph for f in trt_set.glob("variant_*.onnx")]
    ops = {n.op_type for g in graphs for n in g.node}
    assert {"RotateQuantize", "LowbitGemm", "Softmax"} <= ops
    assert not {"MultiHeadAttention", "MatMulIntegerToFloat", "MatMulInteger"} & ops


def test_trt_set_runs_and_compares_on_the_reference_ops(pipeline_folder, trt_set, tmp_path):
    _, folder = pipeline_folder
    manifest = json.loads((trt_set / "manifest.json").read_text())
    assert manifest["target"] == {"name": "trt", "options": {"precision": "fp16", "engines": "auto", "max_batch": 2,
                                                             "min_latent_side": 32, "opt_latent_side": 64, "max_latent_side": 128},
                                  "passes": {"graph": ["fold-hadamard(online=False)", "insert-hsvd(emit=False)",
                                                       "annotate-bits"],
                                             "per_variant": ["split-variants", "lower-trt"], "final": []}}
    assert "engines" not in manifest
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
    result = invoke("run", trt_set, src, "-o", tmp_path / "out.png", "--grid-steps", 2)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (64, 64)
    result = invoke("compare", folder / "transformer", trt_set, "--json", "--per-variant", 1, "--min-sqnr", 10,
                    "--min-cosine", 0.95)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and all(v["sqnr_db"] > 10 for v in report["variants"])


def test_tensorrt_only_paths_are_one_line_errors(trt_set, engine_sets, tmp_path):
    result = invoke("engines", trt_set)
    assert result.exit_code == 2 and "TensorRT is not installed" in result.output and "[trt]" in result.output
    _, w8, _ = engine_sets
    result = invoke("engines", w8)
    assert result.exit_code == 2 and "built for target 'ort'" in result.output
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    result = invoke("run", trt_set, src, "-o", tmp_path / "o.png", "--backend", "trt", "--device", "cuda")
    assert result.exit_code == 2 and "TensorRT is not installed" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()
    result = invoke("build", trt_set, "--target", "trt", "-T", "precision=fp8", "-o", tmp_path / "y")
    assert result.exit_code == 2 and "precision must be one of fp16, fp32" in result.output
    result = invoke("build", trt_set, "--target", "trt", "-T", "precison=fp32", "-o", tmp_path / "y")
    assert result.exit_code == 2 and "has no option 'precison'" in result.output


@pytest.mark.slow
def test_example_model_trt_graph_compares_like_its_ort_build(tmp_path):
    """The example model's W4A4 plugin graph (fp16, the default) on the reference ops: compare reports, per input,
    what it reports for the ort build of the same options (measured on the shipped model: 23.29 / 9.69 dB, cosine
    0.9977 / 0.9499, against 23.26 / 9.45 dB, cosine 0.9977 / 0.9477, at t = 491 / 9)."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "dit4sr-tiny"
    per_input = {}
    for target in ("ort", "trt"):
        out = tmp_path / target
        result = invoke("build", example, "--wbits", "auto", "--abits", "auto", "--abits-budget", 4, "--calib-count", 8, "--target", target,
                        "-o", out)
        assert result.exit_code == 0, result.output
        result = invoke("compare", example / "transformer", out, "--min-sqnr", 1, "--min-cosine", 0.6, "--json")
        assert result.exit_code == 0, result.output
        per_input[target] = [p for v in json.loads(result.stdout)["variants"] for p in v["per_input"]]
    for ort, trt in zip(per_input["ort"], per_input["trt"], strict=True):
        assert ort["timestep"] == trt["timestep"]
        assert abs(ort["sqnr_db"] - trt["sqnr_db"]) < 0.35 and abs(ort["cosine"] - trt["cosine"]) < 0.003
