"""Plan plots: the heatmap's cells are the block means of the plan's bits; files are real PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config

plots = pytest.importorskip("qdit4sr_export.report.plots")
pytest.importorskip("matplotlib")


def test_heatmap_values_and_files(tiny_model, tmp_path):
    method = get_method("qdit4sr")
    calib = CalibrationInputs.with_null_prompt(torch.randn(2, tiny_model.config.in_channels, 8, 8), tiny_model.config)
    plan = method.build(tiny_model, make_config(method, {"abits": 4.5, "steps": 6}), calibration=calib)
    blocks, grid = plots.block_abits(plan)
    assert blocks == list(range(tiny_model.config.num_layers)) and grid.shape == (len(blocks), 6)
    layers = [lp.abits for n, lp in plan.layers.items() if n.startswith("transformer_blocks.0.") and lp.abits
              and None not in lp.abits]
    assert np.allclose(grid[0], np.mean(layers, axis=0))
    assert grid.min() < grid.max()  # VaTMP varied the bits
    for path in (plots.plot_abits_heatmap(plan, tmp_path / "h.png"), plots.plot_weight_bits(plan, tmp_path / "w.png")):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 200


@pytest.fixture
def late_plan(tiny_model, tmp_path):
    """A VaTMP plan whose runs start at sigma 0.5 (the last steps of a 6-step grid), saved to a file."""
    method = get_method("qdit4sr")
    calib = CalibrationInputs.with_null_prompt(torch.randn(2, tiny_model.config.in_channels, 8, 8), tiny_model.config)
    plan = method.build(tiny_model, make_config(method, {"abits": 4.5, "steps": 6, "start_sigma": 0.5}),
                        calibration=calib)
    path = tmp_path / "plan.json"
    plan.save(path)
    return plan, path


def _capture(monkeypatch):
    """Keep the figures the plot functions make (for checks on what they draw)."""
    figs = []
    real = plots._save

    def keep(fig, plt, path):
        fig.tight_layout()
        fig.canvas.draw()
        figs.append((fig, _inside(fig, fig.axes[0].title)))
        return real(fig, plt, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def _inside(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1


def test_steps_that_never_run_are_drawn_apart(late_plan, tmp_path, monkeypatch):
    from qdit4sr_export.report.inspect import run_window

    plan, path = late_plan
    runs = run_window(plan, path)
    first = next(i for i, t in enumerate(plan.timesteps) if t / 1000 <= 0.5 + 1e-6)
    assert runs["source"] == "plan" and runs["first_step"] == first > 0
    assert runs["runs"] == [i >= first for i in range(6)]
    figs = _capture(monkeypatch)
    plots.plot_abits_heatmap(plan, tmp_path / "h.png", runs=runs)
    layer = max((n for n, lp in plan.layers.items() if lp.act_variance), key=len)  # the longest title
    plots.plot_act_variance(plan, layer, tmp_path / "v.png", runs=runs)
    shown = figs[0][0].axes[0].images[0].get_array()
    assert shown.mask[:, :first].all() and not shown.mask[:, first:].any()  # grey cells: exactly the steps not run
    legend = [t.get_text() for t in figs[1][0].axes[0].get_legend().get_texts()]
    assert "not run" in legend
    assert all(whole for _, whole in figs)  # titles inside the figure (the variance plot's names a layer)


def test_weight_bits_mean_matches_the_text_report(late_plan, tmp_path, monkeypatch):
    from qdit4sr_export.report.inspect import format_report, report

    plan, path = late_plan
    bits = [lp.wbits for lp in plan.layers.values()]
    assert min(bits) < max(bits)  # VaSMP mixed the bits, so a per-layer mean could differ from a per-weight one
    figs = _capture(monkeypatch)
    plots.plot_weight_bits(plan, tmp_path / "w.png")
    title = figs[0][0].axes[0].get_title()
    text = format_report(report(plan, None, target=path), layers=False)
    mean = title.split("mean ")[1].split()[0]
    assert f"mean weight bits {mean}\n" in text
    assert "a run executes grid steps" in text
