"""``qdit4sr-export inspect``: per-layer report, totals, variant timeline, plots; FP sets and bad targets."""

import json
import shutil

from click.testing import CliRunner
from PIL import Image
from qdit4sr_export.passes.storage import layer_bytes

from qdit4sr_export.cli import main


def invoke(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_engine_set_report_and_plots(engine_sets, tmp_path):
    _, w8, plan = engine_sets
    result = invoke(w8, "--json", "--plots", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["schema"] == "qdit4sr-export/inspect" and rep["plan"]["method"] == "qdit4sr"
    by_name = {r["layer"]: r for r in rep["layers"]}
    assert set(by_name) == set(plan.layers)
    for name, lp in plan.layers.items():
        r = by_name[name]
        assert r["wbits"] == lp.wbits and r["abits"] == list(lp.abits) and r["bytes"] == layer_bytes(lp)
        assert r["svd_rank"] == lp.svd_rank
    assert abs(rep["plan"]["stored_mb"] * 1e6 - sum(r["bytes"] for r in rep["layers"])) <= 500  # MB, 3 decimals
    manifest = json.loads((w8 / "manifest.json").read_text())
    assert [t["variant"] for t in rep["timeline"]] == manifest["step_variant"]
    assert len(rep["plots"]) == 3
    for path in rep["plots"]:
        with Image.open(path) as img:
            assert img.format == "PNG"
    assert rep["plan"]["runs"] == {"start_sigma": 1.0, "steps": len(plan.timesteps), "source": "pipeline.json",
                                   "runs": [True] * len(plan.timesteps), "first_step": 0}
    text = invoke(w8).output
    assert "variant(s):" in text and "timeline:" in text and "Params" in text
    assert f"a run executes all {len(plan.timesteps)} grid steps: start sigma 1.0" in text


def test_steps_that_run_follow_the_engine_sets_pipeline(engine_sets, tmp_path):
    _, w8, plan = engine_sets
    copy = shutil.copytree(w8, tmp_path / "w8")
    settings = json.loads((copy / "pipeline.json").read_text())
    (copy / "pipeline.json").write_text(json.dumps({**settings, "start_sigma": 0.5}))
    runs = json.loads(invoke(copy, "--json").stdout)["plan"]["runs"]
    first = next(i for i, t in enumerate(plan.timesteps) if t / 1000 <= 0.5 + 1e-6)
    assert 0 < first and runs["first_step"] == first and runs["runs"] == [i >= first for i in range(len(plan.timesteps))]
    n = len(plan.timesteps)
    assert f"grid steps {first}-{n - 1} of {n} (earlier ones never run): start sigma 0.5" in invoke(copy).output


def test_fp_engine_set_and_bad_targets(engine_sets, tmp_path):
    fp, _, _ = engine_sets
    result = invoke(fp)
    assert result.exit_code == 0 and "no quantization plan" in result.output
    result = invoke(fp, "--plots", tmp_path / "p")
    assert result.exit_code == 2 and "no plan to plot" in result.output
    (tmp_path / "empty").mkdir()
    assert "not an engine set" in invoke(tmp_path / "empty").output
    assert "does not exist" in invoke(tmp_path / "nothing.json").output


def test_plan_file_with_a_chosen_layer(engine_sets, tmp_path):
    _, w8, plan = engine_sets
    layer = next(n for n, lp in plan.layers.items() if lp.act_variance)
    result = invoke(w8 / "plan.json", "--plots", tmp_path, "--layer", layer, "--no-layers")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "act_variance.png").is_file() and "variant(s)" not in result.output
    assert "not a layer of the plan" in invoke(w8 / "plan.json", "--plots", tmp_path, "--layer", "nope").output
