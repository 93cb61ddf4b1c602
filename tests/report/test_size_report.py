"""The one size breakdown: every byte of weights.bin in a category, each category equal to what the plan stores."""

from click.testing import CliRunner
from qdit4sr_export.passes.storage import branch_bytes, weight_bytes

from qdit4sr_export.cli import main
from qdit4sr_export.engine.format import read_manifest
from qdit4sr_export.report.size_report import format_breakdown, size_breakdown


def test_breakdown_adds_up_and_matches_the_plan(engine_sets):
    fp, w8, plan = engine_sets
    manifest = read_manifest(w8)
    b = size_breakdown(manifest)
    assert sum(b["weights"].values()) + b["weights_padding"] == b["weights_file"]
    assert 0 <= b["weights_padding"] < 64 * len(manifest["weights"]["tensors"])
    lowered = [plan.layers[n] for n in manifest["quantized_layers"]]
    assert b["weights"]["codes"] + b["weights"]["scales"] == sum(weight_bytes(lp, lp.wbits) for lp in lowered)
    assert b["weights"]["low_rank"] == sum(branch_bytes(lp) for lp in lowered) > 0
    assert b["weights"]["rotation"] > 0 and b["weights"]["unquantized"] > 0
    assert b["total"] == sum(f["bytes"] for f in manifest["files"])
    assert b["fp32_bytes"] == 4 * manifest["model"]["parameters"] and b["checkpoint_bytes"] > 0
    # the FP set stores no quantized weights: everything is an unquantized parameter
    fb = size_breakdown(read_manifest(fp))
    assert fb["weights"]["unquantized"] == sum(fb["weights"].values()) > 0
    text = "\n".join(format_breakdown(b))
    assert "quantized weight codes" in text and "FP low-rank branches" in text and "FP32 model" in text


def test_inspect_shows_the_same_breakdown(engine_sets):
    _, w8, _ = engine_sets
    result = CliRunner().invoke(main, ["inspect", str(w8), "--no-layers"])
    assert result.exit_code == 0, result.output
    assert "\n".join(format_breakdown(size_breakdown(read_manifest(w8)))) in result.output
    assert "paper accounting: Params" in result.output
