import json

import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import PRESETS, DiT4SRConfig, resolve_config


def test_medium_preset_is_the_released_config():
    cfg = PRESETS["dit4sr-medium"]
    assert cfg.inner_dim == 1536
    assert cfg.num_layers == 24 and cfg.dual_attention_layers == tuple(range(13))
    assert cfg.pos_embed_max_size == 384 and cfg.qk_norm == "rms_norm"
    assert cfg.control_scale == 1.2


def test_json_round_trip_and_diffusers_keys(tmp_path):
    cfg = PRESETS["dit4sr-small"]
    data = {"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.31.0", **cfg.to_dict()}
    data.pop("control_scale")  # the released config.json has no such key: default 1.2 applies
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert DiT4SRConfig.from_json_file(path) == cfg
    assert resolve_config(str(path)) == cfg
    assert DiT4SRConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(UserError, match="unknown preset 'dit4sr-huge'.*dit4sr-medium"):
        resolve_config("dit4sr-huge")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"caption_projection_dim": 100}, "caption_projection_dim"),
        ({"qk_norm": "layer_norm"}, "qk_norm"),
        ({"dual_attention_layers": [0, 3]}, "dual_attention_layers"),
    ],
)
def test_invalid_config_values_are_named(override, message):
    data = {**PRESETS["dit4sr-small"].to_dict(), **override}
    with pytest.raises(UserError, match=message):
        DiT4SRConfig.from_dict(data)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        DiT4SRConfig.from_json_file(bad)
    with pytest.raises(UserError, match="not found"):
        DiT4SRConfig.from_json_file(tmp_path / "missing.json")


def test_with_blocks_keeps_widths_and_a_context_pre_only_last_block():
    cfg = PRESETS["dit4sr-medium"].with_blocks(2)
    assert cfg.num_layers == 2 and cfg.dual_attention_layers == (0,)
    assert cfg.inner_dim == 1536 and cfg.joint_attention_dim == 4096 and cfg.pos_embed_max_size == 384
    assert PRESETS["dit4sr-medium"].with_blocks(24) == PRESETS["dit4sr-medium"]
    for bad in (0, 25, True):
        with pytest.raises(UserError, match="blocks must be an integer from 1 to 24"):
            PRESETS["dit4sr-medium"].with_blocks(bad)
