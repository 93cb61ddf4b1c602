"""``qdit4sr-export build``: engine sets against the torch model and the fake-quant simulation."""

import copy
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from helpers import make_inputs, make_pipeline_folder, seeded_model
from safetensors.torch import save_file

from qdit4sr_export.cli import main
from qdit4sr_export.compiler.trace import INPUT_NAMES
from qdit4sr_export.model.loading import save_dit4sr
from qdit4sr_export.quant.plan import QuantPlan
from qdit4sr_export.quant.simulate import apply_plan


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for preset in ("dit4sr-tiny", "dit4sr-small"):
        model = seeded_model(preset)
        save_dit4sr(model, root / preset)
        out[preset] = (model, root / preset)
    return out


def build(args, expect_ok=True):
    result = CliRunner().invoke(main, ["build", *map(str, args), "--json"])
    if expect_ok:
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)
    assert result.exit_code == 2, result.output
    return result.output


def run_variant(folder, inputs, variant=0):
    manifest = json.loads((folder / "manifest.json").read_text())
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    sess = ort.InferenceSession(str(folder / manifest["variants"][variant]["file"]), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v.numpy() for n, v in zip(INPUT_NAMES, inputs)})[0]


def torch_out(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0].numpy()


def sqnr(ref, x):
    return 10 * np.log10((ref ** 2).sum() / ((ref - x) ** 2).sum())


