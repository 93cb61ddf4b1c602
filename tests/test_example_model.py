"""The shipped example model: loads as a pipeline folder, runs out of the box, and adds detail near bicubic; the
training degradations keep grey photos grey."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from qdit4sr_export.runtime.images import load_image
from qdit4sr_export.runtime.resize import plan_resize, upscale_lr

from qdit4sr_export.cli import main
from qdit4sr_export.model import load_dit4sr
from qdit4sr_export.report.metrics import hf_energy, psnr, to_255

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
from degradation import bicubic_down, degrade, degrade_kind, degrade_mix  # noqa: E402


def test_example_folder_format():
    folder = EXAMPLES / "dit4sr-tiny"
    model = load_dit4sr(folder / "transformer")
    assert 3.0e6 < sum(p.numel() for p in model.parameters()) < 3.2e6
    config = json.loads((folder / "pipeline.json").read_text())
    assert config["upscale"] == 4 and config["min_lr_side"] == 32
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 10e6


def test_example_folder_is_the_recorded_training_run():
    """The autoencoder's latent shift and scale are the ones the shipped weights were trained with (the record)."""
    record = json.loads((EXAMPLES / "dit4sr-tiny-metrics.json").read_text())
    vae = json.loads((EXAMPLES / "dit4sr-tiny" / "vae" / "config.json").read_text())
    assert (vae["shift_factor"], vae["scaling_factor"]) == (record["latent"]["shift"], record["latent"]["scale"])
    pipeline = json.loads((EXAMPLES / "dit4sr-tiny" / "pipeline.json").read_text())
    assert {k: pipeline[k] for k in record["best"]} == record["best"]


