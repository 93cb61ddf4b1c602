"""Forward behaviour of the DiT4SR transformer, including every quirk of the official implementation."""

import pytest
import torch
from helpers import make_inputs

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.feedforward import ControlFeedForward


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def test_forward_shape_and_official_keyword(tiny_model):
    x, lr, ctx, pooled, t = make_inputs(tiny_model)
    with torch.no_grad():
        out = tiny_model(x, lr, ctx, pooled, t)
        by_keyword = tiny_model(
            hidden_states=x, controlnet_image=lr, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t
        )
        as_tuple = tiny_model(x, lr, ctx, pooled, t, return_dict=False)
        as_dict = tiny_model(x, lr, ctx, pooled, t, return_dict=True)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert torch.equal(out, by_keyword)
    assert torch.equal(out, as_tuple[0]) and torch.equal(out, as_dict.sample)


def test_scalar_timestep_is_broadcast(tiny_model):
    x, lr, ctx, pooled, _ = make_inputs(tiny_model)
    with torch.no_grad():
        a = tiny_model(x, lr, ctx, pooled, 300.0)
        b = tiny_model(x, lr, ctx, pooled, torch.full((x.shape[0],), 300.0))
    assert torch.equal(a, b)


def test_lr_keys_are_x_keys_normalised_twice(tiny_model):
    """Official quirk: key_control = norm_k(norm_k(to_k(x))); the LR keys ignore the LR tokens."""
    calls = []
    attn = tiny_model.transformer_blocks[0].attn
    handle = attn.norm_k.register_forward_hook(lambda m, args, out: calls.append((args[0].clone(), out.clone())))
    x, lr, ctx, pooled, t = make_inputs(tiny_model)
    with torch.no_grad():
        tiny_model(x, lr, ctx, pooled, t)
        first_keys = [c for c in calls]
        calls.clear()
        tiny_model(x, torch.randn_like(lr), ctx, pooled, t)
    handle.remove()
    assert len(first_keys) == 2  # norm_k runs twice per attention call
    (in1, out1), (in2, out2) = first_keys
    assert torch.equal(in2, out1)  # the second call normalises the already-normalised x keys
    assert not torch.allclose(out2, out1)  # with non-unit weights the second RMSNorm changes them
    assert torch.equal(calls[1][1], out2)  # the LR keys did not change when the LR latent did


def test_to_k_control_is_computed_and_discarded(tiny_model):
    calls = []
    attn = tiny_model.transformer_blocks[0].attn
    attn.to_k_control.register_forward_hook(lambda *a: calls.append(1))
    inputs = make_inputs(tiny_model)
    with torch.no_grad():
        before = tiny_model(*inputs)
        for block in tiny_model.transformer_blocks:
            _perturb(block.attn.to_k_control)
            if block.attn2 is not None:
                _perturb(block.attn2.to_k_control)
        after = tiny_model(*inputs)
    assert calls, "to_k_control must run (as in the official code)"
    assert torch.equal(before, after)


def test_unused_attn2_added_kv_weights_present_but_ignored(tiny_model):
    names = set(tiny_model.state_dict())
    for suffix in ("add_q_proj.weight", "add_k_proj.bias", "add_v_proj.weight", "norm_added_q.weight",
                   "norm_added_k.weight", "to_add_out.weight"):
        assert f"transformer_blocks.0.attn2.{suffix}" in names
    inputs = make_inputs(tiny_model)
    with torch.no_grad():
        before = tiny_model(*inputs)
        attn2 = tiny_model.transformer_blocks[0].attn2
        for mod in (attn2.add_q_proj, attn2.add_k_proj, attn2.add_v_proj, attn2.norm_added_q,
                    attn2.norm_added_k, attn2.to_add_out):
            _perturb(mod)
        after = tiny_model(*inputs)
    assert torch.equal(before, after)
    # ...whereas the text weights of the first attention do matter.
    with torch.no_grad():
        _perturb(tiny_model.transformer_blocks[0].attn.add_k_proj)
        changed = tiny_model(*inputs)
    assert not torch.allclose(before, changed)


