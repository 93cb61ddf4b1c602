"""Plan plots: the heatmap's cells are the block means of the plan's bits; files are real PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config

plots = pytest.importorskip("qdit4sr_export.plots")
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