def test_run_out_of_the_box_adds_detail_near_bicubic(tmp_path):
    src = EXAMPLES / "lr" / "chelsea.png"
    result = CliRunner().invoke(main, ["run", str(EXAMPLES / "dit4sr-tiny"), str(src), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    lr = load_image(src).rgb
    out = load_image(tmp_path / "o.png").rgb
    assert out.shape == (3, 256, 256)
    bicubic = upscale_lr(lr, plan_resize(64, 64, min_side=32))
    o, b = to_255(out[None]), to_255(bicubic[None])
    assert float(psnr(o, b)) > 34  # stays close to the LR content (measured 35.9 dB)
    assert float(hf_energy(o)) > 2.3 * float(hf_energy(b))  # and adds detail bicubic lacks (measured 2.65x)
    assert not torch.equal(o, b)


def test_degradations_keep_grey_photos_grey_and_clean_is_plain_bicubic():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    colour = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for seed in range(20):  # the chain draws colour noise 60% of the time (for colour photos only)
        lr = degrade(grey, np.random.default_rng(seed))
        assert lr.shape == (16, 16, 3) and (lr == lr[..., :1]).all()
    assert np.array_equal(degrade_kind(colour, rng, "clean"), bicubic_down(colour))
    kinds = [np.array_equal(degrade_mix(colour, np.random.default_rng(s), 0.3), bicubic_down(colour)) for s in range(200)]
    assert 0.2 < np.mean(kinds) < 0.4  # the clean share


def test_path_states_follow_the_samplers_euler_steps():
    from train_tiny import path_state

    from qdit4sr_export.model.sampling import NUM_TRAIN_TIMESTEPS

    g = torch.Generator().manual_seed(0)
    x0, cond, noise = (torch.randn(3, 12, 8, 8, generator=g) for _ in range(3))
    ctx, pool = torch.zeros(3, 8, 16), torch.zeros(3, 16)
    seen = {}

    def ema(x, c, e, p, t):  # a fixed velocity field that records where it was asked
        seen["x"], seen["t"] = x, t
        return 0.5 * x - c

    state, sigma = path_state(ema, x0, cond, noise, ctx, pool, torch.Generator().manual_seed(1), True)
    s0 = seen["t"] / NUM_TRAIN_TIMESTEPS  # the start levels drawn, in [0.4, 1]
    assert ((s0 >= 0.4) & (s0 <= 1)).all() and ((sigma >= 0) & (sigma <= s0)).all()
    v = lambda t: t.view(3, 1, 1, 1)
    start = (1 - v(s0)) * cond + v(s0) * noise
    torch.testing.assert_close(seen["x"], start)
    # one Euler step of the EMA model's velocity from the start level down to sigma
    torch.testing.assert_close(state, start - (v(s0) - v(sigma)) * (0.5 * start - cond))
    lr_state, lr_sigma = path_state(ema, x0, cond, noise, ctx, pool, torch.Generator().manual_seed(1), False)
    torch.testing.assert_close(lr_sigma, sigma)  # path-lr: the same levels, states on the line from L to the noise
    torch.testing.assert_close(lr_state, (1 - v(sigma)) * cond + v(sigma) * noise)


def test_path_states_start_levels_follow_the_chosen_range():
    from train_tiny import path_state

    from qdit4sr_export.model.sampling import NUM_TRAIN_TIMESTEPS

    x0 = cond = noise = torch.zeros(64, 3, 4, 4)
    seen = {}

    def ema(x, c, e, p, t):
        seen["t"] = t
        return x

    _, sigma = path_state(ema, x0, cond, noise, None, None, torch.Generator().manual_seed(0), True, (0.45, 0.55))
    s0 = seen["t"] / NUM_TRAIN_TIMESTEPS
    assert ((s0 >= 0.45) & (s0 <= 0.55)).all() and float(s0.max() - s0.min()) > 0.08
    assert ((sigma >= 0) & (sigma <= s0)).all()


def test_log_mse_loss_weights_every_crop_by_its_own_error():
    from train_tiny import path_loss

    x0 = torch.zeros(2, 3, 4, 4)
    est = torch.stack([torch.full((3, 4, 4), 0.01), torch.full((3, 4, 4), 0.1)])  # per-crop MSE 1e-4 and 1e-2
    assert torch.isclose(path_loss(est, x0, "mse"), torch.tensor((1e-4 + 1e-2) / 2))
    expected = (np.log(1e-4 + 1e-5) + np.log(1e-2 + 1e-5)) / 2
    assert abs(float(path_loss(est, x0, "log-mse")) - expected) < 1e-5
    # halving the small error moves log-mse as much as halving the large one; batch MSE barely sees the former
    small = est.clone()
    small[0] /= 2
    large = est.clone()
    large[1] /= 2
    d_small = float(path_loss(est, x0, "log-mse") - path_loss(small, x0, "log-mse"))
    d_large = float(path_loss(est, x0, "log-mse") - path_loss(large, x0, "log-mse"))
    assert d_small > 0.5 * d_large > 0


def test_path_options_are_refused_where_they_would_do_nothing(capsys):
    from train_tiny import parse_args

    for argv in (["--loss", "log-mse"], ["--s0-range", "0.4", "0.6"]):  # the default objective is flow
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--out", "x", *argv])
        assert exit_info.value.code == 2 and "apply to the path objectives" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--objective", "path-self", "--s0-range", "0.7", "0.5"])
    assert "need 0 < LO <= HI <= 1" in capsys.readouterr().err
    args = parse_args(["--out", "x", "--objective", "path-self", "--s0-range", "0.4", "0.6", "--loss", "log-mse"])
    assert tuple(args.s0_range) == (0.4, 0.6) and args.loss == "log-mse"


def test_eval_colour_fixes_are_the_runtimes():
    """The validation sweep applies the runtime's colour fixes to images in [-1, 1]; each fix is affine, so that is
    what `run` gives on [0, 1] images, and the setting chosen into pipeline.json gives the output it measured."""
    from qdit4sr_export.runtime.color_fix import COLOR_FIXES as RUNTIME_FIXES
    from qdit4sr_export.runtime.color_fix import apply_color_fix
    from tiny_eval import COLOR_FIXES

    gen = torch.Generator().manual_seed(0)
    out = torch.rand(2, 3, 40, 40, generator=gen) * 2 - 1
    up = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 40, 40, generator=gen), 5, 1, 2) * 2 - 1
    assert set(COLOR_FIXES) == set(RUNTIME_FIXES)
    for fix in COLOR_FIXES:
        runtime = apply_color_fix(fix, (out + 1) / 2, (up + 1) / 2) * 2 - 1
        assert torch.allclose(apply_color_fix(fix, out, up), runtime, atol=1e-4), fix
    # wavelet takes a colour cast out and keeps the output's own detail: far from both inputs
    assert torch.allclose(apply_color_fix("wavelet", up + 0.3, up), up, atol=1e-5)
    fixed = apply_color_fix("wavelet", out, up)
    assert (fixed - out).abs().mean() > 0.05 and (fixed - up).abs().mean() > 0.05
