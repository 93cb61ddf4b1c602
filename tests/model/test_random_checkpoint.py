"""examples/make_random_dit4sr.py --blocks: the preset's widths with only its first N blocks, loadable as a model."""

import json
import sys
from pathlib import Path

from qdit4sr_export.model import load_dit4sr
from qdit4sr_export.model.config import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from make_random_dit4sr import main  # noqa: E402


def test_blocks_option_writes_the_first_blocks_only(tmp_path, capsys):
    assert main(["dit4sr-small", str(tmp_path / "two"), "--blocks", "2", "--vae", "none", "--heavy-tailed"]) == 0
    config = json.loads((tmp_path / "two" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 2 and config["dual_attention_layers"] == [0]
    model = load_dit4sr(tmp_path / "two" / "transformer")
    assert len(model.transformer_blocks) == 2 and model.config == PRESETS["dit4sr-small"].with_blocks(2)
    assert main(["dit4sr-small", str(tmp_path / "bad"), "--blocks", "5"]) == 2
    assert "blocks must be an integer from 1 to 4" in capsys.readouterr().err and not (tmp_path / "bad").exists()
