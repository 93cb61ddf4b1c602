import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from qdit4sr_export.cli import main
from qdit4sr_export.model.loading import save_dit4sr
from qdit4sr_export.quant.plan import QuantPlan


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("local_rank, params_m", [(4, 454.78), (8, 465.39), (16, 486.62), (32, 529.06)])
def test_paper_params_from_shapes_alone(local_rank, params_m):
    result = run("plan", "dit4sr-medium", "--wbits", 4, "-O", "svd_rank=32", "-O", f"local_rank={local_rank}", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["params_m"] == pytest.approx(params_m, rel=1e-3)
    assert summary["fp_params_m"] == pytest.approx(2716.814, abs=1e-3)
    assert summary["avg_wbits"] == 4 and summary["layers"] == 585
    assert summary["size_ratio"] == pytest.approx(2716.814144 / summary["params_m"], rel=1e-4)
    assert summary["gbops_per_step"] < summary["fp_gbops_per_step"]


def test_plan_of_a_checkpoint_with_calibration_file(tmp_path, tiny_model):
    ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
    save_file({"lr_latent": torch.randn(2, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
    out = tmp_path / "plan.json"
    args = ("--wbits", "auto", "--abits", "auto", "--abits-budget", 4.5, "-O", "svd_rank=8", "-O", "local_rank=2",
            "--calib", tmp_path / "calib.safetensors", "--grid-steps", 6, "--json")
    result = run("plan", ckpt, *args, "-o", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    plan = QuantPlan.load(out)
    assert summary["output"] == str(out) and plan.method == "qdit4sr"
    assert len(plan.timesteps) == 6 and plan.fingerprint["weights"]
    assert any(len(set(lp.abits)) > 1 for lp in plan.layers.values())
    again = tmp_path / "again.json"
    run("plan", ckpt, *args, "-o", again)
    assert again.read_bytes() == out.read_bytes()  # deterministic


def test_existing_output_needs_force(tmp_path, tiny_model):
    out = tmp_path / "plan.json"
    out.write_text("{}")
    result = run("plan", "dit4sr-tiny", "--wbits", 4, "-O", "svd_rank=8", "-o", out)
    assert result.exit_code == 2 and "already exists" in result.output
    assert run("plan", "dit4sr-tiny", "--wbits", 4, "-O", "svd_rank=8", "-o", out, "--force").exit_code == 0
    assert QuantPlan.load(out).method == "qdit4sr"


@pytest.mark.parametrize(
    "args, message",
    [
        (["dit4sr-tiny", "--wbits", "9"], "--wbits must be 'auto' or an integer 2..8, got '9'"),
        (["dit4sr-tiny", "--wbits", "four"], "--wbits must be 'auto' or an integer"),
        (["dit4sr-tiny", "--wbits", "4", "--abits", "12"], "--abits must be 'auto' or an integer 2..8"),
        (["dit4sr-tiny", "--wbits", "4", "-O", "svd_rank=100"], "svd_rank=100 is larger than min(out, in) = 64"),
        (["dit4sr-tiny", "--wbits", "4", "--abits", "4", "--abits-budget", "5"], "exclude each other"),
        (["dit4sr-tiny", "--wbits", "4", "--wbits-budget", "5"], "exclude each other"),
        (["dit4sr-tiny"], "VaSMP) reads the weights"),
        (["dit4sr-tiny", "--wbits", "4", "-O", "svd_rank=8", "--calib", "{tmp}/empty"], "calibration"),
        (["nope-model", "--wbits", "4"], "neither a file or folder nor a preset"),
    ],
)
def test_plan_bad_input_one_line_error(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = subprocess.run([sys.executable, "-m", "qdit4sr_export", "plan", *args], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_dimension_without_hadamard_construction(tmp_path):
    config = {"sample_size": 16, "num_layers": 2, "attention_head_dim": 46, "num_attention_heads": 2,
              "joint_attention_dim": 32, "caption_projection_dim": 92, "pooled_projection_dim": 16,
              "pos_embed_max_size": 16, "dual_attention_layers": [0]}
    (tmp_path / "odd.json").write_text(json.dumps(config))
    result = run("plan", "dit4sr-tiny", "--config", tmp_path / "odd.json", "--wbits", 4, "-O", "svd_rank=8")
    assert result.exit_code == 2
    assert "no Hadamard construction for dimension n=92" in result.output and "block" in result.output
    fixed = run("plan", "dit4sr-tiny", "--config", tmp_path / "odd.json", "--wbits", 4, "-O", "svd_rank=8",
                "-O", "rotation_block=4", "--json")
    assert fixed.exit_code == 0, fixed.output


def test_list_methods():
    result = run("plan", "--list-methods")
    assert result.exit_code == 0
    for name in ("qdit4sr", "rtn", "quarot", "svdquant", "ptq4dit", "qdit", "adatsq", "lrq-dit"):
        assert f"\n{name} " in "\n" + result.output
    assert "options: wbits=4" in result.output


def test_method_choice_and_options(tmp_path, tiny_model):
    ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
    save_file({"lr_latent": torch.randn(2, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
    out = tmp_path / "svdq.json"
    result = run("plan", ckpt, "--method", "svdquant", "--wbits", 4, "--abits", 6, "-O", "svd_rank=8",
                 "-O", "group_size=32", "--calib", tmp_path / "calib.safetensors", "--grid-steps", 2, "-o", out,
                 "--json")
    assert result.exit_code == 0, result.output
    plan = QuantPlan.load(out)
    assert plan.method == "svdquant" and (tmp_path / "svdq.tensors.safetensors").is_file()
    assert all(lp.group_size == 32 and lp.abits == (6, 6) for lp in plan.layers.values())
    rtn = run("plan", "dit4sr-tiny", "--method", "rtn", "--wbits", 3, "--json")
    assert rtn.exit_code == 0 and json.loads(rtn.stdout)["avg_wbits"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "gptq"], "unknown method 'gptq'; valid: qdit4sr, rtn, quarot, svdquant, ptq4dit, qdit, adatsq, lrq-dit"),
        (["--method", "rtn", "-O", "svd_rank=8"], "option svd_rank does not apply to method 'rtn'"),
        (["--method", "rtn", "--abits", "auto"], "--abits auto (a per-timestep schedule) does not apply to method 'rtn'"),
        (["--method", "rtn", "--abits-budget", "5"], "--abits-budget does not apply to method 'rtn'"),
        (["--method", "rtn", "--start-sigma", "0.5"], "--start-sigma does not apply to method 'rtn'"),
        (["--method", "adatsq", "--abits", "4"], "give --abits-budget N instead of --abits N"),
        (["--method", "rtn"], None),
        (["--method", "quarot", "--wbits", "auto"], "--wbits auto (VaSMP) does not apply to method 'quarot'"),
        (["--method", "svdquant", "--wbits", "4"], "svdquant"),
        (["--method", "rtn", "-O", "nonsense"], "-O/--method-option expects KEY=VALUE"),
    ],
)
def test_method_errors(args, message):
    result = run("plan", "dit4sr-tiny", *args)
    if message is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2 and message in result.output, result.output


ABITS = {"adatsq": []}  # adatsq searches per-timestep bits around its own default
QUICK = {"qdit4sr": ["-O", "svd_rank=8", "-O", "local_rank=2"],
         "svdquant": ["-O", "svd_rank=8", "-O", "group_size=32"],
         "qdit": ["-O", "min_mean_group=32", "-O", "population=3", "-O", "top_k=2", "-O", "mutations=1",
                  "-O", "crossovers=1", "-O", "generations=1", "-O", "eval_states=1"]}


@pytest.mark.parametrize("method", ["qdit4sr", "rtn", "quarot", "svdquant", "ptq4dit", "qdit", "adatsq", "lrq-dit"])
def test_plan_succeeds_for_every_method(tmp_path, tiny_model, method):
    ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
    save_file({"lr_latent": torch.randn(2, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
    result = run("plan", ckpt, "--method", method, "--wbits", 4, *ABITS.get(method, ["--abits", 4]), "--grid-steps", 2,
                 "--calib", tmp_path / "calib.safetensors", *QUICK.get(method, []), "-o", tmp_path / "p.json", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == method and QuantPlan.load(tmp_path / "p.json").method == method


def test_help_shows_defaults_the_required_model_and_every_method():
    result = run("plan", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "plan [OPTIONS] MODEL" in text
    assert "[default: qdit4sr]" in text and "[default: 32; x>=1]" in text
    assert "Default: the method's (auto for qdit4sr, 4 for the others)" in text
    assert "qdit4sr, rtn, quarot, svdquant, ptq4dit, qdit, adatsq, lrq-dit, fp" in text
    assert "--calib PATH" in text and "-o, --output FILE" in text
    listed = run("plan", "--list-methods")  # no MODEL needed
    assert listed.exit_code == 0 and "\nfp " in listed.output


def test_fp_is_a_method_that_makes_no_plan():
    result = run("plan", "dit4sr-tiny", "--method", "fp")
    assert result.exit_code == 2 and "method 'fp' makes no plan" in result.output


def test_the_model_folders_trajectory_is_the_default(tmp_path):
    """A pipeline folder's pipeline.json sets the grid and the start sigma every calibrated method samples."""
    from helpers import make_pipeline_folder

    make_pipeline_folder(tmp_path / "pipe", steps=5)
    settings = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps({**settings, "start_sigma": 0.5}))
    save_file({"lr_latent": torch.randn(2, 12, 8, 8)}, str(tmp_path / "calib.safetensors"))
    out = tmp_path / "p.json"
    result = run("plan", tmp_path / "pipe", "--method", "ptq4dit", "--calib", tmp_path / "calib.safetensors",
                 "-o", out, "--json")
    assert result.exit_code == 0, result.output
    plan = QuantPlan.load(out)
    assert len(plan.timesteps) == 5 and plan.method_config["start_sigma"] == 0.5
    override = run("plan", tmp_path / "pipe", "--method", "ptq4dit", "--calib", tmp_path / "calib.safetensors",
                   "--grid-steps", 3, "--start-sigma", 1, "-o", tmp_path / "q.json", "--json")
    assert override.exit_code == 0, override.output
    again = QuantPlan.load(tmp_path / "q.json")
    assert len(again.timesteps) == 3 and again.method_config["start_sigma"] == 1
    rtn = run("plan", tmp_path / "pipe", "--method", "rtn", "-o", tmp_path / "r.json", "--json")
    assert rtn.exit_code == 0 and len(QuantPlan.load(tmp_path / "r.json").timesteps) == 5  # no start sigma: rtn


def test_smoothing_option_takes_calibration_even_with_static_activation_bits(tmp_path, tiny_model):
    """`-O smoothing=true` searches on the calibration data; static --abits turns off VaTMP only, not the data."""
    ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
    save_file({"lr_latent": torch.randn(2, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
    out = tmp_path / "plan.json"
    args = ("plan", ckpt, "--wbits", 4, "--abits", 4, "-O", "svd_rank=8", "--grid-steps", 2,
            "-O", "smoothing=true", "-O", "alpha_points=2", "-O", "group_size=32", "-o", out, "--json")
    result = run(*args, "--calib", tmp_path / "calib.safetensors")
    assert result.exit_code == 0, result.output
    plan = QuantPlan.load(out)
    assert any(lp.smoothing for lp in plan.layers.values()) and plan.tensors
    assert {lp.group_size for lp in plan.layers.values()} == {32}
    assert all(len(set(lp.abits)) == 1 for lp in plan.layers.values())
    result = run(*args[:-3], "-o", tmp_path / "other.json")
    assert result.exit_code == 2 and "smoothing=true searches each layer's smoothing on calibration data" in \
        result.output and not (tmp_path / "other.json").exists()


@pytest.mark.parametrize("method, bar", [("svdquant", "smoothing search"), ("ptq4dit", "salience balancing"),
                                         pytest.param("lrq-dit", "rotation and TLQ search", marks=pytest.mark.slow),
                                         ("qdit", "GPTQ")])
def test_the_per_layer_search_shows_a_progress_bar(tmp_path, tiny_model, method, bar, monkeypatch):
    """Without --json a long plan shows where it is: calibration, then the per-layer search (most of a large plan);
    QDIT4SR_PROGRESS=1 shows the bars the test's non-terminal stderr would otherwise not get."""
    monkeypatch.setenv("QDIT4SR_PROGRESS", "1")
    ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
    save_file({"lr_latent": torch.randn(1, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
    result = run("plan", ckpt, "--method", method, "--wbits", 4, "--abits", 4, "--grid-steps", 2,
                 "--calib", tmp_path / "calib.safetensors", *QUICK.get(method, []),
                 *(["-O", "alpha_points=2"] if method == "svdquant" else []), "-o", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert "calibration" in result.output and f"{bar}:" in result.output, result.output


@pytest.mark.parametrize("old, new", [
    (["--svd-rank", "8", "--local-rank", "2"], ["-O", "svd_rank=8", "-O", "local_rank=2"]),
    (["--no-hsvd"], ["-O", "local_rank=0"]),
    (["--hadamard", "plain", "--hadamard-block", "16"], ["-O", "rotation_seed=none", "-O", "rotation_block=16"]),
    (["--no-vasmp", "--wbits-budget", "4"], ["--wbits", "4"]),
    (["--steps", "7"], ["--grid-steps", "7"]),
])
def test_old_spellings_still_work_for_one_release_with_a_notice(old, new):
    """The plan an old spelling makes is the plan its new spelling makes; stderr says what to write instead."""
    base = ["plan", "dit4sr-tiny", "--json"] + (["--wbits", "4"] if "--no-vasmp" not in old else [])
    a, b = run(*base, *old), run(*base, *new)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert json.loads(a.stdout)["params_m"] == json.loads(b.stdout)["params_m"]
    assert json.loads(a.stdout)["steps"] == json.loads(b.stdout)["steps"]
    assert "is deprecated and will be removed in the next release; use" in a.stderr and not b.stderr


def test_an_old_spelling_beside_its_new_one_is_an_error():
    result = run("plan", "dit4sr-tiny", "--wbits", "4", "--steps", "3", "--grid-steps", "4")
    assert result.exit_code == 2 and "--steps and --grid-steps set the same thing: give --grid-steps only" in \
        result.output


def test_abits_auto_and_static_spellings(tmp_path, tiny_model):
    """--abits auto --abits-budget 4.5 is VaTMP at 4.5 bits (what --abits 4.5 meant); --abits 4 is static 4 bits."""
    ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
    save_file({"lr_latent": torch.randn(2, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
    common = ("plan", ckpt, "--wbits", 4, "-O", "svd_rank=8", "--grid-steps", 4, "--calib",
              tmp_path / "calib.safetensors", "--json")
    auto = run(*common, "--abits", "auto", "--abits-budget", 4.5, "-o", tmp_path / "a.json")
    old = run(*common, "--abits", 4.5, "-o", tmp_path / "b.json")
    static = run(*common, "--abits", 4, "-o", tmp_path / "c.json")
    assert auto.exit_code == old.exit_code == static.exit_code == 0, auto.output + old.output + static.output
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "--abits 4.5 as an average is deprecated" in old.stderr and "static 4-bit activations" in static.stderr
    assert any(len(set(lp.abits)) > 1 for lp in QuantPlan.load(tmp_path / "a.json").layers.values())
    assert {lp.abits for lp in QuantPlan.load(tmp_path / "c.json").layers.values()} == {(4, 4, 4, 4)}