def test_fp_build_matches_torch_survives_a_move_and_force_replaces(checkpoints, tmp_path):
    model, ckpt = checkpoints["dit4sr-tiny"]
    build([ckpt, "--method", "fp", "-o", tmp_path / "fp"])
    shutil.move(tmp_path / "fp", tmp_path / "moved")
    inputs = make_inputs(model, batch=2, side=8)
    assert np.abs(run_variant(tmp_path / "moved", inputs) - torch_out(model, inputs)).max() <= 1e-4
    manifest = json.loads((tmp_path / "moved" / "manifest.json").read_text())
    assert manifest["schema"] == "qdit4sr-export/engine-set" and manifest["plan"] is None
    assert {f["path"] for f in manifest["files"]} >= {"weights.bin", "variant_00.onnx", "pipeline.json",
                                                       "prompt_embeds.safetensors", "scheduler/scheduler_config.json"}
    assert [i["name"] for i in manifest["inputs"]] == list(INPUT_NAMES)
    # --force replaces an existing set whole (nothing of the old one stays)
    (tmp_path / "moved" / "stray.txt").write_text("old")
    build([ckpt, "--method", "fp", "-o", tmp_path / "moved", "--force"])
    assert not (tmp_path / "moved" / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved"]
    assert np.abs(run_variant(tmp_path / "moved", inputs) - torch_out(model, inputs)).max() <= 1e-4


@pytest.mark.parametrize("bits", [pytest.param(8, marks=pytest.mark.slow), 4])  # 8: 35 s, run with -m slow
def test_quantized_build_tracks_the_simulation(checkpoints, tmp_path, bits):
    model, ckpt = checkpoints["dit4sr-small"]
    summary = build([ckpt, "--wbits", bits, "--abits", bits, "-o", tmp_path / "e"])
    assert summary["variants"] == 1 and set(summary["lowering"]["variant_00.onnx"]) == {"int"}
    plan = QuantPlan.load(tmp_path / "e" / "plan.json")
    sim = copy.deepcopy(model)
    apply_plan(sim, plan)
    for seed in range(2):
        inputs = make_inputs(model, batch=1, side=8, seed=seed)
        got = run_variant(tmp_path / "e", inputs)
        assert sqnr(torch_out(sim, inputs), got) >= 40.0
        if bits == 8:
            fp = torch_out(model, inputs)
            cos = (fp * got).sum() / np.linalg.norm(fp) / np.linalg.norm(got)
            assert cos >= 0.999


def test_builds_are_byte_identical(checkpoints, tmp_path):
    _, ckpt = checkpoints["dit4sr-tiny"]
    for name in ("a", "b"):
        build([ckpt, "--method", "rtn", "--wbits", 4, "--abits", 6, "-o", tmp_path / name])
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_vatmp_variants_and_cap(checkpoints, tmp_path):
    model, ckpt = checkpoints["dit4sr-tiny"]
    latents = torch.randn(4, model.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    save_file({"lr_latent": latents}, str(tmp_path / "calib.safetensors"))
    common = [ckpt, "--wbits", 4, "--abits", "auto", "--abits-budget", 4.5, "--calib", tmp_path / "calib.safetensors",
              "--grid-steps", 8]
    full = build([*common, "-o", tmp_path / "full"])
    capped = build([*common, "--max-variants", 2, "-o", tmp_path / "capped"])
    assert capped["variants"] <= 2 <= full["variants"]
    cap = capped["variant_cap"]
    assert cap["mean_abits"] <= cap["mean_abits_uncapped"] + 1e-9
    manifest = json.loads((tmp_path / "capped" / "manifest.json").read_text())
    ranges = sorted(r for v in manifest["variants"] for r in v["timestep_ranges"])
    assert ranges[0][0] == 0.0 and ranges[-1][1] == 1000.0
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # the ranges tile [0, 1000]
    # each variant is the simulation at its own steps
    plan = QuantPlan.load(tmp_path / "full" / "plan.json")
    sim = copy.deepcopy(model)
    apply_plan(sim, plan)
    full_manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    for v in full_manifest["variants"][:2]:
        step = v["steps"][0]
        inputs = make_inputs(model, batch=1, side=8)[:4] + (torch.tensor([plan.timesteps[step]]),)
        assert sqnr(torch_out(sim, inputs), run_variant(tmp_path / "full", inputs, v["index"])) >= 40.0
    # the weights are stored once, whatever the number of variants
    sizes = {f["path"]: f["bytes"] for f in full_manifest["files"]}
    capped_sizes = {f["path"]: f["bytes"] for f in manifest["files"]}
    assert sizes["weights.bin"] == capped_sizes["weights.bin"]


def test_plan_file_and_mismatch(checkpoints, tmp_path):
    _, tiny = checkpoints["dit4sr-tiny"]
    _, small = checkpoints["dit4sr-small"]
    r = CliRunner().invoke(main, ["plan", str(tiny), "--wbits", "4", "--abits", "6", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    build([tiny, "--plan", tmp_path / "p.json", "-o", tmp_path / "ok"])
    out = build([small, "--plan", tmp_path / "p.json", "-o", tmp_path / "bad"], expect_ok=False)
    assert "p.json" in out and "plan" in out and not (tmp_path / "bad").exists()


def test_bad_input_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    _, ckpt = checkpoints["dit4sr-tiny"]
    (tmp_path / "exists").mkdir()
    assert "--force" in build([ckpt, "--method", "fp", "-o", tmp_path / "exists"], expect_ok=False)
    assert "unknown method" in build([ckpt, "--method", "nope", "-o", tmp_path / "x"], expect_ok=False)
    assert "wbits" in build([ckpt, "--wbits", 9, "-o", tmp_path / "x"], expect_ok=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    assert "junk" in build([tmp_path / "junk.safetensors", "-o", tmp_path / "x"], expect_ok=False)
    assert "preset" in build(["dit4sr-tiny", "-o", tmp_path / "x"], expect_ok=False)
    import shutil as sh

    monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(10, 10, 1000))
    assert "disk" in build([ckpt, "--method", "fp", "-o", tmp_path / "x"], expect_ok=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "junk.safetensors"]


def test_default_calibration_is_the_packaged_photos(checkpoints, tmp_path):
    """A model with vae/ calibrates VaTMP on the shipped LR photos; one without falls back to static bits, saying so."""
    make_pipeline_folder(tmp_path / "pipe")
    common = ["--wbits", 4, "--grid-steps", 4, "--calib-count", 2, "--abits", "auto"]
    with_vae = build([tmp_path / "pipe", *common, "--abits-budget", 4.5, "-o", tmp_path / "a"])
    assert with_vae["calibration"] == "packaged LR photo crops"
    plan = QuantPlan.load(tmp_path / "a" / "plan.json")
    assert any(len(set(lp.abits)) > 1 for lp in plan.layers.values())  # VaTMP varies bits over the steps
    without = build([checkpoints["dit4sr-tiny"][1], *common, "--abits-budget", 4, "-o", tmp_path / "b"])
    assert without["calibration"] is None and without["variants"] == 1
    assert any("no calibration data" in n for n in without["notices"])


def test_vatmp_follows_the_pipelines_start_sigma(tmp_path):
    """A folder whose pipeline.json starts runs at sigma 0.5: VaTMP budgets only the steps that run; the skipped
    steps keep static bits; --start-sigma overrides; the plan's None variances go through variants and plots."""
    from qdit4sr_export.quant.calib_images import packaged_calibration_folder
    from qdit4sr_export.model.sampling import flow_schedule, start_index

    make_pipeline_folder(tmp_path / "pipe")
    settings = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps({**settings, "start_sigma": 0.5}))
    common = ["--wbits", 4, "--grid-steps", 6, "--calib-count", 2, "--abits", "auto", "--abits-budget", 4.5]
    build([tmp_path / "pipe", *common, "-o", tmp_path / "a"])
    plan = QuantPlan.load(tmp_path / "a" / "plan.json")
    first = start_index(flow_schedule(6)[1], 0.5)
    assert plan.method_config["start_sigma"] == 0.5 and 0 < first < 5
    active = [lp for lp in plan.layers.values() if lp.active]
    assert all(lp.abits[:first] == (4,) * first and lp.act_variance[0] is None for lp in active)
    assert any(len(set(lp.abits[first:])) > 1 for lp in active)
    plots = CliRunner().invoke(main, ["inspect", str(tmp_path / "a"), "--plots", str(tmp_path / "plots"), "--json"])
    assert plots.exit_code == 0, plots.output
    assert (tmp_path / "plots" / "act_variance.png").stat().st_size > 1000
    planned = CliRunner().invoke(main, ["plan", str(tmp_path / "pipe"), *map(str, common), "--start-sigma", "1",
                                        "--calib", str(packaged_calibration_folder()), "-o", str(tmp_path / "b.json")])
    assert planned.exit_code == 0, planned.output
    every = QuantPlan.load(tmp_path / "b.json")
    assert every.method_config["start_sigma"] == 1 and all(None not in lp.act_variance
                                                           for lp in every.layers.values() if lp.active)
    error = build([tmp_path / "pipe", "--method", "rtn", "--wbits", 4, "--start-sigma", 0.5, "-o", tmp_path / "c"],
                  expect_ok=False)
    assert "--start-sigma does not apply to method 'rtn'" in error
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps({**settings, "start_sigma": 2}))
    error = build([tmp_path / "pipe", *common, "-o", tmp_path / "d"], expect_ok=False)
    assert "pipeline.json: start_sigma must be a number in (0, 1], got 2" in error and not (tmp_path / "d").exists()