def test_control_feed_forward_adds_conv_of_lr_with_factor_1_2():
    torch.manual_seed(0)
    ff = ControlFeedForward(16, control_scale=1.2)
    tokens = torch.randn(2, 2 * 9, 16)  # a 3x3 grid per stream
    with torch.no_grad():
        out = ff(tokens)
        hidden = torch.nn.functional.gelu(ff.net[0].proj(tokens), approximate="tanh")
        x, lr = hidden[:, :9], hidden[:, 9:]
        grid = lr.reshape(2, 3, 3, 64).permute(0, 3, 1, 2)
        conv = torch.nn.functional.conv2d(grid, ff.control_conv.weight, ff.control_conv.bias, padding=1, groups=64)
        expected = ff.net[2](torch.cat([x + 1.2 * conv.reshape(2, 64, 9).permute(0, 2, 1), lr], dim=1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # information flows LR -> x only: the LR half of the output ignores the x tokens
    with torch.no_grad():
        moved = ff(torch.cat([torch.randn(2, 9, 16), tokens[:, 9:]], dim=1))
    assert torch.equal(moved[:, 9:], out[:, 9:])
    assert not torch.allclose(moved[:, :9], out[:, :9])


def test_model_uses_official_control_scale(tiny_model):
    assert all(block.ff.control_scale == 1.2 for block in tiny_model.transformer_blocks)


def test_lr_half_dropped_after_last_block(tiny_model):
    seen = {}
    tiny_model.transformer_blocks[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("last", out[1]))
    tiny_model.norm_out.register_forward_hook(lambda m, args, out: seen.__setitem__("norm_in", args[0]))
    x, lr, ctx, pooled, t = make_inputs(tiny_model, side=8)
    with torch.no_grad():
        tiny_model(x, lr, ctx, pooled, t)
    n = (8 // 2) ** 2
    assert seen["last"].shape[1] == 2 * n
    assert seen["norm_in"].shape[1] == n
    assert torch.equal(seen["norm_in"], seen["last"][:, :n])


def test_lr_latent_conditions_the_output(tiny_model):
    x, lr, ctx, pooled, t = make_inputs(tiny_model)
    with torch.no_grad():
        a = tiny_model(x, lr, ctx, pooled, t)
        b = tiny_model(x, lr + 1.0, ctx, pooled, t)
    assert not torch.allclose(a, b)


def test_batch_elements_are_independent(tiny_model):
    x, lr, ctx, pooled, t = make_inputs(tiny_model, batch=3)
    with torch.no_grad():
        full = tiny_model(x, lr, ctx, pooled, t)
        one = tiny_model(x[1:2], lr[1:2], ctx[1:2], pooled[1:2], t[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, lr, c, p: (x, lr[..., :6, :6], c, p), "x/LR latent shape mismatch"),
        (lambda x, lr, c, p: (x[..., :6], lr[..., :6], c, p), "square token grid.*8x6.*tile"),
        (lambda x, lr, c, p: (x[..., :7, :7], lr[..., :7, :7], c, p), "multiples of patch_size"),
        (lambda x, lr, c, p: (x[:, :3], lr[:, :3], c, p), r"hidden_states must be \(batch, 16"),
        (lambda x, lr, c, p: (x, lr, c[..., :10], p), "encoder_hidden_states must be"),
        (lambda x, lr, c, p: (x, lr, c, p[:, :3]), "pooled_projections must be"),
        (lambda x, lr, c, p: (torch.randn(2, 16, 80, 80), torch.randn(2, 16, 80, 80), c, p), "positional table"),
    ],
)
def test_bad_inputs_name_the_problem(tiny_model, change, message):
    x, lr, ctx, pooled, t = make_inputs(tiny_model)
    args = change(x, lr, ctx, pooled)
    with pytest.raises(UserError, match=message):
        tiny_model(*args, t)


def test_lr_latent_given_twice(tiny_model):
    x, lr, ctx, pooled, t = make_inputs(tiny_model)
    with pytest.raises(UserError, match="not both"):
        tiny_model(x, lr, ctx, pooled, t, controlnet_image=lr)


def test_torch_export_small_preset(small_model):
    inputs = make_inputs(small_model, batch=1, side=8)
    program = torch.export.export(small_model, inputs)
    with torch.no_grad():
        eager = small_model(*inputs)
        exported = program.module()(*inputs)
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-5)
    linear_targets = [n for n in program.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    assert linear_targets, "the exported graph keeps the linear layers the compiler quantizes"


def test_half_precision_build_runs():
    from qdit4sr_export.model import build_dit4sr

    model = build_dit4sr("dit4sr-tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    x, lr, ctx, pooled, t = make_inputs(model, batch=1)
    with torch.no_grad():
        out = model(x.bfloat16(), lr.bfloat16(), ctx.bfloat16(), pooled.bfloat16(), t)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
