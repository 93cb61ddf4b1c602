"""Save/load round trips for every accepted checkpoint format, mixed dtypes, and bad checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qdit4sr_export.errors import UserError
from qdit4sr_export.model import load_dit4sr
from qdit4sr_export.model.loading import POS_EMBED_KEY, save_dit4sr
from qdit4sr_export.model.parts import CONTROL, parameter_part
from qdit4sr_export.model.positions import default_pos_embed


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _write_config(path, model):
    path.write_text(json.dumps(model.config.to_dict()))
    return path


@pytest.mark.parametrize("name", ["folder", "model.safetensors", "model.pt", "model.pth"])
def test_save_load_round_trip(tmp_path, tiny_model, name):
    path = save_dit4sr(tiny_model, tmp_path / name)
    assert_same_state(load_dit4sr(path), tiny_model)


def test_sharded_folder_round_trip(tmp_path, tiny_model):
    folder = save_dit4sr(tiny_model, tmp_path / "sharded", max_shard_bytes=200_000)
    shards = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_model.state_dict())
    assert_same_state(load_dit4sr(folder), tiny_model)


def test_parent_folder_with_transformer_subfolder(tmp_path, tiny_model):
    (tmp_path / "pipeline").mkdir()
    save_dit4sr(tiny_model, tmp_path / "pipeline" / "transformer")
    assert_same_state(load_dit4sr(tmp_path / "pipeline"), tiny_model)


def test_bare_files_need_config(tmp_path, tiny_model):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    bare_st = tmp_path / "bare.safetensors"
    save_file(state, str(bare_st))
    with pytest.raises(UserError, match="carries no config.*preset name"):
        load_dit4sr(bare_st)
    assert_same_state(load_dit4sr(bare_st, config="dit4sr-tiny"), tiny_model)
    assert_same_state(load_dit4sr(bare_st, config=_write_config(tmp_path / "c.json", tiny_model)), tiny_model)

    for wrapper in (lambda s: s, lambda s: {"state_dict": s}, lambda s: {"model": s}):
        pt = tmp_path / "bare.pt"
        torch.save(wrapper(state), pt)
        assert_same_state(load_dit4sr(pt, config="dit4sr-tiny"), tiny_model)


def test_released_layout_f16_base_f32_control_loads(tmp_path, tiny_model):
    """The release stores control tensors as F32 and everything else (pos_embed included) as F16."""
    state = {
        k: (v.float() if parameter_part(k) == CONTROL else v.half()).contiguous()
        for k, v in tiny_model.state_dict().items()
    }
    folder = tmp_path / "release" / "transformer"
    folder.mkdir(parents=True)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    _write_config(folder / "config.json", tiny_model)
    stored = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16, torch.float32}

    model = load_dit4sr(tmp_path / "release")
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, state[k].float()), k
    half = load_dit4sr(tmp_path / "release", dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in half.state_dict().values())


def test_missing_pos_embed_is_recomputed(tmp_path, tiny_model):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items() if k != POS_EMBED_KEY}
    path = tmp_path / "nopos.safetensors"
    save_file(state, str(path))
    model = load_dit4sr(path, config="dit4sr-tiny")
    assert torch.equal(model.pos_embed.pos_embed, tiny_model.pos_embed.pos_embed)
    assert torch.equal(default_pos_embed(tiny_model.config), tiny_model.pos_embed.pos_embed)


def test_loaded_model_runs_identically(tmp_path, tiny_model):
    """Same weights, bit for bit (``assert_same_state``), so the same outputs up to the float summation order: on
    some CPUs the BLAS kernels' order follows the buffers' addresses (measured 3.6e-7 on an AMD EPYC, on outputs of
    magnitude ~2.5; bit-identical on the machines of earlier runs)."""
    from helpers import make_inputs

    loaded = load_dit4sr(save_dit4sr(tiny_model, tmp_path / "m.safetensors"))
    assert_same_state(loaded, tiny_model)
    inputs = make_inputs(tiny_model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), tiny_model(*inputs), rtol=0, atol=2e-6)


# --- bad checkpoints -----------------------------------------------------------------------------


def _state(model):
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_dit4sr(tmp_path / "nothing.pt")


@pytest.mark.parametrize("name", ["junk.pt", "junk.safetensors", "junk.bin"])
def test_file_that_is_not_a_checkpoint(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(UserError, match=f"{name}: not a"):
        load_dit4sr(path, config="dit4sr-tiny")


def test_unsupported_suffix_and_empty_folder(tmp_path):
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported checkpoint format '.npz'"):
        load_dit4sr(other)
    with pytest.raises(UserError, match="not a DiT4SR checkpoint folder"):
        load_dit4sr(tmp_path)


def test_pt_with_non_tensor_entries(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"a": torch.zeros(2), "b": [1, 2]}, path)
    with pytest.raises(UserError, match="entry 'b' is a list"):
        load_dit4sr(path, config="dit4sr-tiny")


def test_missing_keys_are_named(tmp_path, tiny_model):
    state = _state(tiny_model)
    del state["transformer_blocks.1.attn.to_q.weight"]
    del state["proj_out.bias"]
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"missing 2 key\(s\).*transformer_blocks\.1\.attn\.to_q\.weight, proj_out\.bias"):
        load_dit4sr(path, config="dit4sr-tiny")


def test_unexpected_keys_are_named(tmp_path, tiny_model):
    state = _state(tiny_model)
    state["transformer_blocks.9.attn.to_q.weight"] = torch.zeros(1)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"1 unexpected key\(s\).*transformer_blocks\.9\.attn\.to_q\.weight"):
        load_dit4sr(path, config="dit4sr-tiny")


def test_shape_mismatch_names_key_expected_and_got(tmp_path, tiny_model):
    state = _state(tiny_model)
    state["context_embedder.weight"] = torch.zeros(64, 32)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"shape mismatch for 'context_embedder.weight': expected \[64, 64\], got \[64, 32\]"):
        load_dit4sr(path, config="dit4sr-tiny")


def test_wrong_config_for_checkpoint(tmp_path, tiny_model):
    path = save_dit4sr(tiny_model, tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="missing|unexpected|shape mismatch"):
        load_dit4sr(path, config="dit4sr-small")


def test_sharded_index_with_missing_shard(tmp_path, tiny_model):
    folder = save_dit4sr(tiny_model, tmp_path / "sharded", max_shard_bytes=200_000)
    victim = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(UserError, match=f"shard {victim.name} is missing"):
        load_dit4sr(folder)


# --- saving --------------------------------------------------------------------------------------


def test_save_refuses_to_overwrite_and_replaces_when_asked(tmp_path, tiny_model):
    path = save_dit4sr(tiny_model, tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="already exists"):
        save_dit4sr(tiny_model, path)
    folder = save_dit4sr(tiny_model, tmp_path / "f")
    save_dit4sr(tiny_model, folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "m.safetensors"]


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt", "folder"])
def test_failed_save_leaves_nothing_behind(tmp_path, tiny_model, monkeypatch, name):
    import qdit4sr_export.model.loading as loading

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(loading, "save_file", boom)
    monkeypatch.setattr(loading.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_dit4sr(tiny_model, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_saving_is_deterministic(tmp_path, tiny_model):
    a = save_dit4sr(tiny_model, tmp_path / "a.safetensors").read_bytes()
    b = save_dit4sr(tiny_model, tmp_path / "b.safetensors").read_bytes()
    assert a == b
