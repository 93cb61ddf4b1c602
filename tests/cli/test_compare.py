"""``qdit4sr-export compare``: W8A8 passes, a damaged engine fails and names the damaged layer; bad input."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import overwrite_tensor
from safetensors.numpy import save_file

from qdit4sr_export.cli import main


def invoke(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def test_w8a8_passes_with_layers(pipeline_folder, engine_sets):
    _, folder = pipeline_folder
    _, w8, _ = engine_sets
    result = invoke(folder / "transformer", w8, "--json", "--layers")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "qdit4sr-export/compare" and report["passed"]
    manifest = json.loads((w8 / "manifest.json").read_text())
    assert len(report["variants"]) == len(manifest["variants"])
    assert report["inputs"].startswith("packaged LR photos")  # the set has an autoencoder: real latents
    for v in report["variants"]:
        steps = manifest["variants"][v["index"]]["steps"]
        assert v["sqnr_db"] >= 57 and v["cosine"] >= 0.99999 and v["inputs"] == min(2, len(steps))
        # pipeline.json runs every grid step from pure noise: inputs sit at the variant's own steps
        assert v["in_run"] and set(v["timesteps"]) <= {manifest["timesteps"][s] for s in steps}
        assert [r["timestep"] for r in v["per_input"]] == v["timesteps"]
    layers = report["layers"]["0"]
    assert layers["first_below_threshold"] is None and len(layers["all"]) > 20


def test_default_inputs_follow_the_pipeline(pipeline_folder, engine_sets, tmp_path):
    """A pipeline that starts at sigma 0.3 runs only the late steps: inputs sit there, and variants it never
    reaches are still checked at their own steps, marked as not in the run."""
    from helpers import rehash_engine_set
    from qdit4sr_export.runtime.engine_set import EngineSet

    from qdit4sr_export.report.compare import run_timesteps

    _, folder = pipeline_folder
    _, w8, _ = engine_sets
    late = tmp_path / "late"
    shutil.copytree(w8, late)
    cfg = json.loads((late / "pipeline.json").read_text())
    (late / "pipeline.json").write_text(json.dumps({**cfg, "start_sigma": 0.3}))
    rehash_engine_set(late)
    engine = EngineSet.load(late)
    run = [t for t, _ in run_timesteps(engine)]
    assert 0 < len(run) < len(engine.timesteps) and max(run) < 500
    result = invoke(folder / "transformer", late, "--min-sqnr", 50)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["variant", "timestep", "in", "run", "max", "abs", "cosine", "SQNR", "dB", "result"]
    report = json.loads(invoke(folder / "transformer", late, "--json", "--min-sqnr", 50).stdout)
    reached = [v for v in report["variants"] if v["in_run"]]
    assert reached and all(set(v["timesteps"]) <= set(run) for v in reached)
    assert any(not v["in_run"] for v in report["variants"])


def damage(engine, tmp_path, layer):
    """Copy of the engine set with ``layer``'s weight scales multiplied by 10 (manifest rehashed, as if built so)."""
    from qdit4sr_export.runtime.engine_set import EngineSet

    out = tmp_path / "damaged"
    shutil.copytree(engine, out)
    weights = EngineSet.load(out).weights
    names = [n for n in weights.names() if n.startswith(f"{layer}.wscale")]
    assert names
    for name in names:
        overwrite_tensor(out, name, np.array(weights.array(name)) * 10)
    return out


def test_damaged_engine_fails_and_names_the_layer(pipeline_folder, engine_sets, tmp_path):
    _, folder = pipeline_folder
    _, w8, _ = engine_sets
    layer = "transformer_blocks.1.ff.net.2"
    broken = damage(w8, tmp_path, layer)
    result = invoke(folder / "transformer", broken, "--json", "--layers", "--per-variant", 1)
    assert result.exit_code == 1, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert not report["passed"]
    onset = report["layers"]["0"]
    assert onset["first_below_threshold"]["layer"] == layer
    assert onset["largest_drop"]["layer"] == layer
    text = invoke(folder / "transformer", broken, "--layers", "--per-variant", 1).output
    assert f"first layer below 20.0 dB: {layer}" in text and "FAIL" in text


def test_inputs_file_and_bad_input(pipeline_folder, engine_sets, tmp_path):
    model, folder = pipeline_folder
    fp, w8, _ = engine_sets
    cfg = model.config
    rng = np.random.default_rng(0)
    good = {"hidden_states": rng.standard_normal((2, 12, 8, 8), np.float32),
            "lr_latent": rng.standard_normal((2, 12, 8, 8), np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 3, cfg.joint_attention_dim), np.float32),
            "pooled_projections": rng.standard_normal((2, cfg.pooled_projection_dim), np.float32),
            "timestep": np.array([900.0, 100.0], np.float32)}
    save_file(good, str(tmp_path / "in.safetensors"))
    result = invoke(folder / "transformer", fp, "--inputs", tmp_path / "in.safetensors", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variants"][0]["max_abs"] <= 1e-4  # the FP engine is the FP model
    save_file({**good, "hidden_states": good["hidden_states"][:, :4]}, str(tmp_path / "bad.safetensors"))
    save_file({k: v for k, v in good.items() if k != "timestep"}, str(tmp_path / "missing.safetensors"))
    other = tmp_path / "other"
    from helpers import make_pipeline_folder

    make_pipeline_folder(other, seed=5)
    cases = [(("--inputs", tmp_path / "nope.npz"), "does not exist"),
             (("--inputs", tmp_path / "bad.safetensors"), "'hidden_states' has shape"),
             (("--inputs", tmp_path / "missing.safetensors"), "missing ['timestep']")]
    for extra, message in cases:
        result = invoke(folder / "transformer", w8, *extra)
        assert result.exit_code == 2 and message in result.output, result.output
    result = invoke(other / "transformer", w8)
    assert result.exit_code == 2 and "weights fingerprint differs" in result.output


@pytest.mark.parametrize("bad", ["engine", "model"])
def test_missing_paths(pipeline_folder, engine_sets, tmp_path, bad):
    _, folder = pipeline_folder
    _, w8, _ = engine_sets
    args = (tmp_path / "nothing", w8) if bad == "model" else (folder / "transformer", tmp_path / "nothing")
    result = invoke(*args)
    assert result.exit_code == 2 and "\n" not in result.output.strip()


def test_images_end_to_end(pipeline_folder, engine_sets, tmp_path):
    from PIL import Image

    _, folder = pipeline_folder
    fp, _, _ = engine_sets
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a.png")
    result = invoke(folder / "transformer", fp, "--images", tmp_path / "imgs", "--grid-steps", 2, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["images"]
    assert [r["image"] for r in rows] == ["a.png"] and rows[0]["psnr_db"] >= 40 and rows[0]["ssim"] >= 0.99
