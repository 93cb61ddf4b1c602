"""Engine building logic that needs no TensorRT: profiles, and one-line errors where TensorRT is missing."""

import pytest

from qdit4sr_export.compiler.trt_engines import profile_shapes, tensorrt_available
from qdit4sr_export.compiler.trt_target import OPTIONS
from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import PRESETS

needs_no_trt = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")


def test_profile_covers_cfg_batch_and_tile_sizes():
    cfg = PRESETS["dit4sr-medium"].to_dict()
    shapes = profile_shapes(cfg, OPTIONS, tokens=333)
    assert shapes["hidden_states"] == ((1, 16, 32, 32), (2, 16, 64, 64), (2, 16, 128, 128))
    assert shapes["encoder_hidden_states"][2] == (2, 333, 4096)
    assert shapes["timestep"] == ((1,), (2,), (2,))
    with pytest.raises(UserError, match="multiple of 2"):
        profile_shapes(cfg, {**OPTIONS, "max_latent_side": 127}, tokens=333)
