import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.calibration import CalibrationInputs, collect_activation_variance, load_calibration_file


def test_calibration_file_with_and_without_prompts(tmp_path, tiny_model):
    cfg = tiny_model.config
    path = tmp_path / "calib.safetensors"
    save_file({"lr_latent": torch.randn(3, 16, 8, 8)}, str(path))
    inputs = load_calibration_file(path, cfg)
    assert len(inputs) == 3 and inputs.encoder_hidden_states.shape == (3, 1, cfg.joint_attention_dim)
    assert not inputs.pooled_projections.any()
    full = {"lr_latent": torch.randn(2, 16, 8, 8), "encoder_hidden_states": torch.randn(2, 5, 64),
            "pooled_projections": torch.randn(2, 32)}
    torch.save(full, tmp_path / "calib.pt")
    inputs = load_calibration_file(tmp_path / "calib.pt", cfg)
    assert torch.equal(inputs.encoder_hidden_states, full["encoder_hidden_states"])


@pytest.mark.parametrize(
    "content, message",
    [
        ({"latents": torch.zeros(1, 16, 8, 8)}, "must hold a tensor 'lr_latent'"),
        ({"lr_latent": torch.zeros(1, 4, 8, 8)}, r"lr_latent must be \(n, 16, s, s\)"),
        ({"lr_latent": torch.zeros(1, 16, 8, 6)}, "square"),
        ({"lr_latent": torch.zeros(2, 16, 8, 8), "pooled_projections": torch.zeros(2, 5)}, "pooled_projections must be"),
    ],
)
def test_bad_calibration_files(tmp_path, tiny_model, content, message):
    path = tmp_path / "c.safetensors"
    save_file(content, str(path))
    with pytest.raises(UserError, match=message):
        load_calibration_file(path, tiny_model.config)


def test_unreadable_calibration_file(tmp_path, tiny_model):
    (tmp_path / "c.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable calibration file"):
        load_calibration_file(tmp_path / "c.safetensors", tiny_model.config)
    with pytest.raises(UserError, match="not found"):
        load_calibration_file(tmp_path / "none.pt", tiny_model.config)


def test_activation_variance_is_mean_square_per_step(tiny_model):
    inputs = CalibrationInputs.with_null_prompt(torch.randn(3, 16, 8, 8), tiny_model.config)
    names = ["transformer_blocks.0.ff.net.2", "transformer_blocks.0.attn2.add_q_proj"]
    seen = []
    tiny_model.transformer_blocks[0].ff.net[2].register_forward_pre_hook(
        lambda m, a: seen.append(float(a[0].double().pow(2).mean())))
    v = collect_activation_variance(tiny_model, names, inputs, steps=4, batch_size=8)
    assert v.shape == (2, 4)
    np.testing.assert_allclose(v[0], seen, rtol=1e-12)
    assert np.isnan(v[1]).all()  # attn2's text projection never runs
    again = collect_activation_variance(tiny_model, names, inputs, steps=4, batch_size=2)
    np.testing.assert_allclose(again[0], v[0], rtol=0.5)  # batching changes the noise draw, not the scale


def test_trajectory_from_start_sigma_runs_the_pipelines_steps(tiny_model):
    from qdit4sr_export.model.sampling import flow_schedule, start_index
    from qdit4sr_export.quant.calibration import run_trajectory

    inputs = CalibrationInputs.with_null_prompt(torch.randn(2, 16, 8, 8), tiny_model.config)
    timesteps, sigmas = flow_schedule(10)
    first = start_index(sigmas, 0.4)
    seen = []
    run_trajectory(tiny_model, inputs, steps=10, start_sigma=0.4, on_step=lambda i, args: seen.append((i, args)))
    assert first > 0 and [i for i, _ in seen] == list(range(first, 10))
    assert float(seen[0][1][4][0]) == float(timesteps[first])
    noise = torch.randn(inputs.lr_latent.shape, generator=torch.Generator().manual_seed(0))
    expected = (1 - sigmas[first]) * inputs.lr_latent + sigmas[first] * noise  # as the SR pipeline starts
    torch.testing.assert_close(seen[0][1][0], expected)
    v = collect_activation_variance(tiny_model, ["transformer_blocks.0.ff.net.2"], inputs, steps=10, start_sigma=0.4)
    assert np.isnan(v[0, :first]).all() and np.isfinite(v[0, first:]).all()
