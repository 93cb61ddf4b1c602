import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from click.testing import CliRunner

from qdit4sr_export import __version__
from qdit4sr_export.cli import main
from qdit4sr_export.model.loading import save_dit4sr
from qdit4sr_export.model.parts import CONTROL, parameter_part


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_version_and_help():
    assert __version__ in run("--version").output
    result = run("--help")
    assert result.exit_code == 0 and "info" in result.output


def test_console_script_is_installed():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("qdit4sr-export") == "qdit4sr_export.cli:main"
    out = subprocess.run([sys.executable, "-m", "qdit4sr_export", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_info_medium_preset_json():
    result = run("info", "dit4sr-medium", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["parameters"]["total"] == 2_716_814_144
    assert summary["parameters"]["unused_attn2_added_kv"] == 122_764_928
    assert summary["parameters"]["base"] + summary["parameters"]["control"] + 122_764_928 == 2_716_814_144
    assert summary["linears"]["in_transformer_blocks"] == 585
    assert summary["linears"]["in_plus_out_sum_in_blocks"] == 2_652_672
    rows = {row["name"]: row for row in summary["linear_layers"]}
    assert rows["transformer_blocks.3.ff.net.2"]["in_features"] == 6144
    assert rows["transformer_blocks.3.ff.net.2"]["out_features"] == 1536
    assert summary["buffers"]["pos_embed.pos_embed"]["shape"] == [1, 147456, 1536]


def test_info_text_lists_layers():
    result = run("info", "dit4sr-tiny")
    assert result.exit_code == 0
    assert "transformer_blocks.0.attn2.to_q_control" in result.output
    assert "unused_attn2_added_kv" in result.output


def test_info_checkpoint_reports_stored_dtypes(tmp_path, tiny_model):
    half_base = tiny_model.half()
    for name, p in half_base.named_parameters():
        if parameter_part(name) == CONTROL:
            p.data = p.data.float()
    folder = save_dit4sr(half_base, tmp_path / "ckpt")
    summary = json.loads(run("info", str(folder), "--json").stdout)
    control = summary["parameters"]["control"]
    assert summary["parameter_dtypes"] == {"F16": summary["parameters"]["total"] - control, "F32": control}
    assert summary["format"] == "diffusers"


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "dit4sr-mediun"], "neither a file or folder nor a preset"),
        (["info", "{tmp}/junk.pt"], "not a PyTorch state dict"),
        (["info", "{tmp}/bare.safetensors"], "carries no config"),
        (["info", "dit4sr-tiny", "--config", "dit4sr-nope"], "unknown preset 'dit4sr-nope'"),
    ],
)
def test_info_bad_input_one_line_error(tmp_path, tiny_model, args, message):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = subprocess.run([sys.executable, "-m", "qdit4sr_export", *args], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
