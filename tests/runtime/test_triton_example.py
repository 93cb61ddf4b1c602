"""The triton backend on engine sets of the shipped example model, built as the README does (slow: two builds
with calibration, then whole interpreted steps; run with ``pytest -m slow tests/runtime/test_triton_example.py``).

Agreement with ONNX Runtime is limited by rounding ties, not by the kernels: an activation whose z / scale lies
within float rounding of a rounding midpoint can land on either side in any two implementations (ORT against
the torch simulation included), and one such code in an early layer moves the whole step. At 8 bits (codes up
to 127) that happens every few steps; at 4 bits rarely. The bounds sit under the values measured on these
inputs (see each assert)."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from qdit4sr_export.plugins.triton_env import interpreting
from qdit4sr_export.runtime.backends import OrtRunner
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.registry import get_backend

from qdit4sr_export.cli import main
from qdit4sr_export.report.compare import error_stats

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dit4sr-tiny"
BUILDS = {"w4a4": ["--wbits", "auto", "--abits", "auto", "--abits-budget", "4"],
          "w8a8": ["--wbits", "8", "--abits", "auto", "--abits-budget", "8"]}
# Measured per step on these inputs (8x8 latent, t = 900 and 300; bench/gpu_agreement.py, the six-stage v3 model):
# W4A4 41.6 / 128.6 dB, W8A8 60.1 / 128.6 dB. At W4A4, t = 900 triton is the odd one out (ORT against the
# simulation: 128.1 dB); at a 16x16 latent it is ORT (triton against the simulation 129.2 dB at t = 300): a tie,
# whichever side it falls. W8A8 codes on rounding ties flip with the CPU's float summation order (53.0 dB at
# t = 900 on an AMD EPYC in an earlier run). A step without a tie agrees to float precision: BEST_SQNR.
MIN_SQNR = {"w4a4": 38.0, "w8a8": 48.0}
BEST_SQNR = 120.0


@pytest.fixture(scope="module")
def example_sets(tmp_path_factory):
    out = tmp_path_factory.mktemp("example_sets")
    for name, args in BUILDS.items():
        result = CliRunner().invoke(main, ["build", str(EXAMPLE), *args, "-o", str(out / name)])
        assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("name", list(BUILDS))
def test_matches_ort_per_step(example_sets, name):
    engine = EngineSet.load(example_sets / name)
    triton_runner, ort = get_backend("triton").open(engine, device="cpu"), OrtRunner(engine)
    cfg = engine.config()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg["in_channels"], 8, 8, generator=g)
    args = (x, torch.randn(x.shape, generator=g), torch.randn(1, 4, cfg["joint_attention_dim"], generator=g),
            torch.randn(1, cfg["pooled_projection_dim"], generator=g))
    sqnrs = []
    for t in (900.0, 300.0):
        v = engine.variant_for_timestep(t).index
        triton_runner.activate(v)
        ort.activate(v)
        ts = torch.tensor([t])
        sqnrs.append(error_stats(ort.infer(*args, ts).numpy(), triton_runner.infer(*args, ts).numpy())["sqnr_db"])
    assert min(sqnrs) >= MIN_SQNR[name] and max(sqnrs) >= BEST_SQNR, (name, sqnrs)


def test_compare_cli_triton_reports_what_ort_reports(example_sets):
    """compare --backend triton: the same accuracy against the FP model as the ORT backend on the same inputs.
    Measured: SQNR 23.818 against 23.791 dB, max abs 0.3787 against 0.3675 (3.0%): the SQNR summarises every
    element, while the worst element moves with one activation code on a rounding tie (the module docstring), which
    the kernels' float summation order decides (the rotation's dots as three tf32 parts here)."""
    runs = {}
    for backend in ("ort", "triton"):
        result = CliRunner().invoke(main, ["compare", str(EXAMPLE), str(example_sets / "w4a4"), "--backend", backend,
                                           "--per-variant", "1", "--min-sqnr", "0", "--min-cosine",
                                           "0", "--json"])
        assert result.exit_code == 0, result.output
        runs[backend] = json.loads(result.output)
    assert runs["triton"]["backend"] == "triton"
    for a, b in zip(runs["ort"]["variants"], runs["triton"]["variants"]):
        assert abs(a["sqnr_db"] - b["sqnr_db"]) < 0.05 and abs(a["max_abs"] - b["max_abs"]) < 0.05 * a["max_abs"]
